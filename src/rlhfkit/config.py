"""One dataclass per stage. Each field's `help` is its CLI help; the CLI, YAML files and the Python API all use
the same dataclass, and `to_yaml(from_yaml(x)) == x`.

Names follow TRL where TRL has one (`kl_coef`, `cliprange`, `vf_coef`, `gamma`, `lam`, `missing_eos_penalty`,
`beta`, `margin`, `center_rewards_coefficient`), so users can move their settings over.

The training stages' defaults suit a real checkpoint (TRL's defaults are the reference); the values tuned on the
embedded world's 1.2M-parameter model live in `WORLD_TUNED` and the `PRESETS` built on it (`rlhfkit pipeline
--preset`, or `rlhfkit STAGE --preset NAME` for one stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhfkit.errors import UsageError


def arg(default, help: str):  # noqa: A002 - `help` reads best at the call sites
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "default": default})
    return field(default=default, metadata={"help": help, "default": default})


def _at_least(low):
    return (lambda v: v >= low), f">= {low}"


def _above(low):
    return (lambda v: v > low), f"> {low}"


def _within(low, high, high_open=False):
    if high_open:
        return (lambda v: low <= v < high), f"in [{low}, {high})"
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


# The range of every numeric setting that has one, by name: a name means the same thing in every stage. A value
# outside it would train nothing, divide by zero, or invert what the setting does (a negative β rewards drifting
# from SFT), several of them silently.
LIMITS = {
    **dict.fromkeys(
        """batch_size grad_accum mini_batch_size ppo_epochs iterations rounds n_labelers samples_per_prompt
        max_new_tokens max_prompt_length ptx_batch_size world_docs log_every eval_every hidden_size num_layers
        num_heads intermediate_size kl_horizon num_samples best_of_n headroom lora_alpha ensemble""".split(),
        _at_least(1),
    ),
    **dict.fromkeys("k rloo_k max_len".split(), _at_least(2)),
    **dict.fromkeys("max_steps warmup_steps save_every sample_every lora_r".split(), _at_least(0)),
    **dict.fromkeys("lr vf_lr epochs target_kl cliprange cliprange_value beta".split(), _above(0)),
    **dict.fromkeys("weight_decay max_grad_norm kl_coef vf_coef ptx_coef".split(), _at_least(0)),
    **dict.fromkeys(
        "labeler_noise margin center_rewards_coefficient temperature ensemble_lambda".split(), _at_least(0)
    ),
    **dict.fromkeys("gamma lam label_noise mix_share".split(), _within(0, 1)),
    **dict.fromkeys("val_fraction lora_dropout ema_decay".split(), _within(0, 1, high_open=True)),
    "label_smoothing": _within(0, 0.5, high_open=True),
    "top_p": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    # a byte-level BPE starts from 256 bytes and 5 special tokens: a smaller size is silently that one
    "vocab_size": ((lambda v: v >= 261), ">= 261 (the 256 bytes of byte-level BPE and its 5 special tokens)"),
    "seed": _within(0, 2**32 - 1),  # numpy's seeds
}
PRECISIONS = ("auto", "no", "bf16", "fp16")
KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")
# How an RM ensemble's member scores become one reward (`losses.ensemble_reward`; Coste et al. 2023).
ENSEMBLE_REDUCES = ("mean", "mean_minus_std", "mean_minus_var", "min")
# The settings that name one of a few choices, by name: checked when the settings are made, before any work.
CHOICES = {
    "mixed_precision": PRECISIONS,
    "algo": ("ppo", "rloo"),
    "kl_estimator": KL_ESTIMATORS,
    "loss_type": DPO_LOSS_TYPES,
    "ensemble_reduce": ENSEMBLE_REDUCES,
    "truncation_mode": ("keep_start", "skip", "error"),
    "dtype": ("auto", "bf16", "fp16", "fp32"),
}


# An RM ensemble's reward (ppo, eval's best-of-n and judge, score); not yet measured on the embedded world.
ENSEMBLE_REDUCE_DEFAULT, ENSEMBLE_LAMBDA_DEFAULT = "mean_minus_std", 1.0
ENSEMBLE_REDUCE_HELP = (
    "with an ensemble reward model (reward --ensemble M): mean | mean_minus_std (mean − λ·std) | mean_minus_var "
    "(Coste et al.'s UWO, mean − λ·variance) | min (their WCO) over the members, each in its own units "
    "((r + bias) / std)"
)
ENSEMBLE_LAMBDA_HELP = "λ of mean_minus_std / mean_minus_var"


MAX_PROMPT_LENGTH_HELP = (
    "most tokens of a formatted prompt (TRL name); a longer one loses the start of its earliest text, never the "
    "chat template's tokens, and the stage says how many; default: the longest prompt, within the model's context"
)

# Settings that say how a stage runs, not what it makes: left out of the settings a model records and of the
# pipeline's step fingerprints, so changing them neither makes a finished step stale nor names it as changed.
HOW_IT_RUNS = {"resume", "compile_sampler"}
COMPILE_SAMPLER_HELP = (
    "torch.compile the sampler's decoding step (Llama-family models): 1.3-1.6x faster decoding on a 2-core CPU, "
    "after a compilation of 10-20 s per batch shape; pays on long runs, not on the default pipeline's"
)


class Settings:
    """Every settings dataclass checks its values when it is made (CLI, YAML, pipeline and Python API alike):
    each against its range (`LIMITS`, or the class's own `OWN_LIMITS`), then together (`check_together`)."""

    OWN_LIMITS: typing.ClassVar[dict] = {}

    def __post_init__(self):
        check_limits(self)
        self.check_together()

    def check_together(self) -> None:
        """Settings that are fine alone but not with each other (a stage overrides this)."""


def check_limits(config) -> None:
    """A UsageError naming the setting, its flag and its range (or choices) for the first value outside them."""
    for f in dataclasses.fields(config):
        check_setting(type(config), f.name, getattr(config, f.name))


def check_setting(cls: type, name: str, value) -> None:
    """One setting of `cls` against its choices and range (a UsageError naming it, its flag and the rule)."""
    flag = "--" + name.replace("_", "-")
    if name in CHOICES and value not in CHOICES[name]:
        raise UsageError(f"{name} = {value!r}: use one of {', '.join(CHOICES[name])} ({flag})")
    limits = {**LIMITS, **getattr(cls, "OWN_LIMITS", {})}
    if name not in limits or value is None or isinstance(value, bool):
        return
    ok, rule = limits[name]
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not ok(item):
            raise UsageError(f"{name} = {item!r}: must be {rule} ({flag})")


@dataclass
class TrainArgs(Settings):
    """Settings every training stage has."""

    out: str = arg("runs/stage", "output directory (model, metrics.jsonl, tensorboard/, checkpoint/)")
    seed: int = arg(0, "random seed (data order, initialisation, sampling)")
    mixed_precision: str = arg(
        "auto", "auto | no | bf16 | fp16; auto = bf16 autocast where it is faster (CPU, Ampere+)"
    )
    resume: bool = arg(False, "continue from out/checkpoint if there is one")
    batch_size: int = arg(32, "sequences per optimizer step (per process, before accumulation)")
    grad_accum: int = arg(1, "gradient accumulation steps")
    lr: float = arg(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = arg(0.0, "AdamW weight decay on matrices")
    warmup_steps: int = arg(0, "linear warm-up steps before cosine decay (at most the run's steps)")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = no clipping)")
    max_len: int = arg(1024, "maximum tokens per sequence")
    log_every: int = arg(10, "log metrics every N steps")
    save_every: int = arg(100, "write a resumable checkpoint every N steps (0 = only at the end)")
    dtype: str = arg(
        "auto", "auto | bf16 | fp16 | fp32: the weights' dtype, loaded and saved; auto = the checkpoint's own"
    )
    gradient_checkpointing: bool = arg(False, "recompute activations in the backward pass (less memory)")
    attn_implementation: str | None = arg(
        None, "eager | sdpa | flash_attention_2 ...; default: transformers'"
    )
    trust_remote_code: bool = arg(False, "run the Python code a checkpoint ships (auto_map); off: refused")


@dataclass
class PretrainConfig(TrainArgs):
    """Step0: next-token LM on raw text (文字接龙)."""

    out: str = arg("runs/gpt", "output directory")
    data: str = arg(
        "world", "pretraining text: a {'text'} JSONL/dataset file, or 'world' for the embedded corpus"
    )
    world_docs: int = arg(20000, "documents generated when data = world (20000: ~580k tokens)")
    tokenizer: str | None = arg(
        None, "existing tokenizer dir; default: the --model's own, or a byte-level BPE trained on the data"
    )
    vocab_size: int = arg(3000, "BPE vocabulary size when training a tokenizer")
    model: str | None = arg(None, "existing HF causal LM to continue pretraining; default: a new tiny Llama")
    hidden_size: int = arg(128, "default model: hidden size")
    num_layers: int = arg(4, "default model: transformer layers")
    num_heads: int = arg(4, "default model: attention heads")
    intermediate_size: int = arg(352, "default model: MLP size")
    max_steps: int = arg(600, "optimizer steps")
    lr: float = arg(3e-3, "peak learning rate")
    weight_decay: float = arg(0.01, "AdamW weight decay on matrices")
    warmup_steps: int = arg(20, "linear warm-up steps before cosine decay (at most the run's steps)")
    max_len: int = arg(128, "block length: the text is packed into blocks of this many tokens")

    OWN_LIMITS: typing.ClassVar[dict] = {
        "max_steps": _at_least(1)
    }  # 0 trains nothing (no epochs to derive from)

    def check_together(self) -> None:
        if self.model is None and self.hidden_size % self.num_heads:
            raise UsageError(
                f"hidden_size = {self.hidden_size} is not a multiple of num_heads = {self.num_heads} (--hidden-size, "
                "--num-heads): each attention head takes an equal share of the hidden size"
            )
        if self.model is None and (self.hidden_size // self.num_heads) % 2:
            raise UsageError(
                f"hidden_size / num_heads = {self.hidden_size // self.num_heads} is odd (--hidden-size "
                f"{self.hidden_size}, --num-heads {self.num_heads}): rotary position embeddings turn pairs of a "
                "head's dimensions, so each head needs an even size"
            )


@dataclass
class SFTConfig(TrainArgs):
    """Step1: supervised fine-tuning on demonstrations; loss on completion tokens only."""

    out: str = arg("runs/sft", "output directory")
    model: str = arg("runs/gpt", "the pretrained model to fine-tune (any HF causal LM dir)")
    data: str = arg("world", "demonstrations: {prompt, completion} or {messages} JSONL/dataset, or 'world'")
    epochs: float = arg(3.0, "passes over the demonstrations")
    max_steps: int = arg(0, "optimizer steps; 0 = derived from epochs")
    lr: float = arg(2e-5, "peak learning rate")
    batch_size: int = arg(8, "demonstrations per step (per process, before accumulation)")
    truncation_mode: str = arg(
        "keep_start",
        "a demonstration longer than --max-len: keep_start (cut to its first max-len tokens; one whose prompt "
        "alone fills them is skipped) | skip | error; each is counted and said",
    )
    lora_r: int = arg(0, "LoRA rank; 0 = full fine-tuning. LoRA adapters are merged into the saved model")
    lora_alpha: int = arg(16, "LoRA alpha")
    lora_dropout: float = arg(0.0, "LoRA dropout")


@dataclass
class LabelConfig(Settings):
    """Step2 data: sample K answers per RM prompt from the SFT model and have simulated labelers rank them."""

    out: str = arg("runs/comparisons.jsonl", "output JSONL of {prompt, responses, ranking, ended}")
    model: str = arg("runs/sft", "the model whose answers are ranked (the SFT policy)")
    prompts: str = arg("world", "RM prompts: a {'prompt'} JSONL file, or 'world' (the world's RM split)")
    k: int = arg(8, "responses per prompt to rank (InstructGPT: 4 to 9)")
    # Four rounds of rankings seen once (InstructGPT trains its RM for one epoch) beat two rounds seen twice at the
    # same RM cost (benchmarks/README.md: rm_data_scaling.py).
    rounds: int = arg(
        4, "rankings per prompt, each of K fresh samples by the next labeler (more comparison data)"
    )
    n_labelers: int = arg(5, "simulated labelers; each prompt is ranked by one of them, in turn")
    label_noise: float = arg(0.1, "probability that a labeler swaps two adjacent responses in a ranking")
    labeler_noise: float = arg(0.5, "scale of a labeler's per-judgement noise on the gold utility")
    temperature: float = arg(
        1.0, "sampling temperature for the K responses (match the PPO rollout temperature)"
    )
    top_p: float = arg(1.0, "nucleus sampling mass")
    max_new_tokens: int = arg(64, "maximum response length in tokens")
    max_prompt_length: int | None = arg(None, MAX_PROMPT_LENGTH_HELP)
    compile_sampler: bool = arg(False, COMPILE_SAMPLER_HELP)
    seed: int = arg(0, "sampling and labeler seed")
    # Iterated rounds (Bai et al. 2022; Llama 2): rank the newest policy's answers beside the SFT model's, on
    # prompts no earlier round ranked.
    mix_model: str | None = arg(
        None,
        "a second model that writes some of the K answers to each prompt (e.g. the SFT model beside a PPO policy "
        'given as --model); every row then records which model wrote each answer ("models")',
    )
    mix_share: float = arg(0.5, "with --mix-model: the share of each prompt's K answers it writes")
    prompt_part: str = arg(
        "",
        "R/N: rank only the R-th of N disjoint parts of the prompts (every N-th prompt, from the R-th on), so that "
        "rounds of labelling never rank one prompt twice; '' = all of them",
    )
    rank: bool = arg(
        True,
        "rank the answers with the simulated labelers (embedded world); --no-rank writes them unranked, "
        "{prompt, responses, ended, models}, for people: label-server tasks add --kind rank --responses FILE",
    )

    def check_together(self) -> None:
        part = self.part()
        if part is not None and not 1 <= part[0] <= part[1]:
            raise UsageError(
                f"prompt_part = {self.prompt_part!r} (--prompt-part): the part R of R/N must be in 1..N"
            )
        if self.mix_model is not None and not 0 < self.mixed() < self.k:
            raise UsageError(
                f"mix_share = {self.mix_share} of k = {self.k} answers is {self.mixed()} (--mix-share, --k): with "
                "--mix-model each model must write at least one of a prompt's answers; give a share between "
                f"{1 / self.k:.2f} and {1 - 1 / self.k:.2f}, or more answers (--k)"
            )

    def part(self) -> tuple[int, int] | None:
        """--prompt-part R/N as (R, N); None for ''."""
        if not self.prompt_part:
            return None
        r, sep, n = self.prompt_part.partition("/")
        if not (sep and r.strip().isdigit() and n.strip().isdigit() and int(n) >= 1):
            raise UsageError(
                f"prompt_part = {self.prompt_part!r} (--prompt-part): expected R/N, e.g. 2/3 for the second of "
                "three disjoint parts"
            )
        return int(r), int(n)

    def mixed(self) -> int:
        """How many of a prompt's K answers --mix-model writes (the share rounded half up)."""
        return int(self.k * self.mix_share + 0.5) if self.mix_model is not None else 0


@dataclass
class RewardConfig(TrainArgs):
    """Step2: reward model r(x, y) trained on K-wise rankings, all C(K,2) pairs of a prompt in one element."""

    out: str = arg("runs/reward", "output directory")
    model: str = arg("runs/sft", "initialise from this model (the SFT model, as InstructGPT)")
    data: str = arg(
        "runs/comparisons.jsonl", "K-wise or pairwise preference JSONL/dataset (`rlhfkit label` writes one)"
    )
    demonstrations: str = arg(
        "world", "SFT demonstrations used to centre the reward at mean 0 ('world', a file, or '')"
    )
    kwise: bool = arg(
        True, "all pairs of a prompt in one batch element (InstructGPT); False = shuffled independent pairs"
    )
    epochs: float = arg(1.0, "passes over the comparisons (InstructGPT: one)")
    max_steps: int = arg(0, "optimizer steps; 0 = derived from epochs")
    batch_size: int = arg(8, "prompts (K-wise) or pairs (pairwise) per step")
    lr: float = arg(1e-5, "peak learning rate")
    margin: float = arg(0.0, "margin per rank step subtracted from r_w - r_l (TRL name)")
    center_rewards_coefficient: float = arg(
        0.0, "weight of the mean(r²) term that keeps rewards centred (TRL name)"
    )
    val_fraction: float = arg(0.1, "prompts held out to measure accuracy and over-fitting")
    max_len: int = arg(1024, "maximum tokens of prompt + response")
    eval_every: int = arg(24, "measure validation accuracy every N steps")
    # Rounds: --model the previous RM to continue it (head included), or the SFT model to retrain.
    earlier_data: list[str] = arg(
        [],
        "comparison files of earlier rounds, trained on together with --data (this round's): retraining takes "
        "them all; continuing a reward model (--model PREV_RM) may take them or only --data",
    )
    previous_reward_model: str | None = arg(
        None,
        "the reward model this one replaces: its accuracy on --data (the newest policy's answers, before any "
        "training on them) goes into eval.json beside this one's; default: --model, when that is a reward model",
    )
    # Coste et al. 2023: members differ in their seed only (head initialisation and data order).
    ensemble: int = arg(
        1,
        "train M reward models (seeds seed..seed+M-1: head init and data order), saved as member_0..member_M-1 "
        "of --out; the directory is then accepted wherever a reward model is",
    )
    ensemble_bootstrap: bool = arg(
        False,
        "each ensemble member trains on a bootstrap resample of the training rankings (off: all of them)",
    )


@dataclass
class PPOConfig(TrainArgs):
    """Step3: PPO (ptx_coef = 0) or PPO-ptx (ptx_coef > 0) against the frozen reward model."""

    out: str = arg("runs/ppo", "output directory")
    policy: str = arg("runs/sft", "initial policy (the SFT model); also the frozen reference π_SFT")
    ref_policy: str | None = arg(None, "reference policy for the KL penalty; default: --policy")
    reward_model: str = arg(
        "runs/reward",
        "frozen reward model (Step2), or 'gold': the embedded world's gold judge as the reward, (gold − 7) / 2 "
        "(world prompts only; the ceiling any reward model can reach)",
    )
    value_model: str | None = arg(
        None,
        "initial value model; default: the reward model (InstructGPT), or with --reward-model gold the policy "
        "with a zero-initialised value head",
    )
    prompts: str = arg(
        "world", "RL prompts: {'prompt'} JSONL/dataset, or 'world' (the RL split, disjoint from SFT/RM)"
    )
    ptx_data: str = arg("world", "pretraining text for the ptx term: {'text'} file or 'world'")
    ptx_coef: float = arg(0.0, "γ: weight of the pretraining LM loss (0 = PPO, > 0 = PPO-ptx)")
    ptx_batch_size: int = arg(8, "pretraining blocks per PPO minibatch")
    algo: str = arg("ppo", "ppo | rloo (critic-free, k samples per prompt, leave-one-out baseline)")
    rloo_k: int = arg(4, "RLOO: samples per prompt")
    # 30 iterations: 60 over-optimise, 15 suit PPO but cost PPO-ptx 0.01-0.04 (benchmarks/README.md: ppo_sweep.py,
    # pipeline_time_ppo15.json).
    iterations: int = arg(30, "rollout → update iterations")
    batch_size: int = arg(64, "prompts per rollout")
    mini_batch_size: int = arg(16, "episodes per PPO minibatch")
    ppo_epochs: int = arg(2, "passes over each rollout")
    lr: float = arg(3e-6, "policy learning rate")
    vf_lr: float = arg(3e-6, "value model learning rate")
    warmup_steps: int = arg(0, "LR warm-up (optimizer steps)")
    kl_coef: float = arg(0.05, "β: per-token KL penalty against the reference policy")
    kl_estimator: str = arg("k1", "k1 | k3 (Schulman's unbiased, always ≥ 0) | k2 | abs")
    adaptive_kl: bool = arg(False, "adapt β towards target_kl (Ziegler et al. 2019)")
    target_kl: float = arg(4.0, "adaptive KL: target KL per episode (nats)")
    kl_horizon: int = arg(2000, "adaptive KL: horizon in episodes")
    cliprange: float = arg(0.2, "ε of the clipped surrogate")
    cliprange_value: float = arg(0.2, "clip range of the value loss")
    vf_coef: float = arg(0.5, "value loss weight")
    gamma: float = arg(1.0, "discount γ_rl")
    lam: float = arg(0.95, "GAE λ")
    whiten_rewards: bool = arg(False, "whiten the per-token rewards of each rollout (keeps the mean)")
    scale_rewards: bool = arg(True, "divide RM scores by the RM's reward_std measured on demonstrations")
    whiten_advantages: bool = arg(True, "whiten advantages per rollout")
    missing_eos_penalty: float = arg(1.0, "subtracted from the score of a response that never emitted EOS")
    ema_decay: float = arg(
        0.992, "EMA of policy weights saved as the final model (InstructGPT: 0.992; 0 = off)"
    )
    shared_trunk: bool = arg(False, "value head on the policy's trunk instead of a separate value model")
    lora_r: int = arg(
        0, "LoRA rank for the policy (0 = full); the reference is then the policy with adapters off"
    )
    lora_alpha: int = arg(16, "LoRA alpha")
    temperature: float = arg(1.0, "sampling temperature; logprobs are taken at the same temperature")
    top_p: float = arg(1.0, "nucleus sampling mass (1 = plain sampling, as PPO assumes)")
    max_new_tokens: int = arg(64, "maximum response length")
    max_prompt_length: int | None = arg(None, MAX_PROMPT_LENGTH_HELP)
    compile_sampler: bool = arg(False, COMPILE_SAMPLER_HELP)
    max_len: int = arg(1024, "ptx block length")
    save_every: int = arg(10, "checkpoint every N iterations (0 = only at the end)")
    log_every: int = arg(1, "log every N iterations")
    sample_every: int = arg(10, "write sample answers to TensorBoard/samples.jsonl every N iterations")
    ensemble_reduce: str = arg(ENSEMBLE_REDUCE_DEFAULT, ENSEMBLE_REDUCE_HELP)
    ensemble_lambda: float = arg(ENSEMBLE_LAMBDA_DEFAULT, ENSEMBLE_LAMBDA_HELP)

    def check_together(self) -> None:
        if self.mini_batch_size > self.batch_size:
            raise UsageError(
                f"mini_batch_size = {self.mini_batch_size} is larger than batch_size = {self.batch_size} "
                "(--mini-batch-size, --batch-size): a minibatch is a part of one rollout's episodes; give a "
                "--mini-batch-size of at most --batch-size"
            )


@dataclass
class DPOConfig(TrainArgs):
    """DPO: the reward model's judgement used directly as the loss, without RL (the seed's closing question)."""

    out: str = arg("runs/dpo", "output directory")
    policy: str = arg("runs/sft", "initial policy (the SFT model); also the frozen reference")
    ref_policy: str | None = arg(None, "reference policy; default: --policy")
    data: str = arg("runs/comparisons.jsonl", "K-wise (all pairs used) or pairwise preference JSONL/dataset")
    beta: float = arg(0.1, "β: strength of the implicit KL constraint")
    loss_type: str = arg("sigmoid", "sigmoid (DPO) | ipo | robust")
    label_smoothing: float = arg(0.0, "assumed label-noise rate (cDPO / robust DPO)")
    epochs: float = arg(1.0, "passes over the rankings")
    max_steps: int = arg(0, "optimizer steps; 0 = derived from epochs")
    batch_size: int = arg(8, "rankings per step, each with all its pairs (a pairwise row is one ranking)")
    lr: float = arg(1e-6, "peak learning rate")
    max_len: int = arg(1024, "maximum tokens of prompt + response")
    save_every: int = arg(50, "checkpoint every N steps (0 = only at the end)")


@dataclass
class EvalConfig(Settings):
    """Win rate of each model against a reference (SFT) on held-out prompts, judged by the held-out panel."""

    out: str = arg("runs/eval", "output directory: report.json, report.md, winrate.png, curves.png")
    models: list[str] = arg(
        ["gpt=runs/gpt", "sft=runs/sft", "ppo=runs/ppo"], "NAME=DIR pairs of models to evaluate"
    )
    reference: str = arg("sft", "the model every other is compared with (win rate 0.5 by construction)")
    kl_reference: str | None = arg(None, "model for 'KL to SFT' (default: the reference model)")
    prompts: str = arg(
        "world", "eval prompts: {'prompt'} JSONL/dataset, or 'world' (the held-out eval split)"
    )
    judge: str | None = arg(None, "reward model that judges when prompts are not from the embedded world")
    # Four answers per prompt narrow the win-rate intervals by a fifth against two (benchmarks/README.md).
    samples_per_prompt: int = arg(4, "answers per prompt and model (more = tighter intervals)")
    temperature: float = arg(0.7, "sampling temperature of the answers")
    top_p: float = arg(0.9, "nucleus sampling mass")
    max_new_tokens: int = arg(64, "maximum answer length")
    max_prompt_length: int | None = arg(None, MAX_PROMPT_LENGTH_HELP)
    compile_sampler: bool = arg(False, COMPILE_SAMPLER_HELP)
    heldout_text: str = arg(
        "world", "held-out pretraining text for perplexity ('world', a {'text'} file, or '')"
    )
    curves: list[str] = arg(
        [], "extra NAME=DIR runs whose metrics.jsonl go into curves.png (e.g. reward=runs/reward)"
    )
    best_of_n: list[int] = arg(
        [],
        "also evaluate best-of-n from the reference model for these n (needs --reward-model); the n share one "
        "draw of max(n) samples per answer (best-of-4 = the best of its first 4), so a best-of-4 from '4 16' is "
        "another draw than from '4' alone",
    )
    reward_model: str | None = arg(None, "reward model that picks the best of n")
    headroom: list[int] = arg(
        [],
        "selectable headroom for these K (e.g. 8 32): the share of prompts where the best of K of the reference's "
        "answers by the gold judge beats the reference's answer, judged as the win rates are — the most a reward "
        "can pick from the reference's own answers (embedded world only; one draw of max(K) answers per prompt)",
    )
    ensemble_reduce: str = arg(ENSEMBLE_REDUCE_DEFAULT, ENSEMBLE_REDUCE_HELP + " (best-of-n, --judge)")
    ensemble_lambda: float = arg(ENSEMBLE_LAMBDA_DEFAULT, ENSEMBLE_LAMBDA_HELP)
    seed: int = arg(0, "sampling seed (the same for every model)")
    human: str | None = arg(
        None,
        "a label-server database (labels.sqlite): report people's blind A/B verdicts of its compare task sets "
        "as win rates with the panel's bootstrap intervals, instead of sampling and judging",
    )


@dataclass
class ScoreArgs(Settings):
    reward_model: str = arg("runs/reward", "reward model directory")
    prompt: str = arg(None, "the prompt")
    response: list[str] = arg(None, "one or more responses to score")
    ensemble_reduce: str = arg(ENSEMBLE_REDUCE_DEFAULT, ENSEMBLE_REDUCE_HELP)
    ensemble_lambda: float = arg(ENSEMBLE_LAMBDA_DEFAULT, ENSEMBLE_LAMBDA_HELP)


# ---------------------------------------------------------------------------------------------------------------
# Presets: the settings tuned on the embedded world. The dataclasses' defaults above suit a real checkpoint (TRL's
# are the reference: SFT lr 2e-5, RM 1e-5, DPO 1e-6, PPO 3e-6 and β 0.05, max_len 1024); the 1.2M-parameter
# demo model needs far larger steps. `rlhfkit pipeline --preset NAME` and `rlhfkit STAGE --preset NAME` start
# from these, so `rlhfkit ppo --preset default ...` trains with the default run's Step3 settings.

# The default run's settings wherever they differ from the dataclasses' defaults, measured on the embedded world
# (benchmarks/README.md). Every preset starts from these.
WORLD_TUNED: dict[str, dict] = {
    "sft": {"lr": 1e-3, "epochs": 8.0, "batch_size": 16, "warmup_steps": 20, "max_len": 128},
    "reward": {"lr": 1e-3, "warmup_steps": 5, "max_len": 160},
    "ppo": {
        "lr": 1e-4,
        "vf_lr": 3e-4,
        # β = 0.2 keeps the default run's PPO within 1-1.5 nats of SFT, where its reward model's judgement still
        # holds; at TRL's 0.05 it ran 5-7 nats away and lost to SFT (benchmarks/README.md: overoptimization.py,
        # ppo_sweep.py).
        "kl_coef": 0.2,
        "max_len": 128,
    },
    "dpo": {"lr": 1e-4, "warmup_steps": 10, "max_len": 160},
    # the report's selectable headroom per family: best of 8 and of 32 SFT answers by the gold judge vs SFT's
    "eval": {"headroom": [8, 32]},
}


def _on_world(changes: dict[str, dict]) -> dict[str, dict]:
    """WORLD_TUNED with a preset's own `changes` on top, step by step."""
    return {
        step: {**WORLD_TUNED.get(step, {}), **changes.get(step, {})} for step in {**WORLD_TUNED, **changes}
    }


# What each preset changes from the config dataclasses' defaults. Anything here can be overridden from a YAML
# file (a section per step) or, for one stage, by its flags.
PRESETS: dict[str, dict[str, dict]] = {
    # The test/CI size: every step runs, nothing is learned well (about a minute). It keeps the smaller data and
    # the milder settings it was measured with (one round of K=4 rankings, β = 0.05 over 3 iterations).
    "tiny": _on_world(
        {
            "pretrain": {
                "world_docs": 800,
                "max_steps": 40,
                "batch_size": 16,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 1000,
                "save_every": 20,
            },
            "sft": {"epochs": 1.0, "batch_size": 16},
            "label": {"k": 4, "rounds": 1, "max_new_tokens": 24},
            "reward": {"epochs": 0.5, "lr": 5e-4, "warmup_steps": 20, "eval_every": 10},
            "ppo": {
                "iterations": 3,
                "batch_size": 16,
                "mini_batch_size": 8,
                "max_new_tokens": 24,
                "kl_coef": 0.05,
                "save_every": 2,
                "ema_decay": 0.0,  # 12 steps: an average at 0.992 would still be 91% the SFT model
            },
            "dpo": {"epochs": 2.0},
            # headroom from 8 answers per prompt, not 32: 32 cost 18 s of the tiny run's 89 (every pipeline test)
            "eval": {"samples_per_prompt": 1, "max_new_tokens": 24, "best_of_n": [4, 16], "headroom": [4, 8]},
        }
    ),
    # The README's run: a 1.2M-parameter Llama on a 2-core CPU, with the world's tuned settings and best-of-4
    # (best-of-16, 16 samples per answer and most of the eval's time, is left to `benchmarks/overoptimization.py`
    # and YAML: eval: {best_of_n: [4, 16]}; `rlhfkit eval` alone has no RM).
    "default": _on_world({"eval": {"best_of_n": [4]}}),
    "large": _on_world(  # more parameters and data: meant for a GPU
        {
            "pretrain": {
                # 100000 documents (68k distinct, ~1.6M tokens of this vocabulary), each seen about 8 times
                "world_docs": 100000,
                "max_steps": 1500,
                "hidden_size": 512,
                "num_layers": 8,
                "num_heads": 8,
                "intermediate_size": 1408,
                "vocab_size": 6000,
                "batch_size": 64,
                "lr": 1e-3,
            },
            "sft": {"epochs": 6.0, "lr": 3e-4},
            "reward": {"lr": 3e-4},
            "ppo": {"iterations": 200, "batch_size": 128, "mini_batch_size": 32, "lr": 2e-5, "vf_lr": 1e-4},
            "dpo": {"lr": 5e-5},
            "eval": {"best_of_n": [4, 16]},
        }
    ),
}
PRESET_HELP = "tiny (tests, ~1 min) | default (the README's run) | large (GPU)"


# What `rlhfkit pipeline --methods` can run; ppo_gold is PPO with the world's gold judge as the reward (`ppo
# --reward-model gold`), on the ppo section's settings: the ceiling, whose gap to PPO is the reward model's alone.
METHODS = ("ppo", "ppo_ptx", "dpo", "best_of_n", "rloo", "ppo_gold")


@dataclass
class PipelineConfig(Settings):
    """The whole run; per-step settings come from the preset and the YAML file's sections."""

    out: str = arg("runs/demo", "run directory")
    preset: str = arg("default", PRESET_HELP)
    seed: int = arg(0, "seed of every step (the world itself is fixed)")
    methods: list[str] = arg(
        ["ppo", "ppo_ptx", "dpo", "best_of_n", "ppo_gold"], "methods to run and compare: " + " ".join(METHODS)
    )
    mixed_precision: str = arg("auto", "auto | no | bf16 | fp16, for every step")
    resume: bool = arg(False, "skip finished steps, continue an interrupted one from its checkpoint")
    jobs: int | None = arg(
        None,
        "steps run side by side where they can (PPO, PPO-ptx, RLOO, DPO...), each in a child process with "
        "threads/jobs threads and its output in <out>/<step>/log.txt; 1 = one step at a time, all in this "
        "process (default: the CPUs, at most the steps that can overlap)",
    )
    rlhf_rounds: int = arg(
        1,
        "iterated RLHF: PPO and PPO-ptx each in N rounds of iterations/N; after each round the labelers rank its "
        "policy's answers beside SFT's on a fresh part of the RL prompts, the reward model continues on them and "
        "PPO continues from that policy, the KL still to SFT (docs/rlhf-rounds.md); 1 = one PPO run",
    )
    print_config: bool = arg(False, "print the resolved configuration as YAML and exit")

    OWN_LIMITS: typing.ClassVar[dict] = {"jobs": _at_least(1), "rlhf_rounds": _at_least(1)}


# The preset section each stage's settings come from (`rlhfkit STAGE --preset`, `preset_config`).
PRESET_STEPS: dict[type, str] = {
    PretrainConfig: "pretrain",
    SFTConfig: "sft",
    LabelConfig: "label",
    RewardConfig: "reward",
    PPOConfig: "ppo",
    DPOConfig: "dpo",
    EvalConfig: "eval",
}


def preset_config(cls: type, preset: str = "default", **values):
    """`cls(**values)` on top of the preset's settings for its stage: the Python API's `rlhfkit STAGE --preset`
    (the default preset is the embedded world's tuned run; the class's own defaults suit a real checkpoint)."""
    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: use one of {list(PRESETS)}")
    return cls(**{**PRESETS[preset].get(PRESET_STEPS[cls], {}), **values})


# ---------------------------------------------------------------------------------------------------------------
# CLI and YAML from the dataclasses.


def _field_types(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field, with the field's help; --config FILE.yaml fills defaults first."""
    parser.add_argument("--config", help="YAML file with any of these settings (flags given here win)")
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _without_none(types[f.name])  # `bool | None` is a yes/no flag too (--chat / --no-chat)
        help_text = f"{f.metadata.get('help', '')} (default: {f.metadata.get('default')})"
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(flag, dest=f.name, nargs="+", type=item, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def _without_none(kind):
    """`X | None` -> X (optional settings take the same flag type)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is not list and len(args) == 1 else kind


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a float", str: "a string"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_setting(cls: type, key: str, value):
    """One setting as the field's declared type, read as the stage's `--KEY VALUE` flag reads it: the text of a
    `KEY=VALUE` override, or a YAML value, which is not typed either (YAML 1.1 reads `1e-4` as a string). A single
    value for a list field is a one-element list, as `--KEY VALUE` gives; anything else is a ValueError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise UsageError(f"{key}: not a {cls.__name__} setting (see the stage's --help)")
    declared = _field_types(cls)[key]
    if value is None and (type(None) in typing.get_args(declared) or fields[key].default is None):
        return None
    kind = _without_none(declared)
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
    try:
        if item is None:
            return _read(kind, value)
        return [_read(item, v) for v in (value if isinstance(value, list) else [value])]
    except ValueError:
        expected = _TYPE_NAMES.get(kind) if item is None else f"{_TYPE_NAMES.get(item)} or a list of them"
        raise UsageError(f"{key}: expected {expected}, got {value!r}") from None


def key_values(items: list[str], flag: str = "--set") -> dict[str, str]:
    """`KEY=VALUE` items as {KEY: VALUE text} (read each value with `parse_setting`); an item without "=" is named."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise UsageError(f"{flag} {bad[0]!r}: expected KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


def _read(kind: type, value):
    """`value` as `kind`, through its text as the flag reads it: `7.5` is no integer and `true` no float there."""
    if kind is bool and isinstance(value, bool):
        return value
    if value is None or isinstance(value, (list, dict)):
        raise ValueError(value)
    text = str(value)
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    return kind(text)


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    """A stage command's --preset: start from a pipeline preset's settings for this stage (`PRESETS`)."""
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="start from this pipeline preset's settings for the stage (--config and flags win): "
        f"{PRESET_HELP}; without it the defaults suit a real checkpoint",
    )


def from_args(cls: type, namespace: argparse.Namespace, step: str | None = None):
    """Defaults <- the preset's section `step` (--preset) <- YAML (--config) <- flags."""
    preset = getattr(namespace, "preset", None) if step else None
    values = dict(PRESETS[preset].get(step, {})) if preset else {}
    if getattr(namespace, "config", None):
        values.update(load_yaml(namespace.config, cls))
    for f in dataclasses.fields(cls):
        given = getattr(namespace, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)


def read_yaml(path: str | Path) -> dict:
    """A YAML file's mapping; a syntax error is a one-line ValueError naming the file, not a parser traceback."""
    if not Path(path).is_file():
        raise UsageError(
            f"--config {path}: {'a directory, not a file' if Path(path).is_dir() else 'no such file'}"
        )
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[: err.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start}); save the file as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise UsageError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def yaml_settings(cls: type, values, path: str | Path, section: str = "") -> dict:
    """`values` read from the YAML file `path` (its `section`, if given) as their fields' types (`parse_setting`);
    an error names the file, section.key and the expected type."""
    if not isinstance(values, dict):
        raise UsageError(f"{path}: {section}: expected a mapping of settings, got {values!r}")
    try:
        typed = {key: parse_setting(cls, key, value) for key, value in values.items()}
        for key, value in typed.items():
            check_setting(cls, key, value)
        return typed
    except ValueError as err:
        raise UsageError(f"{path}: {section + '.' if section else ''}{err}") from None


def load_yaml(path: str | Path, cls: type) -> dict:
    """Read a YAML mapping and check its keys and values against the dataclass, naming the file and the bad key."""
    data = read_yaml(path)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    return yaml_settings(cls, data, path)


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), allow_unicode=True, sort_keys=False)


def save_config(config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(config), encoding="utf-8")
