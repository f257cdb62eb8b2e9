"""Tiny checkpoints as a practitioner brings them, made with plain transformers and `tokenizers` (no downloads):
GPT-2 (one special token, no pad), Qwen2 (ChatML, pad = EOS = <|endoftext|>, turns end with <|im_end|>) and Llama
(an [INST] template that refuses a system turn, <s>/</s>/<unk>, no pad). Shared by the tests of issue #23."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Mistral's: no system role, a space before each answer and </s> after it
INST = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Hello, how are you today? I am fine, thank you.",
    "Tell me about the weather in Paris. It is sunny and warm, with a light breeze from the river.",
    "What is two plus two? Two plus two is four. What is three times three? It is nine.",
] * 20


def bpe_tokenizer(specials: list[str], **roles) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXTS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False, **roles)


def gpt2_tokenizer():
    return bpe_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def qwen2_tokenizer():
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.bos_token = None
    return tokenizer


def llama_tokenizer():
    return bpe_tokenizer(["<unk>", "<s>", "</s>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build(kind: str, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny `kind` ("gpt2", "qwen2", "llama") checkpoint with its tokenizer and chat template in `out`."""
    tokenizer = {"gpt2": gpt2_tokenizer, "qwen2": qwen2_tokenizer, "llama": llama_tokenizer}[kind]()
    tokenizer.chat_template = INST if kind == "llama" else CHATML
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    if kind == "gpt2":
        config = GPT2Config(
            n_layer=1, n_embd=32, n_head=2, n_positions=256, bos_token_id=tokenizer.eos_token_id, **common
        )
    else:
        cls = Qwen2Config if kind == "qwen2" else LlamaConfig
        config = cls(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=256,
            tie_word_embeddings=kind == "qwen2",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **common,
        )
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


KINDS = ("gpt2", "qwen2", "llama")
