"""The next-token training loop that Step0 (pretrain) and Step1 (SFT) both run.

The two steps differ only in their data: pretraining packs raw text into full blocks and predicts every token;
SFT predicts only the completion tokens (prompt labels are -100). Everything else — accumulation, bf16 autocast,
cosine LR, clipping, checkpoints, resume — is this one loop, read top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.batching import LMExample, collate
from rlhfkit.config import TrainArgs
from rlhfkit.losses import lm_loss
from rlhfkit.modeling import save_model
from rlhfkit.training import (
    Tracker,
    batch_indices,
    check_finite,
    check_weights,
    clip_gradients,
    console,
    cosine_schedule,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    microbatch_numbers,
    provenance,
    remove_checkpoint,
    save_checkpoint,
    seed_everything,
    settings_of,
    sync_gradients_if,
)


def train_lm(
    cfg: TrainArgs, model, tokenizer, examples: list[LMExample], max_steps: int, stage: str, meta: dict
):
    """Minimise mean token cross-entropy on `examples` for `max_steps` optimizer steps; save to cfg.out."""
    out = Path(cfg.out)
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.mixed_precision)
    model.config.use_cache = False
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start, changed = 0, {}
    if cfg.resume and (state := load_checkpoint(accelerator, out, scheduler, settings_of(cfg))):
        start, changed = state["step"], state["changed"]
        console.print(f"[{stage}] resuming from {out}/checkpoint at step {start}")

    pad_id = tokenizer.pad_token_id
    model.train()
    with Tracker(out, stage, max_steps, start, enabled=accelerator.is_main_process) as tracker:
        for step in range(start, max_steps):
            numbers = microbatch_numbers(step, cfg.grad_accum, accelerator)
            total_loss, n_tokens = 0.0, 0
            for m, number in enumerate(numbers):
                batch = collate(
                    [examples[i] for i in batch_indices(len(examples), cfg.batch_size, number, cfg.seed)],
                    pad_id,
                )
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with sync_gradients_if(accelerator, model, m == len(numbers) - 1), accelerator.autocast():
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                    loss = lm_loss(logits.float(), batch["labels"])
                    accelerator.backward(loss / cfg.grad_accum)
                total_loss += loss.item() / cfg.grad_accum
                n_tokens += int((batch["labels"] != -100).sum())
            check_finite(step + 1, accelerator, loss=total_loss)
            grad_norm = clip_gradients(accelerator, model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            if done % cfg.log_every == 0 or done == max_steps:
                tracker.log(
                    done,
                    {
                        "loss": total_loss,
                        "ppl": float(torch.exp(torch.tensor(total_loss))),
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "tokens": n_tokens,
                    },
                    show=("loss", "lr"),
                )
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < max_steps:
                check_weights(accelerator.unwrap_model(model), done, "model")
                save_checkpoint(accelerator, out, done, settings=settings_of(cfg))

    final = accelerator.unwrap_model(model)
    check_weights(final, max_steps, "model")
    if hasattr(final, "merge_and_unload"):  # LoRA: save a plain model every later stage can load
        final = final.merge_and_unload()
    final.config.use_cache = True
    if accelerator.is_main_process:
        save_model(final, tokenizer, out, **meta, steps=max_steps, complete=True, **provenance(cfg, changed))
        remove_checkpoint(out)
        console.print(f"[{stage}] saved to {out}")
    accelerator.wait_for_everyone()
    return final
