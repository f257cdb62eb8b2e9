"""Models: the tiny default Llama, reward/value models with a scalar head, and load/save of any HF causal LM.

Every model is a stock `transformers` model, so what rlhfkit saves loads with `AutoModelForCausalLM` /
`AutoModelForSequenceClassification(num_labels=1)`, and any local HF causal-LM directory works in every stage.

Convention shared by training and PPO: the reward of `prompt + response` is the scalar head applied to the hidden
state of the last non-pad token (the EOS when the answer ended). The value of token t is the same head applied at
position t — which is why the value model can start as a copy of the reward model (InstructGPT).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.console import console

RLHFKIT_META = "rlhfkit.json"  # which stage wrote a directory, and whether it is a chat model


@dataclass
class ModelSize:
    """Shape of the default model; presets pick one of these."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 256


def build_default_model(
    vocab_size: int, size: ModelSize, pad_token_id: int, eos_token_id: int, seed: int = 0
):
    """A small Llama (RMSNorm, RoPE, SwiGLU) built from a config: the default 'GPT' before Step0."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def from_pretrained(loader, path: str | Path, what: str, **kwargs):
    """`loader.from_pretrained`, with a missing directory reported as such instead of a hub lookup traceback."""
    local = Path(path).expanduser()
    if not local.exists() and (
        str(path).startswith((".", "/", "~")) or local.parent.is_dir() and str(local.parent) != "."
    ):
        raise FileNotFoundError(
            f"{what} {path!s}: no such directory; give the directory a stage wrote, e.g. runs/demo/sft"
        )
    if not local.exists() and not os.environ.get("HF_HUB_OFFLINE"):
        # Offline, the hub client retries for about a minute before it gives up: say what it is doing.
        console.print(
            f"[rlhfkit] {what} {path!s} is not a directory here: looking it up on the Hugging Face Hub"
        )
    try:
        return loader.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:  # a directory without its files raises either, by loader
        where = "is not a directory here" if not local.exists() else "has no loadable files"
        raise FileNotFoundError(
            f"{what} {path!s} {where} ({str(err).splitlines()[0]}); give the directory a stage wrote, "
            "e.g. runs/demo/sft"
        ) from None


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Any local HF causal LM directory (or hub id when online); a reward model is refused, since its LM head
    would be loaded as fresh noise (its scalar head replaced it)."""
    config = from_pretrained(AutoConfig, path, "model")
    scalar = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
    if scalar:
        raise ValueError(
            f"{path} is a reward model ({scalar[0]}), not a language model: it has no trained LM head to generate "
            "or train from; give the directory of a pretrained or SFT model"
        )
    return from_pretrained(AutoModelForCausalLM, path, "model", config=config, dtype=dtype)


def load_reward_model(
    path: str | Path, pad_token_id: int, dtype: torch.dtype = torch.float32, trained: bool = False
) -> PreTrainedModel:
    """A scalar-head model: a trained reward model, or a causal LM whose new head starts at zero-mean noise.

    `trained=True` is for judging (score, PPO's reward, eval's judge, best-of-n): a causal LM is refused there,
    since its head would be random and every score noise."""
    config = from_pretrained(AutoConfig, path, "reward model")
    if trained and not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise ValueError(
            f"{path} is not a reward model ({', '.join(config.architectures or ['no architecture'])}): its scalar "
            "head would be untrained and every score random; give the directory `rlhfkit reward` wrote"
        )
    config.num_labels = 1
    config.pad_token_id = pad_token_id  # the head reads the last non-pad token
    return from_pretrained(
        AutoModelForSequenceClassification, path, "reward model", config=config, dtype=dtype
    )


def for_inference(model: PreTrainedModel) -> PreTrainedModel:
    """A loaded model ready to sample or score outside a trainer (label, eval, generate, score): eval mode, on the
    GPU when there is one (trainers place their models through accelerate instead)."""
    return model.eval().to("cuda" if torch.cuda.is_available() else "cpu")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def own_tokenizer(model_dir: str | Path | None) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside a model, or None where the directory holds none (or is not a local one)."""
    if model_dir is None or not any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES):
        return None
    return from_pretrained(AutoTokenizer, model_dir, "tokenizer")


def same_tokenizer(tokenizer: PreTrainedTokenizerBase, model_dir: str | Path | None) -> bool:
    """False when `model_dir` holds a tokenizer of its own with other tokens than `tokenizer`."""
    if model_dir is None or Path(model_dir).resolve() == Path(tokenizer.name_or_path).resolve():
        return True
    own = own_tokenizer(model_dir)
    return own is None or own.get_vocab() == tokenizer.get_vocab()


def check_vocab(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    where: str,
    model_dir: str | Path | None = None,
) -> None:
    """A model fed another tokenizer's ids reads them as other words, silently, or indexes past its embedding
    table deep inside torch: say so up front. With `model_dir`, the tokenizer saved there must be this one."""
    if not same_tokenizer(tokenizer, model_dir):
        raise ValueError(
            f"{where}: the tokenizer saved with this model ({len(own_tokenizer(model_dir))} tokens) has another "
            f"vocabulary than the one in use ({len(tokenizer)} tokens, from {tokenizer.name_or_path}): the same "
            "ids stand for other tokens. Models that read each other's token ids (policy, reference, reward and "
            "value model) must share one tokenizer"
        )
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has {n_embed}; "
            "use the tokenizer saved with this model (or resize the model's embeddings)"
        )


def scalar_head(model: PreTrainedModel) -> nn.Module:
    """The num_labels=1 head of a sequence-classification model (`score` for Llama/Qwen/Mistral, ...)."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has no scalar head named score/classifier")


def backbone(model: PreTrainedModel) -> nn.Module:
    """The transformer trunk under an LM head or a scalar head."""
    return getattr(model, model.base_model_prefix)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token of each row is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class TokenScores(nn.Module):
    """A scalar-head model as one module whose forward is the head on every position: (B, T).

    Stages that train a reward or value model hand this wrapper, not the HF model, to `accelerator.prepare`: the
    HF model's own forward pools one score per row, and DDP/FSDP synchronise only the gradients of computation
    that runs through the module they wrap. The HF model is `.model` (unwrap it to save)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = backbone(self.model)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        ).last_hidden_state
        return scalar_head(self.model)(hidden).squeeze(-1)


def per_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar head on every position: (B, T). Values for PPO; reward = this at the last non-pad token.

    `model` is a scalar-head HF model or a TokenScores, possibly wrapped by DDP (which keeps it as `.module`)."""
    inner = getattr(model, "module", model)
    scorer = model if isinstance(inner, TokenScores) else TokenScores(model)
    return scorer(input_ids, attention_mask)


def last_token_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Reward r(x, y): the head at the last real token of each row (left or right padding). (B,)"""
    scores = per_token_scores(model, input_ids, attention_mask)  # (B, T)
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * cols).argmax(-1)  # (B,) rightmost real token
    return scores.gather(1, last.unsqueeze(1)).squeeze(1)


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path, **meta
) -> None:
    """save_pretrained (safetensors) + tokenizer into out_dir, next to the stage's metrics and logs.

    Files are written to a temp dir and moved in one by one; rlhfkit.json goes last, so a directory whose
    rlhfkit.json says complete always holds a whole model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RLHFKIT_META).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save.", dir=out_dir))
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for path in tmp.iterdir():
        os.replace(path, out_dir / path.name)
    tmp.rmdir()
    (out_dir / RLHFKIT_META).write_text(json.dumps(meta, ensure_ascii=False, indent=2))


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temp dir into place; the old dst is removed only after the new one is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_meta(path: str | Path) -> dict:
    """What rlhfkit recorded about a model directory ({} for a directory it did not write)."""
    meta = Path(path) / RLHFKIT_META
    return json.loads(meta.read_text()) if meta.exists() else {}


def is_chat_model(path: str | Path) -> bool:
    """Pretrained-only models get raw prompts (文字接龙); everything after SFT gets the chat template."""
    return read_meta(path).get("chat", True)
