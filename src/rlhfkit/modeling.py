"""Models: the tiny default Llama, reward/value models with a scalar head, and load/save of any HF causal LM.

Every model is a stock `transformers` model, so what rlhfkit saves loads with `AutoModelForCausalLM` /
`AutoModelForSequenceClassification(num_labels=1)`, and any local HF causal-LM directory works in every stage.

Convention shared by training and PPO: the reward of `prompt + response` is the scalar head applied to the hidden
state of the last non-pad token (the EOS when the answer ended). The value of token t is the same head applied at
position t — which is why the value model can start as a copy of the reward model (InstructGPT).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
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
from rlhfkit.errors import RunError, UsageError
from rlhfkit.rundir import fsync_tree, recover_dir, swap_dirs

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


@dataclass
class LoadOptions:
    """How every model is loaded in this process (a stage's --dtype, --attn-implementation, --trust-remote-code,
    --gradient-checkpointing; `use_load_options`)."""

    dtype: str = "auto"  # auto = the checkpoint's own (config.json's dtype), else fp32
    attn_implementation: str | None = None  # None = transformers' default (sdpa)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


LOAD = LoadOptions()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def use_load_options(cfg) -> None:
    """Load every model of this stage as `cfg` says (settings it lacks: the defaults)."""
    global LOAD
    LOAD = LoadOptions(**{f: getattr(cfg, f) for f in LoadOptions.__dataclass_fields__ if hasattr(cfg, f)})


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype a model is loaded in: --dtype, or with auto the one its config.json records (fp32 if none)."""
    if LOAD.dtype != "auto":
        return DTYPES[LOAD.dtype]
    recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded, None)
    return recorded if isinstance(recorded, torch.dtype) and recorded.is_floating_point else torch.float32


def _model_options(config) -> dict:
    options = {"dtype": checkpoint_dtype(config)}
    if LOAD.attn_implementation:
        options["attn_implementation"] = LOAD.attn_implementation
    return options


def _checkpointed(model: PreTrainedModel) -> PreTrainedModel:
    if LOAD.gradient_checkpointing:  # recompute activations in the backward pass (training only)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def from_pretrained(loader, path: str | Path, what: str, **kwargs):
    """`loader.from_pretrained`, with what can be wrong with a directory said in one line naming it: missing,
    without its files, a damaged weights file, weights that do not fit the config. Code shipped with a model
    (`auto_map`) runs only with --trust-remote-code (off by default)."""
    local = Path(path).expanduser()
    if not local.exists() and (
        str(path).startswith((".", "/", "~")) or local.parent.is_dir() and str(local.parent) != "."
    ):
        raise UsageError(
            f"{what} {path!s}: no such directory; give the directory a stage wrote, e.g. runs/demo/sft"
        )
    if not local.exists() and not os.environ.get("HF_HUB_OFFLINE"):
        # Offline, the hub client retries for about a minute before it gives up: say what it is doing.
        console.print(
            f"[rlhfkit] {what} {path!s} is not a directory here: looking it up on the Hugging Face Hub"
        )
    try:
        return loader.from_pretrained(str(path), trust_remote_code=LOAD.trust_remote_code, **kwargs)
    except SafetensorError as err:  # empty, truncated or not a safetensors file at all
        raise UsageError(
            f"{what} {path!s}: its weights ({', '.join(p.name for p in local.glob('*.safetensors')) or 'safetensors'}) "
            f"cannot be read ({err}): the file is truncated or damaged. Restore it, or delete {path!s} and train "
            "it again (the pipeline's --resume rebuilds a deleted step)"
        ) from None
    except RuntimeError as err:
        if "mismatched_sizes" not in str(err):
            raise
        raise UsageError(
            f"{what} {path!s}: its weights do not fit its config.json ({mismatch(loader, local, kwargs)}): the "
            "directory mixes the files of two models. Restore the config.json saved with these weights"
        ) from None
    except (OSError, ValueError, StrictDataclassError) as err:  # a directory without its files, a bad config
        if not local.exists():
            where = "is not a directory here"
        elif any((local / name).exists() for name in ("config.json", *TOKENIZER_FILES)):
            where = "cannot be loaded"
        else:
            where = "has no loadable files"
        raise UsageError(
            f"{what} {path!s} {where} ({_reason(err)}); give the directory a stage wrote, e.g. runs/demo/sft"
        ) from None


def _reason(err: BaseException) -> str:
    """The first line of an error, and of its cause where the first line only announces it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = err.__cause__ or err.__context__
    first = lines[0] if lines else type(err).__name__
    if first.endswith(":") and len(lines) > 1:
        return f"{first} {lines[1]}"
    return f"{first}: {_reason(cause)}" if first.endswith(":") and cause else first


def mismatch(loader, local: Path, kwargs: dict) -> str:
    """The first weight whose shape in the safetensors files differs from the one its config gives."""
    from safetensors import safe_open

    config = kwargs.get("config") or AutoConfig.from_pretrained(str(local))
    model_class = AutoModelForSequenceClassification if loader is AutoModelForSequenceClassification else None
    with torch.device("meta"):
        model = (model_class or AutoModelForCausalLM).from_config(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for file in sorted(local.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is no dict
                shape = tuple(weights.get_slice(name).get_shape())
                if name in expected and expected[name] != shape:
                    return f"{name} is {list(shape)} in {file.name}, {list(expected[name])} by the config"
    return "the shapes differ"


def load_causal_lm(path: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Any local HF causal LM directory (or hub id when online); a reward model is refused, since its LM head
    would be loaded as fresh noise (its scalar head replaced it)."""
    config = from_pretrained(AutoConfig, path, "model")
    scalar = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
    if scalar:
        raise UsageError(
            f"{path} is a reward model ({scalar[0]}), not a language model: it has no trained LM head to generate "
            "or train from; give the directory of a pretrained or SFT model"
        )
    options = {**_model_options(config), **({"dtype": dtype} if dtype is not None else {})}
    return _checkpointed(from_pretrained(AutoModelForCausalLM, path, "model", config=config, **options))


def load_reward_model(
    path: str | Path, pad_token_id: int, dtype: torch.dtype | None = None, trained: bool = False
) -> PreTrainedModel:
    """A scalar-head model: a trained reward model, or a causal LM whose new head starts at zero-mean noise.

    `trained=True` is for judging (score, PPO's reward, eval's judge, best-of-n): a causal LM is refused there,
    since its head would be random and every score noise."""
    config = from_pretrained(AutoConfig, path, "reward model")
    if trained and not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise UsageError(
            f"{path} is not a reward model ({', '.join(config.architectures or ['no architecture'])}): its scalar "
            "head would be untrained and every score random; give the directory `rlhfkit reward` wrote"
        )
    config.num_labels = 1
    config.pad_token_id = pad_token_id  # the head reads the last non-pad token
    options = {**_model_options(config), **({"dtype": dtype} if dtype is not None else {})}
    return _checkpointed(
        from_pretrained(AutoModelForSequenceClassification, path, "reward model", config=config, **options)
    )


@torch.no_grad()
def fit_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The model with room for the pad token `tokenizer.give_own_pad_token` added: its embeddings resized, the new
    rows (input and output) the mean of the others (deterministic, and a logit no likelier than an average one),
    and its config's pad_token_id the new one."""
    added = tokenizer.__dict__.get("_rlhfkit_pad_added")
    if added is None:
        return model
    old = model.get_input_embeddings().weight.shape[0]
    if old < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embed = model.get_input_embeddings().weight
        embed[old:] = embed[:old].mean(0)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embed.data_ptr():
            head.weight[old:] = head.weight[:old].mean(0)
    model.config.pad_token_id = added
    return model


def context_length(model: PreTrainedModel) -> int | None:
    """The most positions the model was made for (`max_position_embeddings`; GPT-2's n_positions), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


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
        raise UsageError(
            f"{where}: the tokenizer saved with this model ({len(own_tokenizer(model_dir))} tokens) has another "
            f"vocabulary than the one in use ({len(tokenizer)} tokens, from {tokenizer.name_or_path}): the same "
            "ids stand for other tokens. Models that read each other's token ids (policy, reference, reward and "
            "value model) must share one tokenizer"
        )
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise UsageError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has {n_embed}; "
            "use the tokenizer saved with this model (or resize the model's embeddings)"
        )


def scalar_head(model: PreTrainedModel) -> nn.Module:
    """The num_labels=1 head of a sequence-classification model (`score` for Llama/Qwen/Mistral, ...)."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise UsageError(f"{type(model).__name__} has no scalar head named score/classifier")


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
    """save_pretrained (safetensors) + tokenizer + rlhfkit.json into out_dir, next to the stage's metrics and logs.

    Atomic as a whole directory: the new model is written into a sibling temp dir, which also gets (as hard links)
    everything else the stage directory holds — metrics.jsonl, tensorboard/, samples, the lock — then is flushed
    to disk and swapped in for out_dir in one step (`rundir.swap_dirs`). A kill at any byte leaves the old
    directory or the new one, and a directory whose rlhfkit.json says complete always holds a whole model. A
    failure (a full disk) leaves out_dir as it was, its checkpoint included, and no temp dir behind.
    """
    out_dir = Path(os.path.abspath(out_dir))
    if Path.cwd().is_relative_to(out_dir):
        raise UsageError(
            f"{out_dir} holds the current directory, and saving a model replaces its directory whole: give the "
            "stage an --out of its own (e.g. --out runs/sft)"
        )
    recover_dir(out_dir)
    new = out_dir.with_name(f".{out_dir.name}.new")
    try:
        shutil.rmtree(new, ignore_errors=True)  # left over from a save killed midway
        new.mkdir(parents=True)
        model.save_pretrained(new, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(new)
        (new / RLHFKIT_META).write_text(json.dumps(meta, ensure_ascii=False, indent=2))
        if out_dir.is_dir():
            _link_rest(out_dir, new)
        fsync_tree(new)
        swap_dirs(new, out_dir)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(new, ignore_errors=True)
        raise RunError(
            f"saving the model to {out_dir} failed ({type(err).__name__}: {err}); {out_dir} is as it was, its "
            "checkpoint (if any) kept. Free space (or fix the disk), then run again with --resume"
        ) from err


# What a save replaces: the files of the old model (names save_pretrained and tokenizers write) and the resume
# state that a finished model makes unnecessary. Everything else in a stage directory is carried over.
MODEL_FILES = (
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "vocab.*",
    "merges.txt",
    "*.model",
    "adapter_*",
    RLHFKIT_META,
    "checkpoint",
    ".*.tmp",
    ".*.new",
    ".*.old",
)


def _link_rest(old: Path, new: Path) -> None:
    """Hard-link (copy where links fail) what `old` holds besides the model files into `new`."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or any(fnmatch.fnmatch(entry.name, pattern) for pattern in MODEL_FILES):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(entry, target)


def _link_or_copy(src, dst) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_meta(path: str | Path) -> dict:
    """What rlhfkit recorded about a model directory ({} for a directory it did not write)."""
    recover_dir(Path(path))  # a swap a kill cut between its two renames, where renameat2 is missing
    meta = Path(path) / RLHFKIT_META
    if not meta.exists():
        return {}
    try:
        return json.loads(meta.read_text())
    except ValueError:
        raise UsageError(
            f"{meta}: not valid JSON; it is damaged. Delete it (the stage is then trained again: the pipeline's "
            "--resume does it), or restore it"
        ) from None


def is_chat_model(path: str | Path) -> bool:
    """Pretrained-only models get raw prompts (文字接龙); everything after SFT gets the chat template."""
    return read_meta(path).get("chat", True)
