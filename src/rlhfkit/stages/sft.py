"""Step1 — supervised fine-tuning (SFT) on labeler-written demonstrations.

Objective: mean cross-entropy of the completion tokens given the prompt; prompt tokens are masked (label -100),
so the model learns to answer, not to predict the question. Each example is
`chat_template(prompt) + completion + EOS`; learning to emit EOS is what lets later steps know an answer ended.

`{"messages": [...]}` rows train on the last assistant turn given everything before it (earlier assistant turns
are context, not targets — a simplification of multi-turn SFT). With `lora_r > 0` only LoRA adapters (peft, all
linear layers) are trained and then merged, so the saved model is a plain HF model for the next steps.
"""

from __future__ import annotations

import math

from peft import LoraConfig, get_peft_model

from rlhfkit.batching import LMExample
from rlhfkit.config import SFTConfig
from rlhfkit.errors import UsageError
from rlhfkit.modeling import check_vocab, load_causal_lm
from rlhfkit.sources import demonstrations
from rlhfkit.stages.lm import train_lm
from rlhfkit.tokenizer import control_tokens, format_messages, format_prompt, load_tokenizer
from rlhfkit.training import console, finished_earlier, seed_everything


def run(cfg: SFTConfig):
    if finished_earlier(cfg, "sft"):
        return None
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model)
    check_vocab(model, tokenizer, f"sft --model {cfg.model}")
    demos = demonstrations(cfg.data, control_tokens(tokenizer))
    examples = build_examples(demos, tokenizer, cfg.max_len, f"sft --data {cfg.data}")
    if cfg.lora_r > 0:
        seed_everything(cfg.seed)  # the adapters' random initialisation is part of the run
        model = add_lora(model, cfg)
    steps = cfg.max_steps or math.ceil(cfg.epochs * len(examples) / (cfg.batch_size * cfg.grad_accum))
    console.print(f"[sft] {len(examples)} demonstrations, {steps} steps")
    return train_lm(cfg, model, tokenizer, examples, steps, "sft", {"stage": "sft", "chat": True})


def build_examples(demos, tokenizer, max_len: int, source: str = "sft") -> list[LMExample]:
    """Tokenize context and answer separately (as at sampling time) and mask the context's labels."""
    examples, n_cut = [], 0
    for number, demo in enumerate(demos, start=1):
        if isinstance(demo, tuple):
            context, answer = format_prompt(tokenizer, demo[0]), demo[1]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        else:
            context, answer = format_messages(tokenizer, demo)
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        n_cut += len(context_ids) + len(answer_ids) > max_len
        ids = (context_ids + answer_ids)[:max_len]
        labels = ([-100] * len(context_ids) + answer_ids)[:max_len]
        if all(label == -100 for label in labels):
            raise UsageError(
                f"{source}: demonstration {number}: its prompt alone fills max_len={max_len} tokens, leaving "
                "nothing to learn; raise --max-len or shorten the prompt"
            )
        examples.append(LMExample(ids, labels))
    if n_cut:
        console.print(
            f"[sft] warning: {source}: {n_cut} of {len(examples)} demonstrations are longer than --max-len "
            f"{max_len} tokens with their prompt; they are cut to their first {max_len} (the rest of the answer, "
            "and its EOS, is not learned)"
        )
    return examples


def add_lora(model, cfg: SFTConfig):
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
