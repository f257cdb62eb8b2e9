"""Train the default tokenizer: byte-level BPE (`tokenizers`) saved as a Hugging Face fast tokenizer.

Byte-level BPE never meets an unknown character, so any Chinese text the world or a user brings round-trips.
The saved directory loads with `AutoTokenizer.from_pretrained(dir)` and carries a chat template.

Chat format (one special token per role; the assistant turn ends with EOS so sampling knows where to stop):
    <|user|>我想去重庆玩，有哪些好玩的地点呢？<|assistant|>重庆是一个……。<|endoftext|>
A pretrained-only model ("GPT") never saw these tokens: it is prompted with the raw text instead and plays
文字接龙, exactly as the seed describes (see `format_prompt`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jinja2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlhfkit.console import console
from rlhfkit.errors import UsageError
from rlhfkit.modeling import from_pretrained

EOS = "<|endoftext|>"
PAD = "<|pad|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
SPECIAL_TOKENS = [EOS, PAD, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM + "{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 3000, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Byte-level BPE on `texts`; returns a HF fast tokenizer with EOS/PAD/role tokens and the chat template."""
    bpe = Tokenizer(models.BPE())
    # No prefix space: Chinese has no word boundaries and a leading space would change every first token.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Any HF tokenizer; makes sure it has an EOS and a PAD token (PAD falls back to EOS, as TRL does)."""
    tokenizer = from_pretrained(AutoTokenizer, path, "tokenizer")
    if tokenizer.eos_token_id is None:
        raise UsageError(f"tokenizer at {path} has no EOS token: rlhfkit needs one to know where answers end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.__dict__["_rlhfkit_pad_lent"] = True  # training stages give it one of its own
    return tokenizer


def give_own_pad_token(tokenizer: PreTrainedTokenizerBase, stage: str) -> bool:
    """A training stage's tokenizer whose pad token is missing (load_tokenizer lent it EOS) or is the token an
    answer ends with gets a pad token of its own, saved with the model (`modeling.fit_vocab` resizes the
    embeddings): plain transformers' AutoModelForSequenceClassification pools at the last token that is not the
    pad token, so with pad = end of turn it would score a reward model one token early. True if one was added."""
    lent = tokenizer.__dict__.get("_rlhfkit_pad_lent", False)
    if not (lent or tokenizer.pad_token_id == end_of_turn_id(tokenizer)):
        return False
    before = tokenizer.pad_token
    tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.__dict__["_rlhfkit_pad_added"] = tokenizer.pad_token_id
    had = "none" if lent else before
    console.print(
        f"[{stage}] the tokenizer's pad token was {had}; added {PAD} (id {tokenizer.pad_token_id}) and resized the "
        "embeddings, saved with the model, so that plain transformers scores a reward model where rlhfkit does"
    )
    return True


def writes_the_world(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Is this rlhfkit's own kind of tokenizer (its chat template), the one the embedded world's data is made for?
    A user's checkpoint with another tokenizer must not be handed the world's Chinese prompts or text silently."""
    return tokenizer.chat_template == CHAT_TEMPLATE


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings this tokenizer reads as special tokens wherever they stand in a text (EOS, pad, role markers):
    data must not spell them (`data.load_sft(..., control_tokens)` and friends refuse it)."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(t for t in tokens if t)


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template's text of `messages`; a template that refuses them (a system turn its model never had,
    roles out of order) is a UsageError saying so, not a jinja traceback."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.TemplateError as err:
        roles = " → ".join(m.get("role", "?") for m in messages)
        hint = (
            "; it takes no system turn: merge the system text into the first user turn, or drop it"
            if any(m.get("role") == "system" for m in messages)
            else ""
        )
        raise UsageError(
            f"the chat template of {tokenizer.name_or_path} refuses a conversation of roles {roles}: {err}{hint}"
        ) from None


_PROBE = "rlhfkit-end-of-turn-probe"


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token that ends an assistant turn: the special token the chat template renders right after an assistant
    message (ChatML's <|im_end|>, the world's and [INST] templates' EOS), else EOS. SFT targets end with it,
    sampling stops at it and the reward model scores answers ending with it."""
    cached = tokenizer.__dict__.get("_rlhfkit_end_of_turn")
    if cached is not None:
        return cached
    token = tokenizer.eos_token
    if tokenizer.chat_template:
        try:
            text = render_chat(
                tokenizer,
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}],
                add_generation_prompt=False,
            )
        except UsageError:
            text = ""
        after = text[text.rfind(_PROBE) + len(_PROBE) :].lstrip() if _PROBE in text else ""
        specials = sorted(control_tokens(tokenizer), key=len, reverse=True)
        token = next((t for t in specials if after.startswith(t)), token)
    tokenizer.__dict__["_rlhfkit_end_of_turn"] = token
    return token


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase, chat: bool = True) -> int:
    """The id an answer ends with: `end_of_turn` for chat-formatted prompts, EOS for raw text (a base LM)."""
    return tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)) if chat else tokenizer.eos_token_id


def describe_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """Which token ends an answer, and why, in words (the stages say it once)."""
    token = end_of_turn(tokenizer)
    if token == tokenizer.eos_token:
        return f"answers end with {token} (EOS{', as the chat template ends a turn' if tokenizer.chat_template else ''})"
    return (
        f"answers end with {token}, what the chat template renders after an assistant turn (EOS {tokenizer.eos_token} "
        "still ends pretraining documents)"
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], chat: bool = True) -> str:
    """The text a model is conditioned on: the chat template for chat models, the raw prompt for a base LM.
    `prompt` is a user turn's text or a whole conversation (chat messages up to the user's last turn)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if chat and tokenizer.chat_template:
        return render_chat(tokenizer, messages, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise UsageError(
            f"a conversation prompt ({len(prompt)} turns) needs a tokenizer with a chat template "
            f"({tokenizer.name_or_path} has none): give plain-text prompts, or add a chat_template to the tokenizer"
        )
    return prompt


def conversation_segments(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[tuple[str, bool]]:
    """A conversation as (text, is_target) pieces for SFT on every assistant turn (TRL's assistant_only_loss):
    each assistant turn is a target, from where the template's generation prompt ends up to and including its
    end-of-turn token; everything else (system, user turns, the template's framing) is context. A turn the
    template does not end with a token of its own gets `end_of_turn` appended (an empty text marks it)."""
    assert messages and messages[-1]["role"] == "assistant"
    if not tokenizer.chat_template:
        raise UsageError(
            f"{{messages}} rows need a tokenizer with a chat template ({tokenizer.name_or_path} has none): "
            "give {prompt, completion} rows, or add a chat_template to the tokenizer"
        )
    eot, segments, done = end_of_turn(tokenizer), [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        full = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        start = full.find(message["content"], len(prefix))
        if not (full.startswith(prefix) and prefix.startswith(full_so_far(segments)) and start >= 0):
            # a template that rewrites earlier turns (drops past reasoning, say): learn the last turn only
            prefix = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
            return [(prefix, False), (messages[-1]["content"], True), ("", True)]
        end = full.find(eot, start + len(message["content"]))
        segments.append((prefix[done:], False))
        if end < 0:  # the template renders no end-of-turn token here: the answer is followed by one anyway
            segments += [(full[len(prefix) :], True), ("", True)]
            done = len(full)
        else:
            segments.append((full[len(prefix) : end + len(eot)], True))
            done = end + len(eot)
    return segments


def full_so_far(segments: list[tuple[str, bool]]) -> str:
    return "".join(text for text, _ in segments)
