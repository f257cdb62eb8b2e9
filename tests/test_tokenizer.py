import copy

import pytest
from transformers import AutoTokenizer

from rlhfkit.tokenizer import (
    ASSISTANT,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    SYSTEM,
    USER,
    conversation_segments,
    format_prompt,
    load_tokenizer,
    train_tokenizer,
)
from rlhfkit.world import pretrain_corpus

# Seen in training (the world's corpus is Chinese) and unseen: rare CJK, an astral-plane character, emoji,
# full- and half-width punctuation, Latin, digits, whitespace. Byte-level BPE must round-trip all of it.
TEXTS = [
    "我想去重庆玩，有哪些好玩的地点呢？",
    "「龘靐齉」：罕见字、生僻字；𠀀𪚥也行！",
    "《论语》曰：“学而时习之，不亦说乎？”……",
    "emoji 😀🚀 and ASCII: x=1, y=2.5; 100%",
    "两个空格  制表\t换行\n结束。",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(pretrain_corpus(n_docs=200), vocab_size=400)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips_chinese_and_unseen_characters(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None  # byte-level: nothing is ever unknown
    assert tokenizer.decode(ids) == text


def test_bpe_merges_frequent_chinese(tokenizer):
    """A trained vocabulary, not just the 256 bytes: a common phrase takes fewer tokens than its UTF-8 bytes."""
    text = "重庆有洪崖洞。"
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode("utf-8"))
    assert len(tokenizer) <= 400


def test_saved_dir_loads_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
    assert (loaded.eos_token, loaded.pad_token) == (EOS, PAD)
    assert loaded.chat_template == tokenizer.chat_template
    assert format_prompt(loaded, "你好") == format_prompt(tokenizer, "你好")


def test_load_tokenizer_keeps_eos_and_pad(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.eos_token_id == tokenizer.convert_tokens_to_ids(EOS)
    assert loaded.pad_token_id == tokenizer.convert_tokens_to_ids(PAD)
    assert loaded.pad_token_id != loaded.eos_token_id


def test_chat_template(tokenizer):
    prompt = "我想去重庆玩，有哪些好玩的地点呢？"
    assert format_prompt(tokenizer, prompt) == f"{USER}{prompt}{ASSISTANT}"
    assert format_prompt(tokenizer, prompt, chat=False) == prompt
    conversation = [
        {"role": "system", "content": "你是导游"},
        {"role": "user", "content": "去哪玩？"},
        {"role": "assistant", "content": "重庆。"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == f"{SYSTEM}你是导游{USER}去哪玩？{ASSISTANT}重庆。{EOS}"


def test_a_conversation_splits_into_context_and_every_answer(tokenizer):
    messages = [
        {"role": "user", "content": "去哪玩？"},
        {"role": "assistant", "content": "重庆。"},
        {"role": "user", "content": "还有呢？"},
        {"role": "assistant", "content": "成都。"},
    ]
    assert conversation_segments(tokenizer, messages) == [
        (f"{USER}去哪玩？{ASSISTANT}", False),
        (f"重庆。{EOS}", True),
        (f"{USER}还有呢？{ASSISTANT}", False),
        (f"成都。{EOS}", True),
    ]


def test_a_conversation_prompt_is_formatted_whole(tokenizer):
    turns = [{"role": "system", "content": "你是导游"}, {"role": "user", "content": "去哪玩？"}]
    assert format_prompt(tokenizer, turns) == f"{SYSTEM}你是导游{USER}去哪玩？{ASSISTANT}"
    assert format_prompt(tokenizer, turns[1:]) == format_prompt(tokenizer, "去哪玩？")


def test_without_a_chat_template_conversations_say_what_to_do(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert format_prompt(plain, "去哪玩？") == "去哪玩？"  # a base LM is conditioned on the raw prompt
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        format_prompt(plain, [{"role": "user", "content": "去哪玩？"}])
    with pytest.raises(ValueError, match=r"\{messages\} rows need a tokenizer with a chat template"):
        conversation_segments(
            plain, [{"role": "user", "content": "去哪玩？"}, {"role": "assistant", "content": "重庆。"}]
        )


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_tokens_are_single_ids(tokenizer, token):
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    # ... also inside text, so a chat-formatted prompt carries each role marker as one token
    ids = tokenizer(f"你好{token}再见", add_special_tokens=False)["input_ids"]
    assert ids.count(token_id) == 1


def test_special_tokens_are_distinct(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert all(i < len(tokenizer) for i in ids)


def test_decode_skips_special_tokens(tokenizer):
    ids = tokenizer(format_prompt(tokenizer, "你好") + "重庆。" + EOS, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "你好重庆。"
