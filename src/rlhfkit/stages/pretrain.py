"""Step0 — pretrain a language model on raw text (文字接龙).

Objective: mean next-token cross-entropy over every token of the corpus. Documents are joined with EOS and
packed into blocks of `max_len` tokens (no padding), as GPT pretraining does.

Deviation from the paper, by necessity: the "GPT" here is a ~1M-parameter Llama trained for a minute on the
embedded world's corpus, not a 175B model trained on the web — small enough for a laptop CPU, and still showing the
behaviour the seed describes: given an instruction it continues it instead of answering.
"""

from __future__ import annotations

from rlhfkit.batching import pack
from rlhfkit.config import PretrainConfig
from rlhfkit.modeling import ModelSize, build_default_model, check_vocab, load_causal_lm, use_load_options
from rlhfkit.sources import pretrain_texts
from rlhfkit.stages.lm import train_lm
from rlhfkit.tokenizer import control_tokens, load_tokenizer, train_tokenizer
from rlhfkit.training import console, finished_earlier


def run(cfg: PretrainConfig):
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for a --model it continues
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
    # a --tokenizer that is not the --model's own would feed it other words under the same ids
    check_vocab(model, tokenizer, f"pretrain --model {cfg.model}", cfg.model if cfg.tokenizer else None)
    say_control_tokens(texts, tokenizer, cfg.data)
    blocks = pack(texts, tokenizer, cfg.max_len, f"pretrain --data {cfg.data}")
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"[pretrain] {len(texts)} documents → {len(blocks)} blocks of {cfg.max_len} tokens; model {n_params / 1e6:.2f}M params"
    )
    return train_lm(
        cfg, model, tokenizer, blocks, cfg.max_steps, "pretrain", {"stage": "pretrain", "chat": False}
    )


def load_texts(cfg: PretrainConfig) -> list[str]:
    return pretrain_texts(cfg.data, cfg.world_docs)


def say_control_tokens(texts: list[str], tokenizer, source: str) -> None:
    """Raw text may spell a control token on purpose (`<|endoftext|>` between documents of a web dump): it is
    read as that token. Say how many documents do, since an accidental one changes what is learned."""
    tokens = [t for t in control_tokens(tokenizer) if t]
    counts = {t: sum(t in text for text in texts) for t in tokens}
    found = {t: n for t, n in counts.items() if n}
    if found:
        listed = ", ".join(f"{t!r} in {n}" for t, n in found.items())
        console.print(
            f"[pretrain] {source}: {listed} of {len(texts)} documents: each is read as that control token, not as "
            "text (remove them from the data if they are not meant as one)"
        )
