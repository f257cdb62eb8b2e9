"""Step0 — pretrain a language model on raw text (文字接龙).

Objective: mean next-token cross-entropy over every token of the corpus. Documents are joined with EOS and
packed into blocks of `max_len` tokens (no padding), as GPT pretraining does.

Deviation from the paper, by necessity: the "GPT" here is a ~1M-parameter Llama trained for a minute on the
embedded world's corpus, not a 175B model trained on the web — small enough for a laptop CPU, and still showing the
behaviour the seed describes: given an instruction it continues it instead of answering.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.config import PretrainConfig
from rlhfkit.modeling import ModelSize, build_default_model, check_vocab, load_causal_lm
from rlhfkit.stages.lm import LMExample, finished_earlier, train_lm
from rlhfkit.tokenizer import load_tokenizer, train_tokenizer
from rlhfkit.training import console


def run(cfg: PretrainConfig):
    if finished_earlier(cfg, "pretrain"):
        return None
    texts = load_texts(cfg)
    if cfg.tokenizer or cfg.model:  # continuing an HF model: its own tokenizer, never a new one
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    else:
        tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    if cfg.model:
        model = load_causal_lm(cfg.model)
    else:
        size = ModelSize(
            cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, max(256, cfg.max_len)
        )
        model = build_default_model(
            len(tokenizer), size, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.seed
        )
    check_vocab(model, tokenizer, f"pretrain --model {cfg.model}")
    blocks = pack(texts, tokenizer, cfg.max_len, f"pretrain --data {cfg.data}")
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"[pretrain] {len(texts)} documents → {len(blocks)} blocks of {cfg.max_len} tokens; model {n_params / 1e6:.2f}M params"
    )
    return train_lm(
        cfg, model, tokenizer, blocks, cfg.max_steps, "pretrain", {"stage": "pretrain", "chat": False}
    )


def load_texts(cfg: PretrainConfig) -> list[str]:
    if cfg.data == "world":
        from rlhfkit.world.corpus import TRAIN_DOCS_MAX, pretrain_corpus

        if cfg.world_docs > TRAIN_DOCS_MAX:
            console.print(
                f"[pretrain] {cfg.world_docs} world documents: `rlhfkit eval --heldout-text world` avoids only the "
                f"first {TRAIN_DOCS_MAX}; measure perplexity on the pretrain_heldout.jsonl of `rlhfkit world export "
                f"--docs {cfg.world_docs}` (rlhfkit pipeline does)"
            )
        return pretrain_corpus(n_docs=cfg.world_docs)  # the world is fixed; cfg.seed varies training
    from rlhfkit.data import load_pretrain

    return list(load_pretrain(Path(cfg.data)))


def token_stream(texts: list[str], tokenizer) -> list[int]:
    """The documents' tokens end to end, each followed by EOS."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return stream


def pack(
    texts: list[str],
    tokenizer,
    block: int,
    source: str = "the pretraining data",
    whole_if_short: bool = False,
) -> list[LMExample]:
    """Concatenate documents, each followed by EOS, and cut the stream into full blocks (a shorter tail is left
    out). A stream shorter than one block is an error, or with `whole_if_short` one block of all of it."""
    stream = token_stream(texts, tokenizer)
    if whole_if_short and 2 <= len(stream) < block:
        block = len(stream)
    n = len(stream) // block
    if n == 0:
        if whole_if_short:  # 0 or 1 token: nothing to predict
            raise ValueError(f"{source}: {len(stream)} tokens, too few to measure on; give more text")
        raise ValueError(
            f"{source}: {len(stream)} tokens, fewer than one block of {block} (--max-len); "
            "give more text or a smaller --max-len"
        )
    return [
        LMExample(stream[i * block : (i + 1) * block], stream[i * block : (i + 1) * block]) for i in range(n)
    ]
