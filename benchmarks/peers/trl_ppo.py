"""TRL's PPOTrainer (0.x, `trl.PPOTrainer`: policy + value model + reward model + reference) on the benchmark's
models, prompts and settings. Run by `benchmarks/ppo_throughput.py` inside `.bench-venvs/trl-old`.

Mapping of the shared settings: per_device_train_batch_size = rollout batch, num_mini_batches = batch /
mini_batch (one micro-batch per minibatch, no accumulation: an optimizer step per minibatch, as rlhfkit),
num_ppo_epochs, response_length = max_new_tokens, stop_token = EOS. fp32 on CPU; report_to none.
The rollout is timed by wrapping `trl.trainer.ppo_trainer.batch_generation` (model.generate with scores);
an iteration ends at `on_step_end` (one per PPO update).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from common import PhaseClock, peer_args, read_prompts, response_tokens, versions, write_result


def main() -> None:
    args = peer_args().parse_args()
    try:
        result = run(args)
        write_result(args.result, status="ok", versions=versions(), **result)
    except Exception as e:  # the benchmark reports why a peer could not run; it must not crash
        traceback.print_exc()
        write_result(args.result, status="failed", error=f"{type(e).__name__}: {e}", versions=versions())
        raise SystemExit(1) from e


def run(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        TrainerCallback,
    )
    from trl import PPOConfig, PPOTrainer
    from trl.trainer import ppo_trainer

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.policy)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in read_prompts(args.prompts)
    ]
    dataset = Dataset.from_dict({"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]})

    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)

    config = PPOConfig(
        output_dir=args.workdir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.iterations * args.batch_size,
        local_rollout_forward_batch_size=args.batch_size,
        response_length=args.max_new_tokens,
        temperature=args.temperature,
        stop_token="eos",
        missing_eos_penalty=args.missing_eos_penalty,
        kl_coef=args.kl_coef,
        vf_coef=args.vf_coef,
        cliprange=args.cliprange,
        cliprange_value=args.cliprange,
        learning_rate=args.lr,
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        seed=args.seed,
    )

    clock = PhaseClock()
    generate = ppo_trainer.batch_generation

    def timed_generation(model, queries, *rest, **kw):
        start = time.perf_counter()
        query_responses, logits = generate(model, queries, *rest, **kw)
        end = time.perf_counter()
        responses = query_responses[:, queries.shape[1] :]
        clock.add_rollout(start, end, len(queries), response_tokens(responses, tokenizer.eos_token_id))
        return query_responses, logits

    ppo_trainer.batch_generation = timed_generation

    class IterationEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.end_iteration()

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
        callbacks=[IterationEnd()],
    )
    trainer.train()
    reported = [row for row in trainer.state.log_history if "eps" in row]
    return {
        "iterations": clock.iterations(),
        # TRL's own figure: episodes/s since the start of training, warm-up included
        "trl_reported": {"eps": reported[-1]["eps"]} if reported else {},
        "torch_threads": torch.get_num_threads(),
    }


def load_tokenizer(path: str):
    """The benchmark's tokenizer, left-padded; transformers 5 saves it as `TokenizersBackend`, a class 4.x lacks,
    so on 4.x it is rebuilt from the same tokenizer.json, special tokens and chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path, padding_side="left")
    except ValueError:
        config = json.loads((Path(path) / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(Path(path) / "tokenizer.json"),
            eos_token=config["eos_token"],
            pad_token=config["pad_token"],
            padding_side="left",
        )
        tokenizer.chat_template = (Path(path) / "chat_template.jinja").read_text(encoding="utf-8")
        return tokenizer


if __name__ == "__main__":
    main()
