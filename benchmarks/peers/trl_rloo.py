"""TRL 1.x's RLOOTrainer (critic-free, k samples per prompt, leave-one-out baseline) on the benchmark's models,
prompts and settings. Run by `benchmarks/ppo_throughput.py` inside `.bench-venvs/trl1`.

Mapping of the shared settings: generation_batch_size = rollout batch (episodes), num_generations = k
(batch / k distinct prompts), per_device_train_batch_size = mini_batch (an optimizer step per minibatch, no
accumulation), num_iterations = ppo epochs, beta = kl_coef, epsilon = cliprange, max_completion_length =
max_new_tokens, top_k 0 / top_p 1. fp32 on CPU (bf16=False: TRL 1.x defaults to bf16); report_to none.
The rollout is timed by wrapping `RLOOTrainer._generate_single_turn` (padding + model.generate); an iteration
is the batch / mini_batch · epochs optimizer steps that reuse one generation batch.
"""

from __future__ import annotations

import time
import traceback

from common import PhaseClock, peer_args, read_prompts, versions, write_result


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
        AutoTokenizer,
        TrainerCallback,
    )
    from trl import RLOOConfig, RLOOTrainer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}]} for p in read_prompts(args.prompts)]
    )
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)

    steps_per_iteration = args.ppo_epochs * args.batch_size // args.mini_batch_size
    config = RLOOConfig(
        output_dir=args.workdir,
        per_device_train_batch_size=args.mini_batch_size,
        gradient_accumulation_steps=1,
        generation_batch_size=args.batch_size,
        num_generations=args.rloo_k,
        num_iterations=args.ppo_epochs,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        beta=args.kl_coef,
        epsilon=args.cliprange,
        learning_rate=args.lr,
        max_steps=args.iterations * steps_per_iteration,
        logging_steps=steps_per_iteration,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        seed=args.seed,
    )

    clock = PhaseClock()

    class IterationEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % steps_per_iteration == 0:
                clock.end_iteration()

    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=reward_model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
        callbacks=[IterationEnd()],
    )
    generate = trainer._generate_single_turn

    def timed_generation(prompt_ids, *rest, **kw):
        start = time.perf_counter()
        completion_ids = generate(prompt_ids, *rest, **kw)
        clock.add_rollout(start, time.perf_counter(), len(prompt_ids), sum(len(c) for c in completion_ids))
        return completion_ids

    trainer._generate_single_turn = timed_generation
    trainer.train()
    final = trainer.state.log_history[-1] if trainer.state.log_history else {}
    return {
        "iterations": clock.iterations(),
        "trl_reported": {k: v for k, v in final.items() if "per_second" in k or k == "train_runtime"},
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()
