"""Batched sampling for the policy, and the log-probabilities of a sampled batch.

Layout of a batch everywhere in rlhfkit (PPO, label, evaluation, best-of-n):

    sequences  = [ left-padded prompt (width P) | response, right-padded after EOS (width R) ]   (B, P + R)
    attention_mask = 1 on real tokens;  response_mask = 1 on response tokens up to and including EOS  (B, R)

Prompts are left-padded so every response starts at column P; position ids count real tokens only, so padding
changes nothing. Llama-family models decode through `fast_sampler.FastSampler` (a lean forward over their
weights), every other model through its HF forward and KV cache; `sample(compiled=True)` (`--compile-sampler`)
also runs FastSampler's decoding step and its token pick under torch.compile. Tokens are picked here, the same way
on either path: one uniform number per row, found in the row's top-p nucleus (`pick_token`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from rlhfkit.batching import encode_prompts, fit_prompts, pad
from rlhfkit.console import console
from rlhfkit.errors import UsageError
from rlhfkit.fast_sampler import FastSampler, decode_logits
from rlhfkit.losses import token_logprobs
from rlhfkit.modeling import context_length, position_ids
from rlhfkit.tokenizer import end_of_turn_id


@dataclass
class SampleBatch:
    sequences: torch.Tensor  # (B, P + R) prompt left-padded, response right-padded
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R) 1 up to and including EOS
    prompt_width: int  # P
    ended: torch.Tensor  # (B,) bool: the response ended with EOS

    @property
    def responses(self) -> torch.Tensor:  # (B, R)
        return self.sequences[:, self.prompt_width :]


COMPILED_WIDTH_STEP = 32  # cache widths of compiled sampling are multiples of this


@torch.no_grad()
def sample(
    model,
    prompt_ids: list[list[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    fast: bool = True,
    compiled: bool = False,
) -> SampleBatch:
    """Sample one response per prompt until EOS or `max_new_tokens` (whole batch stops when all rows ended).

    `compiled` runs FastSampler's decoding step under torch.compile: the same tokens from the same generator up
    to float rounding, faster per step, after a compilation per batch shape (10–20 s on a 2-core CPU)."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: an answer needs at least one token")
    device = next(model.parameters()).device
    ids, mask = pad(prompt_ids, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    total = ids.shape[1] + max_new_tokens
    sampler = FastSampler.for_model(model, max_length=total) if fast or compiled else None
    if sampler is None:
        step = _hf_stepper(model, ids, mask)
    else:
        # A compiled step serves one shape: round the cache width up so that prompts of similar length share it.
        width = -(-total // COMPILED_WIDTH_STEP) * COMPILED_WIDTH_STEP if compiled else total
        step = sampler.stepper(ids, mask, max_new_tokens, width)

    if sampler is not None and compiled:

        def advance(token):  # the token after `token`: one compiled step, token pick included
            u = None if temperature <= 0 else uniforms(token.shape[0], generator, device)
            return _compiled_decode()(*step.static_step(token), u, temperature, top_p)

    else:

        def advance(token):  # the token after `token`
            return sample_token(step(token), temperature, top_p, generator)

    B = ids.shape[0]
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    token = sample_token(step(None), temperature, top_p, generator)  # prefill, and the first token
    n = 0
    for n in range(max_new_tokens):
        token = torch.where(ended, torch.full_like(token, pad_id), token)
        out[:, n] = token
        ended |= token == eos_id
        if bool(ended.all()) or n == max_new_tokens - 1:
            break
        token = advance(token)
    out = out[:, : n + 1]  # trim columns nobody used
    response_mask = response_mask_from(out, eos_id, pad_id, ended)
    sequences = torch.cat([ids, out], dim=1)
    attention_mask = torch.cat([mask, response_mask], dim=1)
    return SampleBatch(sequences, attention_mask, response_mask, prompt_width=ids.shape[1], ended=ended)


def response_mask_from(
    responses: torch.Tensor, eos_id: int, pad_id: int, ended: torch.Tensor
) -> torch.Tensor:
    """1 on tokens up to and including the first EOS; a response that never ended is all 1."""
    is_eos = responses == eos_id
    first_eos = torch.where(
        is_eos.any(1), is_eos.float().argmax(1), torch.full_like(ended, responses.shape[1], dtype=torch.long)
    )
    cols = torch.arange(responses.shape[1], device=responses.device)
    return (cols.unsqueeze(0) <= first_eos.unsqueeze(1)).long()


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """One token per row from softmax(logits / T), restricted to the top-p nucleus. (B, V) -> (B,)"""
    u = None if temperature <= 0 else uniforms(logits.shape[0], generator, logits.device)
    return pick_token(logits, temperature, top_p, u)


def uniforms(n: int, generator, device) -> torch.Tensor:
    """The one uniform number per row that `pick_token` turns into a token. (n, 1)"""
    return torch.rand((n, 1), generator=generator, device=device, dtype=torch.float32)


def pick_token(
    logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None, shortlist: bool = True
) -> torch.Tensor:
    """The token whose cumulative probability first exceeds u (per row), in softmax(logits / T) restricted to the
    top-p nucleus; argmax when T <= 0.

    Inverse-CDF sampling: one uniform number per row, found in the row's cumulative distribution. This is the
    same distribution as `torch.multinomial`, which draws one exponential number per vocabulary entry instead and
    costs ~5 ms per step at batch 64 × 3000 tokens on a 2-core CPU (more than the model's forward).
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = nucleus(probs, top_p, NUCLEUS_SHORTLIST if shortlist else 0)
    cdf = probs.cumsum(-1)
    token = torch.searchsorted(cdf[:, :-1].contiguous(), u * cdf[:, -1:], right=True).squeeze(1)
    return token if order is None else order.gather(1, token.unsqueeze(1)).squeeze(1)


NUCLEUS_SHORTLIST = 64


def nucleus(probs: torch.Tensor, top_p: float, shortlist: int = NUCLEUS_SHORTLIST):
    """(probabilities sorted in descending order with those outside the top-p nucleus zeroed, their token ids).

    Sorting the whole vocabulary costs more than a decoding step (~6 ms at batch 64 × 3000 tokens here), while a
    nucleus is usually a few dozen tokens: the `shortlist` most probable ones are tried first, and they are the
    same entries in the same order (ties apart) whenever they already hold more than top_p in every row; else
    (or with shortlist 0) the whole vocabulary is sorted. Either way the nucleus is the smallest set of most
    probable tokens whose mass reaches top_p."""
    top = order = None
    if 0 < shortlist < probs.shape[-1]:
        top, order = probs.topk(shortlist, dim=-1)  # sorted, descending
        if not bool((top.cumsum(-1)[:, -1] > top_p).all()):
            top = order = None
    if top is None:
        top, order = probs.sort(dim=-1, descending=True)
    outside = top.cumsum(-1) - top > top_p  # keep the smallest set reaching top_p
    return top.masked_fill(outside, 0.0), order


def _hf_stepper(model, ids: torch.Tensor, mask: torch.Tensor):
    """Decoding through the model's own forward and KV cache (any HF causal LM)."""
    state = {"mask": mask, "past": None}
    # transformers 5.x renames `past_key_values` to `cache` (the old name goes in 5.40): use what forward takes.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def step(token):
        if token is None:
            inputs, pos = ids, position_ids(state["mask"])
        else:
            state["mask"] = torch.cat([state["mask"], torch.ones_like(token).unsqueeze(1)], dim=1)
            inputs, pos = token.unsqueeze(1), position_ids(state["mask"])[:, -1:]
        out = model(
            input_ids=inputs,
            attention_mask=state["mask"],
            position_ids=pos,
            use_cache=True,
            **{cache_arg: state["past"]},
        )
        state["past"] = out[cache_arg]
        return out.logits[:, -1].float()

    return step


# FastSampler's decoding step and the token pick under torch.compile (`sample(compiled=True)`).


def _decode_and_pick(w, token, positions, rope, caches, cols, attn_mask, u, temperature, top_p):
    logits = decode_logits(w, token, positions, rope, caches, cols, attn_mask)
    return pick_token(logits, temperature, top_p, u, shortlist=False)  # no data-dependent branch in the graph


_COMPILED = {}


def _compiled_decode():
    """`_decode_and_pick` under torch.compile, one per process (it recompiles for each new batch shape). Where
    compiling fails (no C++ compiler, an unsupported device), it says so once and runs uncompiled."""
    if "fn" not in _COMPILED:
        compiled = torch.compile(_decode_and_pick, dynamic=False)

        def run(*args):
            if _COMPILED.get("failed"):
                return _decode_and_pick(*args)
            try:
                return compiled(*args)
            except Exception as e:  # torch._dynamo / inductor errors; a real bug fails again uncompiled
                _COMPILED["failed"] = True
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                console.print(f"warning: compiled sampling unavailable ({reason}); sampling uncompiled")
                return _decode_and_pick(*args)

        _COMPILED["fn"] = run
    return _COMPILED["fn"]


# ---------------------------------------------------------------------------------------------------------------
# Scoring a sampled batch: one forward each.


def response_logprobs(model, batch: SampleBatch, temperature: float = 1.0, return_logits: bool = False):
    """log π(y_t | x, y_<t) of every response token at the sampling temperature. (B, R)"""
    logits = (
        model(
            input_ids=batch.sequences,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),
        ).logits.float()
        / temperature
    )
    logprobs = token_logprobs(logits, batch.sequences)[:, batch.prompt_width - 1 :]  # (B, R)
    if return_logits:
        return logprobs, logits[:, batch.prompt_width - 1 : -1]
    return logprobs


def decode_responses(tokenizer, batch: SampleBatch) -> list[str]:
    """Response text without its end-of-turn token or padding."""
    texts, ends = [], {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    for row, mask in zip(batch.responses.tolist(), batch.response_mask.tolist()):
        tokens = [t for t, m in zip(row, mask) if m and t not in ends]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    chat: bool = True,
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    batch_size: int = 64,
    compiled: bool = False,
    max_prompt_length: int | None = None,
    stage: str = "generate",
) -> list[tuple[str, bool]]:
    """(answer text, ended with the end-of-turn token) for each prompt, sampled in batches with a fixed seed;
    prompts longer than `max_prompt_length` (default: what the model's context leaves) are shortened, and said."""
    prompts = fit_prompts(
        tokenizer, prompts, chat, max_prompt_length, max_new_tokens, context_length(model), stage
    )
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    answers: list[tuple[str, bool]] = []
    for i in range(0, len(prompts), batch_size):
        ids = encode_prompts(tokenizer, prompts[i : i + batch_size], chat)
        batch = sample(
            model,
            ids,
            end_of_turn_id(tokenizer, chat),
            tokenizer.pad_token_id,
            max_new_tokens,
            temperature,
            top_p,
            generator,
            compiled=compiled,
        )
        answers.extend(zip(decode_responses(tokenizer, batch), batch.ended.tolist()))
    model.train(was_training)
    return answers
