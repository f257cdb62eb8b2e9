"""Batched sampling for the policy, and the log-probabilities / values / rewards of a sampled batch.

Layout of a batch everywhere in rlhfkit (PPO, evaluation, best-of-n):

    sequences  = [ left-padded prompt (width P) | response, right-padded after EOS (width R) ]   (B, P + R)
    attention_mask = 1 on real tokens;  response_mask = 1 on response tokens up to and including EOS  (B, R)

Prompts are left-padded so every response starts at column P; position ids count real tokens only, so padding
changes nothing. Sampling tiny models with `model.generate` is overhead-bound (6–14 ms per decoding step where the
arithmetic needs < 1 ms), so for Llama-family models (Llama, Mistral, Qwen2 — the same block) sampling runs a lean
loop over the model's own weights: fused QKV and gate/up matrices, a preallocated static KV cache, and no per-step
Python beyond the layer loop; `sample(compiled=True)` (`--compile-sampler`) also runs each decoding step and its
token pick under torch.compile. `FastSampler` is tested to give the same logits as the HF forward for the same
prefix; any other architecture, and any config option it does not reproduce (see `FastSampler.for_model`), samples
through the HF forward with its KV cache.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhfkit.console import console
from rlhfkit.losses import token_logprobs
from rlhfkit.modeling import position_ids


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


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


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
        raise ValueError(f"--max-new-tokens {max_new_tokens}: an answer needs at least one token")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, pad_id)
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
            return step.advance(token, u, temperature, top_p)

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


class FastSampler:
    """A lean forward over the weights of a Llama-family model, for sampling only (no grad, static KV cache).

    Same maths as `LlamaForCausalLM.forward`: RMSNorm → attention with RoPE (the model's own inverse
    frequencies) → residual → RMSNorm → SwiGLU MLP → residual; final norm; LM head. The linear layers' biases
    (Llama's `attention_bias` / `mlp_bias`, Qwen2's q/k/v biases) are added where the model has them.
    """

    SUPPORTED = {"llama", "mistral", "qwen2"}
    # RoPE types whose inverse frequencies and cos/sin scale are fixed at init. "dynamic" and "longrope" recompute
    # them in the forward from the sequence length, which the precomputed table here would not follow.
    STATIC_ROPE = {"default", "linear", "llama3", "yarn"}

    def __init__(self, model):
        cfg = model.config
        trunk = model.model
        layers = []
        for layer in trunk.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append(
                (
                    layer.input_layernorm.weight,
                    torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    _fused_bias(a.q_proj, a.k_proj, a.v_proj),
                    a.o_proj.weight,
                    a.o_proj.bias,
                    layer.post_attention_layernorm.weight,
                    torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                    _fused_bias(m.gate_proj, m.up_proj),
                    m.down_proj.weight,
                    m.down_proj.bias,
                )
            )
        self.weights = _Weights(
            embed=trunk.embed_tokens.weight,
            layers=tuple(layers),
            norm=trunk.norm.weight,
            lm_head=model.lm_head.weight,
            n_heads=cfg.num_attention_heads,
            n_kv=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            eps=cfg.rms_norm_eps,
        )
        self.inv_freq = trunk.rotary_emb.inv_freq.float()
        self.rope_scale = float(getattr(trunk.rotary_emb, "attention_scaling", 1.0))

    @classmethod
    def for_model(cls, model, max_length: int | None = None) -> FastSampler | None:
        """A sampler for `model`, or None where it would not give the HF forward's logits (sample through HF).

        `max_length` is the longest sequence (prompt + new tokens) it will run: a sliding-window model (Mistral,
        Qwen2 with `use_sliding_window`) is served only when that is known to fit in the window, where the window
        masks nothing. Refused: other architectures, activations other than SiLU, models in training mode or
        wrapped (PEFT), dynamic / longrope RoPE, and RoPE over part of the head only.
        """
        cfg = getattr(model, "config", None)
        if cfg is None or cfg.model_type not in cls.SUPPORTED or getattr(cfg, "hidden_act", "silu") != "silu":
            return None
        if (
            not hasattr(model, "lm_head")
            or model.training
            or not hasattr(getattr(model, "model", None), "layers")
        ):
            return None  # e.g. a PeftModel: its adapters live outside these weights, so use the HF forward
        rotary = getattr(model.model, "rotary_emb", None)
        rope_type = getattr(rotary, "rope_type", None)
        if not isinstance(rope_type, str) or rope_type not in cls.STATIC_ROPE:
            return None
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if 2 * rotary.inv_freq.numel() != head_dim:  # partial rotary: the table here rotates the whole head
            return None
        # Mistral applies its window whenever `sliding_window` is set; Qwen2 sets it only with `use_sliding_window`.
        window = getattr(cfg, "sliding_window", None)
        if window is not None and (max_length is None or max_length > window):
            return None
        return cls(model)

    def stepper(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, width: int | None = None):
        """A `Decoding` of this batch: step(None) runs the prefill, step(token) one decoding step; each returns
        the next-token logits. `width` (≥ prompt + new tokens) sizes the KV cache."""
        return Decoding(self, ids, mask, width or ids.shape[1] + max_new_tokens)


class _Weights(NamedTuple):
    """A Llama-family model's weights as `_forward` reads them (a tuple, so that torch.compile takes it as input)."""

    embed: torch.Tensor
    layers: tuple  # per layer: ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gate_up, b_gate_up, w_down, b_down
    norm: torch.Tensor
    lm_head: torch.Tensor
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float


class Decoding:
    """One batch being decoded by a `FastSampler`: its static KV cache, key mask, RoPE table and positions."""

    def __init__(self, sampler: FastSampler, ids: torch.Tensor, mask: torch.Tensor, width: int):
        w = sampler.weights
        B, P = ids.shape
        dtype, device = w.embed.dtype, ids.device
        self.weights, self.ids, self.mask = w, ids, mask
        self.caches = tuple(
            (
                torch.zeros(B, w.n_kv, width, w.head_dim, dtype=dtype, device=device),
                torch.zeros(B, w.n_kv, width, w.head_dim, dtype=dtype, device=device),
            )
            for _ in w.layers
        )
        # Which keys are real, as an additive mask (0 / -inf) that SDPA takes without converting it at every
        # layer: the prompt's real tokens now, each generated column as it is written.
        self.key_bias = torch.full((B, width), float("-inf"), dtype=dtype, device=device)
        self.key_bias[:, :P].masked_fill_(mask.bool(), 0.0)
        self.positions = position_ids(mask)
        # cos / sin of every position this batch can reach, computed once: (width, D)
        freqs = torch.arange(width, device=device).float().unsqueeze(-1) * sampler.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        self.rope = ((emb.cos() * sampler.rope_scale).to(dtype), (emb.sin() * sampler.rope_scale).to(dtype))
        self.length = 0  # cache columns written
        self.next_pos = self.positions[:, -1] + 1

    def __call__(self, token: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits (B, V) after the prompt (token None: the prefill) or after one more token."""
        if token is None:
            P = self.ids.shape[1]
            # (B, 1, P, P): a query sees real keys at or before its own column
            causal = torch.ones(P, P, dtype=torch.bool, device=self.ids.device).tril()
            attn_mask = self.mask.bool()[:, None, None, :] & causal[None, None]
            attn_mask[..., 0] |= ~attn_mask.any(-1)  # fully padded query rows: avoid NaN, result unused
            x_ids, positions, cols = self.ids, self.positions, torch.arange(P, device=self.ids.device)
            self.length = keys = P
        else:
            x_ids, (positions, cols) = token.unsqueeze(1), self._next_column()
            keys = self.length
            attn_mask = self.key_bias[:, None, None, :keys]  # one query: every real key so far
        logits = _forward(self.weights, x_ids, positions, self.rope, self.caches, cols, keys, attn_mask)
        return logits[:, -1].float()

    def advance(
        self, token: torch.Tensor, u: torch.Tensor | None, temperature: float, top_p: float
    ) -> torch.Tensor:
        """One decoding step and the pick of the token after it, compiled (`pick_token` with uniforms `u`).

        The compiled graph has static shapes: it attends over the whole cache width (unwritten columns masked),
        so one compilation serves every step of every batch of this shape."""
        positions, cols = self._next_column()
        attn_mask = self.key_bias[:, None, None, :]
        return _compiled_decode()(
            self.weights, token, positions, self.rope, self.caches, cols, attn_mask, u, temperature, top_p
        )

    def _next_column(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token's positions (B, 1) and cache column (a 1-element tensor), which is marked real."""
        col, positions = self.length, self.next_pos
        self.key_bias[:, col] = 0.0
        self.length, self.next_pos = col + 1, positions + 1
        return positions.unsqueeze(1), torch.tensor([col], device=self.ids.device)


def _rms(x, weight, eps):
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


def _forward(w: _Weights, x_ids, positions, rope, caches, cols, keys: int | None, attn_mask):
    """Logits (B, t, V) of tokens `x_ids` at `positions`, writing their keys/values into cache columns `cols` and
    attending over the first `keys` columns (None: all of them, the compiled decoding step)."""
    B, t = x_ids.shape
    x = F.embedding(x_ids, w.embed)
    cos, sin = rope[0][positions].unsqueeze(2), rope[1][positions].unsqueeze(2)  # (B, t, 1, D)
    nq, nkv, hd = w.n_heads, w.n_kv, w.head_dim
    half = hd // 2
    for layer, (k_cache, v_cache) in zip(w.layers, caches):
        ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gu, b_gu, w_down, b_down = layer
        qkv = F.linear(_rms(x, ln1, w.eps), w_qkv, b_qkv).view(B, t, nq + 2 * nkv, hd)
        # RoPE on queries and keys together: x·cos + rotate_half(x)·sin
        qk = qkv[:, :, : nq + nkv]
        rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
        qk = (qk * cos + rotated * sin).transpose(1, 2)  # (B, nq + nkv, t, hd)
        q = qk[:, :nq]
        k_cache.index_copy_(2, cols, qk[:, nq:])
        v_cache.index_copy_(2, cols, qkv[:, :, nq + nkv :].transpose(1, 2))
        keys_, values = (k_cache, v_cache) if keys is None else (k_cache[:, :, :keys], v_cache[:, :, :keys])
        if nkv != nq:
            keys_ = keys_.repeat_interleave(nq // nkv, dim=1)
            values = values.repeat_interleave(nq // nkv, dim=1)
        if keys is None:  # written out: inductor fuses it, while SDPA's CPU kernel is slow for one query
            scores = (q @ keys_.transpose(-1, -2)).float() * hd**-0.5 + attn_mask
            a = torch.softmax(scores, dim=-1).to(values.dtype) @ values
        else:
            a = F.scaled_dot_product_attention(q, keys_, values, attn_mask=attn_mask)
        x = x + F.linear(a.transpose(1, 2).reshape(B, t, nq * hd), w_o, b_o)
        gate, up = F.linear(_rms(x, ln2, w.eps), w_gu, b_gu).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w_down, b_down)
    return F.linear(_rms(x, w.norm, w.eps), w.lm_head)


def _decode_and_pick(w, token, positions, rope, caches, cols, attn_mask, u, temperature, top_p):
    logits = _forward(w, token.unsqueeze(1), positions, rope, caches, cols, None, attn_mask)[:, -1].float()
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


def _fused_bias(*linears) -> torch.Tensor | None:
    """The bias of the fused matrix of `linears` (None when they have none: F.linear then adds nothing)."""
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat(
        [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
    )


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
    """Response text without EOS/padding."""
    texts = []
    for row, mask in zip(batch.responses.tolist(), batch.response_mask.tolist()):
        tokens = [t for t, m in zip(row, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


def encode_prompts(tokenizer, prompts: list[str], chat: bool, max_prompt_len: int = 96) -> list[list[int]]:
    """Token ids of each formatted prompt; an over-long prompt keeps its end (where the question is)."""
    from rlhfkit.tokenizer import format_prompt

    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    return [ids[-max_prompt_len:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


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
) -> list[tuple[str, bool]]:
    """(answer text, ended with EOS) for each prompt, sampled in batches with a fixed seed."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    answers: list[tuple[str, bool]] = []
    for i in range(0, len(prompts), batch_size):
        ids = encode_prompts(tokenizer, prompts[i : i + batch_size], chat)
        batch = sample(
            model,
            ids,
            tokenizer.eos_token_id,
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
