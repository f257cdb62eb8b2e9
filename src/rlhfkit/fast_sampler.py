"""A lean forward over the weights of a Llama-family model (Llama, Mistral, Qwen2 — the same block), for sampling.

Sampling tiny models with `model.generate` is overhead-bound (6–14 ms per decoding step where the arithmetic needs
< 1 ms), so `rollout.sample` runs this instead where it can: fused QKV and gate/up matrices, a preallocated static
KV cache, and no per-step Python beyond the layer loop. `FastSampler` is tested to give the same logits as the HF
forward for the same prefix; any other architecture, and any config option it does not reproduce (see
`FastSampler.for_model`), samples through the HF forward with its KV cache.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhfkit.modeling import position_ids


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

    def static_step(self, token: torch.Tensor) -> tuple:
        """The arguments of `decode_logits` for one decoding step after `token` (B,), with static shapes: it
        attends over the whole cache width (unwritten columns masked), so that one torch.compile serves every step
        of every batch of this shape (`sample(compiled=True)`)."""
        positions, cols = self._next_column()
        return self.weights, token, positions, self.rope, self.caches, cols, self.key_bias[:, None, None, :]

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


def decode_logits(w: _Weights, token, positions, rope, caches, cols, attn_mask) -> torch.Tensor:
    """Next-token logits (B, V) after one token per row, attending over the whole cache (`Decoding.static_step`)."""
    return _forward(w, token.unsqueeze(1), positions, rope, caches, cols, None, attn_mask)[:, -1].float()


def _fused_bias(*linears) -> torch.Tensor | None:
    """The bias of the fused matrix of `linears` (None when they have none: F.linear then adds nothing)."""
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat(
        [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
    )
