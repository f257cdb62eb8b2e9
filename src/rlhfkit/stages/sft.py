"""Step1 — supervised fine-tuning (SFT) on labeler-written demonstrations.

Objective: mean cross-entropy of the completion tokens given the prompt; prompt tokens are masked (label -100),
so the model learns to answer, not to predict the question. Each example is
`chat_template(prompt) + completion + end of turn`; learning to emit it is what lets later steps know an answer ended.

Each answer ends with the chat template's end-of-turn token (`tokenizer.end_of_turn`: ChatML's <|im_end|>, the
world's EOS). `{"messages": [...]}` rows train on every assistant turn given everything before it (TRL's
assistant_only_loss); system and user turns and the template's framing are context. With `lora_r > 0` only LoRA adapters (peft, all
linear layers) are trained and then merged, so the saved model is a plain HF model for the next steps.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from rlhfkit.batching import LMExample
from rlhfkit.config import SFTConfig
from rlhfkit.errors import UsageError
from rlhfkit.modeling import check_vocab, fit_vocab, load_causal_lm, use_load_options
from rlhfkit.sources import demonstrations
from rlhfkit.stages.lm import train_lm
from rlhfkit.tokenizer import (
    control_tokens,
    conversation_segments,
    describe_end_of_turn,
    end_of_turn,
    end_of_turn_id,
    format_prompt,
    give_own_pad_token,
    load_tokenizer,
)
from rlhfkit.training import console, finished_earlier, seed_everything, steps_for_epochs


def run(cfg: SFTConfig):
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    if finished_earlier(cfg, "sft"):
        return None
    tokenizer = load_tokenizer(cfg.model)
    give_own_pad_token(tokenizer, "sft")
    model = fit_vocab(load_causal_lm(cfg.model), tokenizer)
    check_vocab(model, tokenizer, f"sft --model {cfg.model}")
    demos = demonstrations(cfg.data, control_tokens(tokenizer))
    console.print(f"[sft] {describe_end_of_turn(tokenizer)}")
    examples = build_examples(demos, tokenizer, cfg.max_len, f"sft --data {cfg.data}", cfg.truncation_mode)
    if cfg.lora_r > 0:
        seed_everything(cfg.seed)  # the adapters' random initialisation is part of the run
        model = add_lora(model, cfg)
    steps = cfg.max_steps or steps_for_epochs(cfg.epochs, len(examples), cfg.batch_size, cfg.grad_accum)
    console.print(f"[sft] {len(examples)} demonstrations, {steps} steps")
    meta = {
        "stage": "sft",
        "chat": True,
        "end_of_turn": end_of_turn(tokenizer),
        "demonstrations": len(examples),
    }
    return train_lm(cfg, model, tokenizer, examples, steps, "sft", meta)


def build_examples(
    demos, tokenizer, max_len: int, source: str = "sft", truncation_mode: str = "keep_start"
) -> list[LMExample]:
    """Tokenize context and answers separately (as at sampling time) and mask the context's labels. A
    {prompt, completion} row learns its completion and the end-of-turn token; a {messages} row every assistant
    turn (`tokenizer.conversation_segments`). A row longer than `max_len` is cut to its start, skipped or an
    error (`truncation_mode`), and counted."""
    eot_id = end_of_turn_id(tokenizer)
    examples, cut, skipped = [], [], []
    for number, demo in enumerate(demos, start=1):
        if isinstance(demo, tuple):
            segments = [(format_prompt(tokenizer, demo[0]), False), (demo[1], True), ("", True)]
        else:
            segments = conversation_segments(tokenizer, demo)
        ids, labels = [], []
        for text, target in segments:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else [eot_id]
            ids += piece
            labels += piece if target else [-100] * len(piece)
        if len(ids) > max_len:
            if truncation_mode == "error":
                raise UsageError(
                    f"{source}: demonstration {number} is {len(ids)} tokens with its prompt, longer than --max-len "
                    f"{max_len} (--truncation-mode error); raise --max-len, shorten it, or give --truncation-mode "
                    "keep_start (cut) or skip"
                )
            if truncation_mode == "skip" or all(label == -100 for label in labels[:max_len]):
                skipped.append(number)  # with keep_start: its prompt alone fills max_len, nothing to learn
                continue
            cut.append(number)
            ids, labels = ids[:max_len], labels[:max_len]
        examples.append(LMExample(ids, labels))
    if cut or skipped:
        said = []
        if cut:
            said.append(
                f"{len(cut)} cut to their first {max_len} tokens (the end of the answer and its "
                f"{tokenizer.convert_ids_to_tokens(eot_id)} are not learned; the first is demonstration {cut[0]})"
            )
        if skipped:
            why = "skipped" if truncation_mode == "skip" else "skipped, their prompt alone filling --max-len"
            said.append(f"{len(skipped)} {why} (the first is demonstration {skipped[0]})")
        console.print(
            f"[sft] warning: {source}: {len(cut) + len(skipped)} of {len(demos)} demonstrations are longer than "
            f"--max-len {max_len} tokens with their prompt: {'; '.join(said)} (--truncation-mode {truncation_mode})"
        )
    if not examples:
        raise UsageError(
            f"{source}: all {len(demos)} demonstrations are longer than --max-len {max_len} tokens and were "
            "skipped, leaving nothing to learn; raise --max-len or shorten them"
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
