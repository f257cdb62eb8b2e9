import pytest
import torch
import transformers
from transformers import LlamaConfig

from rlhfkit import rollout
from rlhfkit.batching import pad
from rlhfkit.fast_sampler import FastSampler
from rlhfkit.modeling import position_ids
from rlhfkit.rollout import response_logprobs, sample, sample_token

VOCAB = 97
# Prompts of different lengths, so the batch is left-padded (row 1 by 4 columns, row 2 by 2).
PROMPTS = [[5, 17, 33, 2, 71, 9], [40, 8], [11, 12, 13, 14]]
PAD = 0


def tiny_config(cls=LlamaConfig, **overrides):
    # A large init scale gives sharp attention and logits of order 1, so a wrong mask, position or RoPE
    # shows far above the 1e-4 tolerance.
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return cls(**values)


def build(config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # biases start at 0: make them count, so a dropped one shows
                param.normal_(0, 0.5)
    return model


ROPE_THETA = 10000.0
CONFIGS = {
    "llama": lambda: tiny_config(),
    "llama-gqa": lambda: tiny_config(num_key_value_heads=2),
    "llama-mqa-tied": lambda: tiny_config(num_key_value_heads=1, tie_word_embeddings=True),
    # q/k/v/o biases; gate/up/down biases
    "llama-attention-bias": lambda: tiny_config(num_key_value_heads=2, attention_bias=True),
    "llama-mlp-bias": lambda: tiny_config(mlp_bias=True),
    "llama-head-dim-16": lambda: tiny_config(num_key_value_heads=2, head_dim=16),  # hidden / heads = 8
    # RoPE types with fixed frequencies: other inverse frequencies (linear, llama3) or a cos/sin scale (yarn)
    "llama-rope-linear": lambda: tiny_config(
        rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=ROPE_THETA)
    ),
    "llama-rope-llama3": lambda: tiny_config(
        rope_parameters=dict(
            rope_type="llama3",
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
            rope_theta=ROPE_THETA,
        )
    ),
    "llama-rope-yarn": lambda: tiny_config(
        rope_parameters=dict(
            rope_type="yarn", factor=2.0, original_max_position_embeddings=32, rope_theta=ROPE_THETA
        )
    ),
}
if hasattr(transformers, "Qwen2Config"):
    # Qwen2 adds q/k/v biases to the Llama block.
    CONFIGS["qwen2-gqa"] = lambda: tiny_config(transformers.Qwen2Config, num_key_value_heads=2)
if hasattr(transformers, "MistralConfig"):
    # Without a sliding window Mistral is the Llama block (windows: test_sliding_window_*).
    CONFIGS["mistral-gqa"] = lambda: tiny_config(
        transformers.MistralConfig, num_key_value_heads=2, sliding_window=None
    )


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return build(CONFIGS[request.param]())


def hf_last_logits(model, ids, mask):
    with torch.no_grad():
        return (
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1].float()
        )


def test_fast_sampler_is_used_for_llama_family(model):
    assert isinstance(FastSampler.for_model(model), FastSampler)
    model.train()
    try:
        assert FastSampler.for_model(model) is None  # a model in training mode samples through HF
    finally:
        model.eval()


def test_fast_sampler_matches_hf_forward(model):
    """Prefill of a left-padded batch, then three decoded tokens: the same logits as the HF forward."""
    ids, mask = pad(PROMPTS, PAD, left=True)
    assert (mask == 0).any()  # the batch really is padded
    step = FastSampler.for_model(model).stepper(ids, mask, max_new_tokens=4)
    fast = step(None)
    torch.testing.assert_close(fast, hf_last_logits(model, ids, mask), atol=1e-4, rtol=0)
    assert fast.std() > 0.5  # logits of order 1: the comparison is not trivially small numbers
    for new in ([3, 50, 96], [96, 1, 7], [20, 20, 20]):
        token = torch.tensor(new)
        fast = step(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones(len(new), 1, dtype=mask.dtype)], 1)
        torch.testing.assert_close(fast, hf_last_logits(model, ids, mask), atol=1e-4, rtol=0)


def test_fast_sampler_ignores_padding(model):
    """A prompt gives the same next-token logits alone as inside a padded batch."""
    ids, mask = pad(PROMPTS, PAD, left=True)
    batch = FastSampler.for_model(model).stepper(ids, mask, 1)(None)
    for i, prompt in enumerate(PROMPTS):
        alone_ids, alone_mask = pad([prompt], PAD, left=True)
        alone = FastSampler.for_model(model).stepper(alone_ids, alone_mask, 1)(None)
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-4, rtol=0)


def logits_used_by_sample(model, monkeypatch, max_new_tokens=4, fast=True):
    """The logits `sample` draws each token from, and the batch it sampled (EOS never comes)."""
    seen = []

    def recording(logits, *args):
        seen.append(logits.clone())
        return sample_token(logits, *args)

    monkeypatch.setattr(rollout, "sample_token", recording)
    batch = sample(
        model, PROMPTS, -1, PAD, max_new_tokens, 1.0, 1.0, torch.Generator().manual_seed(0), fast=fast
    )
    monkeypatch.undo()
    assert len(seen) == max_new_tokens
    return seen, batch


def assert_sample_uses_hf_logits(model, monkeypatch, max_new_tokens=4, fast=True):
    """Each token `sample` drew came from the HF forward's logits for the prefix before it."""
    seen, batch = logits_used_by_sample(model, monkeypatch, max_new_tokens, fast)
    for n, logits in enumerate(seen):
        width = batch.prompt_width + n
        expected = hf_last_logits(model, batch.sequences[:, :width], batch.attention_mask[:, :width])
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_sample_draws_from_the_hf_logits(model, monkeypatch):
    assert_sample_uses_hf_logits(model, monkeypatch)


@pytest.mark.parametrize("bias", ["attention_bias", "mlp_bias"])
def test_llama_biases_reach_the_sampled_logits(bias, monkeypatch):
    """A Llama with `attention_bias` / `mlp_bias` samples from its HF logits, which its biases do change."""
    model = build(tiny_config(**{bias: True}))
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    assert biases and all(p.abs().sum() > 0 for p in biases)
    assert_sample_uses_hf_logits(model, monkeypatch)
    with_biases, _ = logits_used_by_sample(model, monkeypatch, max_new_tokens=1)
    with torch.no_grad():
        for p in biases:
            p.zero_()
    without, _ = logits_used_by_sample(model, monkeypatch, max_new_tokens=1)
    assert (with_biases[0] - without[0]).abs().max() > 0.1


REFUSED = {
    # RoPE whose frequencies the HF forward recomputes from the sequence length
    "rope-dynamic": lambda: tiny_config(
        rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=ROPE_THETA)
    ),
    "rope-longrope": lambda: tiny_config(
        rope_parameters=dict(
            rope_type="longrope",
            short_factor=[1.0] * 4,
            long_factor=[2.0] * 4,
            original_max_position_embeddings=16,
            rope_theta=ROPE_THETA,
        )
    ),
    # RoPE over half of each head
    "rope-partial": lambda: tiny_config(
        rope_parameters=dict(rope_type="linear", factor=2.0, partial_rotary_factor=0.5, rope_theta=ROPE_THETA)
    ),
    "gelu": lambda: tiny_config(hidden_act="gelu"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_fast_sampler_refuses_configs_it_does_not_reproduce(name):
    model = build(REFUSED[name]())
    assert FastSampler.for_model(model) is None
    assert FastSampler.for_model(model, max_length=8) is None


WINDOWED = {  # window -> config, with no window for None
    "mistral": lambda window: tiny_config(
        transformers.MistralConfig, num_key_value_heads=2, sliding_window=window
    ),
    "qwen2": lambda window: tiny_config(
        transformers.Qwen2Config,
        num_key_value_heads=2,
        use_sliding_window=window is not None,
        sliding_window=window,
        max_window_layers=0,
    ),
}


@pytest.mark.parametrize("name", list(WINDOWED))
def test_sliding_window_is_served_only_where_it_masks_nothing(name, monkeypatch):
    """Window 8, prompts padded to 6: FastSampler runs 6 + 2 tokens, not 6 + 6 (nor an unknown length), where the
    window hides keys and `sample` falls back to the HF forward."""
    model = build(WINDOWED[name](8))
    assert isinstance(FastSampler.for_model(model, max_length=8), FastSampler)
    assert FastSampler.for_model(model, max_length=9) is None
    assert FastSampler.for_model(model) is None
    assert_sample_uses_hf_logits(model, monkeypatch, max_new_tokens=2)
    assert_sample_uses_hf_logits(model, monkeypatch, max_new_tokens=6)
    # the window does mask something at 6 + 6: the same weights without one give other logits at the end
    seen, batch = logits_used_by_sample(model, monkeypatch, max_new_tokens=6)
    full = hf_last_logits(build(WINDOWED[name](None)), batch.sequences[:, :-1], batch.attention_mask[:, :-1])
    assert (seen[-1] - full).abs().max() > 1e-2


def greedy(model, eos_id, fast, max_new_tokens=8):
    # Sampling at temperature 0 still takes the generator, as PPO passes it; it must not matter.
    generator = torch.Generator().manual_seed(1234)
    return sample(model, PROMPTS, eos_id, PAD, max_new_tokens, 0.0, 1.0, generator, fast=fast)


def test_fast_and_hf_sampling_agree(model):
    fast = greedy(model, eos_id=-1, fast=True)  # an EOS that never comes: full-length greedy answers
    slow = greedy(model, eos_id=-1, fast=False)
    assert torch.equal(fast.sequences, slow.sequences)
    assert torch.equal(fast.attention_mask, slow.attention_mask)
    assert fast.responses.shape == (3, 8)
    assert not fast.ended.any() and bool(fast.response_mask.all())


def test_sampling_stops_at_eos(model):
    """Pick as EOS a token row 0 emits and row 1 never does: row 0 stops, row 1 runs to max_new_tokens."""
    full = greedy(model, eos_id=-1, fast=True).responses.tolist()
    candidates = [t for t in full[0] if t not in full[1] and t != PAD]
    assert candidates, f"greedy answers too similar to build the test: {full}"
    eos = candidates[0]
    first_eos = [row.index(eos) if eos in row else None for row in full]

    for fast in (True, False):
        batch = greedy(model, eos, fast)
        assert batch.responses.shape[1] == 8  # row 1 never ends: the batch runs to the limit
        assert batch.ended.tolist() == [i is not None for i in first_eos]
        for row, stop in enumerate(first_eos):
            mask = batch.response_mask[row].tolist()
            tokens = batch.responses[row].tolist()
            if stop is None:
                assert mask == [1] * 8 and tokens == full[row]
            else:
                # up to and including the first EOS; pad after it
                assert mask == [1] * (stop + 1) + [0] * (8 - stop - 1)
                assert tokens[: stop + 1] == full[row][: stop + 1]
                assert tokens[stop + 1 :] == [PAD] * (8 - stop - 1)
        prompt_mask = batch.attention_mask[:, : batch.prompt_width]
        assert torch.equal(batch.attention_mask[:, batch.prompt_width :], batch.response_mask)
        assert prompt_mask.sum(1).tolist() == [len(p) for p in PROMPTS]


def test_batch_stops_when_every_row_ended(model):
    """Row k's prompt is row 0's prompt plus its first k greedy tokens, so with EOS = row 0's token j every row
    ends, row k after j - k + 1 tokens; the response columns are trimmed to the longest answer."""
    base = PROMPTS[0]
    cont = sample(model, [base], -1, PAD, 8, 0.0).responses[0].tolist()
    j = next(j for j in range(2, 8) if cont[j] not in cont[:j])
    prompts = [base, base + cont[:1], base + cont[:2]]
    for fast in (True, False):
        batch = sample(model, prompts, cont[j], PAD, 8, 0.0, fast=fast)
        assert batch.ended.tolist() == [True, True, True]
        assert batch.responses.shape[1] == j + 1
        assert batch.response_mask.sum(1).tolist() == [j + 1, j, j - 1]
        assert batch.responses[0].tolist() == cont[: j + 1]


def test_response_logprobs_match_unpadded_forward(model):
    """log π(y_t | x, y_<t) of a padded batch equals log_softmax of the HF logits of each row run alone."""
    generator = torch.Generator().manual_seed(0)
    batch = sample(
        model, PROMPTS, eos_id=7, pad_id=PAD, max_new_tokens=6, temperature=1.0, generator=generator
    )
    T = 0.7
    logprobs = response_logprobs(model, batch, temperature=T)
    assert logprobs.shape == batch.response_mask.shape
    for i, prompt in enumerate(PROMPTS):
        n = int(batch.response_mask[i].sum())
        response = batch.responses[i, :n].tolist()
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float() / T
        expected = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(
            1, torch.tensor(response)[:, None]
        )
        torch.testing.assert_close(logprobs[i, :n], expected.squeeze(1), atol=1e-4, rtol=0)


def test_sample_token_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_token(logits, 1.0, 0.7, generator)
    # sorted: 0.5, 0.3 | 0.15, 0.05 -> {1, 3} is the smallest set with mass >= 0.7
    assert set(tokens.tolist()) == {1, 3}
    share = (tokens == 1).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.03)  # renormalised inside the nucleus


def test_sample_token_top_p_below_the_top_token_is_greedy():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(500, 1)
    tokens = sample_token(logits, 1.0, 0.3, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {1}


def test_sample_token_full_distribution_and_greedy():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    tokens = sample_token(probs.log().repeat(20000, 1), 1.0, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)
    assert sample_token(probs.log()[None], 0.0, 0.5, None).tolist() == [3]


def test_sample_token_never_draws_an_impossible_token():
    # Inverse-CDF sampling: tokens of probability 0 (first, middle, last of the vocabulary) are never drawn,
    # and the others come at their probabilities.
    logits = torch.tensor([float("-inf"), 0.0, float("-inf"), 1.0, 2.0, float("-inf")])
    tokens = sample_token(logits.repeat(30000, 1), 1.0, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=6).float() / len(tokens)
    torch.testing.assert_close(counts, torch.softmax(logits, -1), atol=0.01, rtol=0)
    assert counts[[0, 2, 5]].sum() == 0


def test_sample_token_temperature_sharpens():
    logits = torch.tensor([0.0, 1.0]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    hot = (sample_token(logits, 1.0, 1.0, generator) == 1).float().mean().item()
    cold = (sample_token(logits, 0.25, 1.0, generator) == 1).float().mean().item()
    assert hot == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.015)
    assert cold == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=0.015)


def test_sampling_an_eval_mode_lora_policy():
    """A peft-wrapped policy in eval mode must sample from the adapted weights (or fall back to HF)."""
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(
        build(tiny_config()), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    ).eval()
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # adapters that change the output
            torch.nn.init.normal_(param, std=0.5)
    fast = greedy(policy, eos_id=-1, fast=True)
    slow = greedy(policy, eos_id=-1, fast=False)
    assert torch.equal(fast.sequences, slow.sequences)


COMPILED_CASES = {"plain": (1.0, 1.0), "nucleus": (0.7, 0.9)}


@pytest.mark.parametrize("case", list(COMPILED_CASES))
def test_compiled_sampling_draws_the_same_tokens(case):
    """torch.compile'd decoding (whole-width cache, fused pick) gives the eager loop's tokens for the same
    generator: same logits up to float rounding, same uniforms, same inverse-CDF pick. Grouped KV heads and a
    prompt batch wider than one compiled width step (so the cache width is rounded up) are covered."""
    temperature, top_p = COMPILED_CASES[case]
    model = build(tiny_config(num_key_value_heads=2))
    prompts = PROMPTS + [list(range(3, 3 + rollout.COMPILED_WIDTH_STEP))]  # 32 + 8 columns: width 64

    def draw(compiled):
        generator = torch.Generator().manual_seed(0)
        return sample(model, prompts, -1, PAD, 8, temperature, top_p, generator, compiled=compiled)

    eager, compiled = draw(False), draw(True)
    assert not rollout._COMPILED.get("failed")  # it really ran compiled
    assert compiled.sequences.shape == eager.sequences.shape == (4, 32 + 8)
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.equal(compiled.response_mask, eager.response_mask)
    assert len(set(map(tuple, eager.responses.tolist()))) == 4  # real samples, not one repeated row


def test_compiled_sampling_falls_back_when_compiling_fails(monkeypatch, capsys):
    """Without a working compiler, `compiled=True` says so once and samples uncompiled: the same tokens."""

    def no_compiler(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return fails

    model = build(tiny_config())
    monkeypatch.setattr(rollout, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", no_compiler)
    draws = [
        sample(model, PROMPTS, -1, PAD, 5, 1.0, 1.0, torch.Generator().manual_seed(0), compiled=compiled)
        for compiled in (True, True, False)
    ]
    printed = " ".join(capsys.readouterr().err.split())  # rich may wrap the line
    assert printed.count("compiled sampling unavailable (InvalidCxxCompiler") == 1
    assert torch.equal(draws[0].sequences, draws[2].sequences)
    assert torch.equal(draws[1].sequences, draws[2].sequences)


def test_nucleus_shortlist_gives_the_full_sorts_nucleus():
    """The top-64 shortlist is used where it holds the nucleus (peaked rows) and gives the full sort's result;
    a batch with a flat row falls back to the full sort. Both: the smallest top set reaching top_p."""
    from rlhfkit.rollout import nucleus

    torch.manual_seed(0)
    peaked = torch.softmax(torch.randn(8, 3000) * 4, dim=-1)
    flat = torch.softmax(torch.randn(8, 3000) * 0.1, dim=-1)
    for probs in (peaked, torch.cat([peaked, flat])):
        short_probs, short_order = nucleus(probs, 0.9)
        full_probs, full_order = nucleus(probs, 0.9, shortlist=0)
        width = short_probs.shape[1]
        assert width == (64 if probs is peaked else 3000)  # which path ran
        assert torch.equal(short_order, full_order[:, :width])
        assert torch.equal(short_probs, full_probs[:, :width])
        assert (full_probs[:, width:] == 0).all()
        kept = full_probs > 0
        assert (full_probs.sum(-1) >= 0.9).all()  # reaches top_p ...
        smallest_kept = full_probs.where(kept, 1.0).min(-1).values
        assert ((full_probs.sum(-1) - smallest_kept) < 0.9).all()  # ... with no token to spare
