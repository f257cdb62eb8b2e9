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

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

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
    return tokenizer


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings this tokenizer reads as special tokens wherever they stand in a text (EOS, pad, role markers):
    data must not spell them (`data.load_sft(..., control_tokens)` and friends refuse it)."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(t for t in tokens if t)


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], chat: bool = True) -> str:
    """The text a model is conditioned on: the chat template for chat models, the raw prompt for a base LM.
    `prompt` is a user turn's text or a whole conversation (chat messages up to the user's last turn)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if chat and tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise UsageError(
            f"a conversation prompt ({len(prompt)} turns) needs a tokenizer with a chat template "
            f"({tokenizer.name_or_path} has none): give plain-text prompts, or add a chat_template to the tokenizer"
        )
    return prompt


def format_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, str]:
    """Split a conversation into (context, final assistant answer + EOS) text for SFT on the last turn."""
    assert messages and messages[-1]["role"] == "assistant"
    if not tokenizer.chat_template:
        raise UsageError(
            f"{{messages}} rows need a tokenizer with a chat template ({tokenizer.name_or_path} has none): "
            "give {prompt, completion} rows, or add a chat_template to the tokenizer"
        )
    context = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return context, messages[-1]["content"] + tokenizer.eos_token
