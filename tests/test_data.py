import json
from pathlib import Path

import pytest

from rlhfkit.data import (
    DataError,
    Loaded,
    Prompt,
    PromptCompletion,
    Ranked,
    load_preferences,
    load_pretrain,
    load_prompts,
    load_sft,
    read_records,
    write_jsonl,
)


def write_lines(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or raw strings (written as is: malformed and blank lines)."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- each format loads --------------------------------------------------------------------------------------


def test_pretrain_loads(tmp_path):
    rows = load_pretrain(
        write_lines(tmp_path / "corpus.jsonl", [{"text": "重庆有洪崖洞。"}, {"text": "北京有故宫。"}])
    )
    assert rows == ["重庆有洪崖洞。", "北京有故宫。"]
    assert isinstance(rows, Loaded) and rows.skipped_blank == 0


def test_sft_prompt_completion_loads(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [{"prompt": "我想去重庆玩", "completion": "洪崖洞", "id": 7}])
    assert load_sft(path) == [PromptCompletion("我想去重庆玩", "洪崖洞")]


def test_sft_messages_keeps_conversation(tmp_path):
    messages = [
        {"role": "system", "content": "你是导游"},
        user("去哪玩？"),
        assistant("重庆"),
        user("还有呢？"),
    ]
    messages.append(assistant("成都"))
    [row] = load_sft(write_lines(tmp_path / "sft.jsonl", [{"messages": messages}]))
    assert row == PromptCompletion(prompt="还有呢？", completion="成都", messages=messages)


def test_sft_conversational_prompt_completion(tmp_path):
    path = write_lines(
        tmp_path / "sft.jsonl", [{"prompt": [user("去哪玩？")], "completion": [assistant("重庆")]}]
    )
    [row] = load_sft(path)
    assert (row.prompt, row.completion, row.messages) == (
        "去哪玩？",
        "重庆",
        [user("去哪玩？"), assistant("重庆")],
    )


def test_kwise_ranking_becomes_ranks(tmp_path):
    path = write_lines(
        tmp_path / "rm.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}]
    )
    [item] = load_preferences(path)
    assert item == Ranked("p", ["a", "b", "c"], [2, 3, 1])
    assert sorted(item.pairs()) == [(0, 1), (2, 0), (2, 1)]


def test_identical_answers_may_tie(tmp_path):
    row = {"prompt": "p", "responses": ["a", "b", "a"], "ranks": [1, 2, 1]}
    [item] = load_preferences(write_lines(tmp_path / "rm.jsonl", [row]))
    assert item.pairs() == [(0, 1), (2, 1)]


def test_ties_give_no_pair(tmp_path):
    path = write_lines(
        tmp_path / "rm.jsonl", [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [1, 2, 2, 3]}]
    )
    [item] = load_preferences(path)
    assert item.ranks == [1, 2, 2, 3]
    assert item.pairs() == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]


def test_pairwise_is_k2(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    [item] = load_preferences(path)
    assert item == Ranked("p", ["good", "bad"], [1, 2])
    assert item.pairs() == [(0, 1)]


def test_trl_conversational_pairwise_implicit_prompt(tmp_path):
    shared = [{"role": "system", "content": "你是导游"}, user("重庆有什么好玩的？")]
    row = {"chosen": [*shared, assistant("洪崖洞、解放碑")], "rejected": [*shared, assistant("故宫")]}
    [item] = load_preferences(write_lines(tmp_path / "pairs.jsonl", [row]))
    assert item == Ranked("重庆有什么好玩的？", ["洪崖洞、解放碑", "故宫"], [1, 2], prompt_messages=shared)


def test_trl_conversational_pairwise_explicit_prompt(tmp_path):
    row = {"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}
    [item] = load_preferences(write_lines(tmp_path / "pairs.jsonl", [row]))
    assert (item.prompt, item.responses, item.ranks) == ("q", ["good", "bad"], [1, 2])


def test_prompts_keep_extra_fields(tmp_path):
    rows = [
        {"prompt": "我想去成都玩", "family": "travel"},
        {"messages": [user("给孩子起名"), assistant("泽")]},
    ]
    loaded = load_prompts(write_lines(tmp_path / "prompts.jsonl", rows))
    assert loaded[0] == Prompt("我想去成都玩", {"family": "travel"})
    assert loaded[1].prompt == "给孩子起名" and loaded[1].meta["messages"] == rows[1]["messages"]


def test_conversations_are_kept_whole_as_context(tmp_path):
    system = {"role": "system", "content": "你是导游"}
    chat = [system, user("重庆有什么好玩的？"), assistant("洪崖洞"), user("还有呢？"), assistant("解放碑")]
    [prompt] = load_prompts(write_lines(tmp_path / "prompts.jsonl", [{"messages": chat}]))
    assert prompt.prompt == "还有呢？" and prompt.context == chat[:4]  # up to the last user turn
    plain = Prompt("我想去成都玩")
    assert plain.context == "我想去成都玩"
    row = {"chosen": [*chat[:4], assistant("解放碑")], "rejected": [*chat[:4], assistant("故宫")]}
    [item] = load_preferences(write_lines(tmp_path / "pairs.jsonl", [row]))
    assert item.context == chat[:4]
    assert Ranked("q", ["a", "b"], [1, 2]).context == "q"


def test_blank_lines_are_counted_not_errors(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", ["", {"text": "a"}, "   ", {"text": "b"}, ""])
    rows = load_pretrain(path)
    assert rows == ["a", "b"] and rows.skipped_blank == 3
    assert rows.summary() == f"loaded 2 rows from {path}, skipped 3 blank lines"


def test_read_records_locations(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"text": "a"}, "", {"text": "b"}])
    blank: list[int] = []
    assert list(read_records(path, blank_lines=blank)) == [
        (f"{path}:1", {"text": "a"}),
        (f"{path}:3", {"text": "b"}),
    ]
    assert blank == [2]


def test_json_list_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]), encoding="utf-8")
    assert [p.prompt for p in load_prompts(path)] == ["a", "b"]


# --- files through `datasets` -------------------------------------------------------------------------------


def test_parquet_and_csv_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": "重庆", "chosen": "洪崖洞", "rejected": "故宫"},
        {"prompt": "北京", "chosen": "故宫", "rejected": "洪崖洞"},
    ]
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "pairs.parquet"))
    dataset.to_csv(str(tmp_path / "pairs.csv"), index=False)
    for name in ("pairs.parquet", "pairs.csv"):
        items = load_preferences(tmp_path / name)
        assert [(i.prompt, i.responses) for i in items] == [
            ("重庆", ["洪崖洞", "故宫"]),
            ("北京", ["故宫", "洪崖洞"]),
        ]


def test_save_to_disk_directory_and_row_location(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"text": "a"}, {"text": ""}]).save_to_disk(str(tmp_path / "corpus"))
    with pytest.raises(DataError) as info:
        load_pretrain(tmp_path / "corpus")
    assert str(info.value).startswith(f'{tmp_path / "corpus"}[row 1]: field "text": is empty')


def test_kwise_parquet_with_list_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2, 0]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rm.parquet"))
    assert load_preferences(tmp_path / "rm.parquet")[0].ranks == [3, 1, 2]


# --- bad input: DataError naming file, line and field -------------------------------------------------------

GOOD_RM = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]}

BAD_ROWS = [
    # (loader, bad row, field named, words in the message)
    (load_pretrain, {"txt": "a"}, "text", 'is missing (the row has fields "txt")'),
    (load_pretrain, {"text": 5}, "text", "expected a string, got an integer 5"),
    (load_pretrain, {"text": "  "}, "text", "is empty"),
    (load_sft, {"prompt": "p"}, "completion", "is missing"),
    (load_sft, {"prompt": "p", "completion": None}, "completion", 'is null (the row has fields "prompt")'),
    (
        load_sft,
        {"messages": [{"role": "bot", "content": "hi"}]},
        "messages[0].role",
        '"bot" is not a known role',
    ),
    (load_sft, {"messages": [user("q")]}, "messages", "the last turn is 'user', not 'assistant'"),
    (load_sft, {"messages": [assistant("a")]}, "messages", "has no user turn"),
    (load_sft, {"messages": [user("q"), {"role": "assistant"}]}, "messages[1].content", "is missing"),
    (load_sft, {"messages": "hi"}, "messages", "expected a list, got a string"),
    (
        load_preferences,
        {**GOOD_RM, "ranking": [0, 0, 2]},
        "ranking",
        "[0, 0, 2] is not a permutation of 0..2 (K=3",
    ),
    (load_preferences, {**GOOD_RM, "ranking": [0, 1]}, "ranking", "is not a permutation of 0..2"),
    (load_preferences, {**GOOD_RM, "ranking": ["0", "1", "2"]}, "ranking", "expected a list of integers"),
    (load_preferences, {"prompt": "p", "responses": ["a"], "ranking": [0]}, "responses", "K >= 2"),
    (load_preferences, {**GOOD_RM, "responses": ["a", "", "c"]}, "responses[1]", "is empty"),
    (load_preferences, {**GOOD_RM, "responses": ["a", None, "c"]}, "responses[1]", "is missing"),
    (load_preferences, {**GOOD_RM, "responses": "abc"}, "responses", "expected a list"),
    (load_preferences, {"prompt": "p", "responses": ["a", "b"]}, "ranking", "is missing"),
    (
        load_preferences,
        {"prompt": "p", "responses": ["a", "b"], "ranks": [2, 2]},
        "ranks",
        "ties every response",
    ),
    (
        load_preferences,
        {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2, 3]},
        "ranks",
        "3 entries for K=2",
    ),
    (load_preferences, {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}, "ranks", "below 1"),
    (
        load_preferences,
        {**GOOD_RM, "responses": ["a", "b", "a"]},
        "ranking",
        "responses 0 and 2 are the same answer but ranked 1 and 3",
    ),
    (
        load_preferences,
        {"prompt": "p", "responses": ["a", "b", "a"], "ranks": [1, 2, 2]},
        "ranks",
        "responses 0 and 2 are the same answer",
    ),
    (
        load_preferences,
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        "rejected",
        'identical to "chosen"',
    ),
    (load_preferences, {"prompt": "p", "chosen": "good"}, "rejected", "is missing"),
    (load_preferences, {"chosen": "good", "rejected": "bad"}, "prompt", "is missing"),
    (load_preferences, {"prompt": ["p"], "chosen": "a", "rejected": "b"}, "prompt[0]", "expected an object"),
    (
        load_preferences,
        {"chosen": [user("q1"), assistant("a")], "rejected": [user("q2"), assistant("b")]},
        "rejected",
        "does not share",
    ),
    (
        load_preferences,
        {**GOOD_RM, "chosen": "a", "rejected": "b"},
        "responses",
        'is given together with "chosen"/"rejected", so it is unclear which responses to rank. Keep one format: '
        '"responses" with "ranking" or "ranks" (K-wise), or "chosen" and "rejected"',
    ),
    (load_preferences, {"prompt": "p", "ranks": [1, 2], "chosen": "a"}, "ranks", 'together with "chosen"'),
    (
        load_preferences,
        {"prompt": "p", "chosen": "a", "rejected": "b", "ended": [True]},
        "ended",
        "[true] is not a list of 2 true/false values. Give one boolean per response, in the order "
        "[chosen, rejected]",
    ),
    (
        load_preferences,
        {"prompt": "p", "chosen": "a", "rejected": "b", "ended": "yes"},
        "ended",
        "is not a list of 2 true/false values",
    ),
    (
        load_preferences,
        {"prompt": "p", "chosen": "a", "rejected": "a", "ended": [True, True]},
        "rejected",
        'identical to "chosen"',
    ),
    (load_prompts, {"prompt": ""}, "prompt", "is empty"),
    (load_prompts, {"prompt": "q", "messages": [user("q2")]}, "messages", 'given together with "prompt"'),
    (load_prompts, {"prompt": "q", "messages": [assistant("x")]}, "messages", 'Keep one: "prompt"'),
    (
        load_sft,
        {"messages": [user("q"), assistant("a")], "prompt": "q2", "completion": "b"},
        "messages",
        'given together with "prompt"/"completion"',
    ),
    (load_prompts, {"prompt": None, "family": "x"}, "prompt", None),
]


@pytest.mark.parametrize(("loader", "row", "field", "words"), BAD_ROWS)
def test_bad_row_names_file_line_and_field(tmp_path, loader, row, field, words):
    good = {
        load_pretrain: {"text": "t"},
        load_sft: {"prompt": "p", "completion": "c"},
        load_prompts: {"prompt": "p"},
    }
    path = write_lines(tmp_path / "data.jsonl", [good.get(loader, GOOD_RM), "", row])
    with pytest.raises(DataError) as info:
        loader(path)
    message = str(info.value)
    if words is None:  # a row with no known format names its fields and the formats expected
        assert message.startswith(f'{path}:3: a row with fields "family" matches no prompt format')
        return
    assert message.startswith(f'{path}:3: field "{field}": ')
    assert words in message


def test_no_known_format_names_fields_and_formats(tmp_path):
    path = write_lines(tmp_path / "rm.jsonl", [{"question": "q", "answers": ["a", "b"]}])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    message = str(info.value)
    assert message.startswith(
        f'{path}:1: a row with fields "question", "answers" matches no preference format'
    )
    assert '{"prompt", "responses", "ranking"}' in message and '{"prompt", "chosen", "rejected"}' in message


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [{"text": "a"}, '{"text": "b",}'])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: malformed JSON: .*column"):
        load_pretrain(path)


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", ['["a"]'])
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: expected a JSON object .*got a list"):
        load_pretrain(path)


def test_empty_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError) as info:
        load_sft(path)
    assert str(info.value).startswith(f"{path}: no rows found, the file is empty (2 blank lines)")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "data.txt").write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type '\.txt'"):
        load_prompts(tmp_path / "data.txt")


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: not valid UTF-8"):
        load_pretrain(path)


def test_loaders_print_nothing(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "p"}]).to_parquet(str(tmp_path / "p.parquet"))
    capsys.readouterr()  # writing the parquet file may show a progress bar; loading must not
    load_prompts(tmp_path / "p.parquet")
    load_prompts(write_lines(tmp_path / "p.jsonl", [{"prompt": "p"}]))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --- writing ------------------------------------------------------------------------------------------------


def test_write_jsonl_round_trip_chinese(tmp_path):
    rows = [{"prompt": "我想去重庆玩，有哪些好玩的地点呢？", "completion": "洪崖洞、三峡博物馆"}]
    path = tmp_path / "new" / "dir" / "sft.jsonl"
    assert write_jsonl(path, rows) == 1
    assert "洪崖洞" in path.read_text(encoding="utf-8")  # written readable, not as \\u escapes
    assert [r.completion for r in load_sft(path)] == ["洪崖洞、三峡博物馆"]
    assert list(tmp_path.glob("new/dir/.*tmp")) == []


def test_write_jsonl_failure_keeps_old_file(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"text": "old"}])

    def broken():
        yield {"text": "new"}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert load_pretrain(path) == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_sampled_rankings_may_hold_an_empty_answer(tmp_path):
    # `rlhfkit label` writes "ended"; a model that emitted EOS at once gave an empty answer, which is ranked too.
    row = {"prompt": "p", "responses": ["a", ""], "ranking": [0, 1], "ended": [True, True]}
    path = write_lines(tmp_path / "sampled.jsonl", [row])
    (item,) = load_preferences(path)
    assert item.responses == ["a", ""] and item.ended == [True, True] and item.pairs() == [(0, 1)]


def test_ended_must_be_one_boolean_per_response(tmp_path):
    row = {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "ended": [True]}
    path = write_lines(tmp_path / "bad_ended.jsonl", [row])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert str(info.value).startswith(f'{path}:1: field "ended": [true] is not a list of 2 true/false values')


def test_pairwise_ended_is_chosen_then_rejected(tmp_path):
    # As in K-wise rows: the same text once ended and once cut off is two answers, and a sampled answer may be empty.
    rows = [
        {"prompt": "p", "chosen": "good", "rejected": "bad", "ended": [True, False]},
        {"prompt": "p", "chosen": "a", "rejected": "a", "ended": [True, False]},
        {"prompt": "p", "chosen": "", "rejected": "rambling", "ended": [True, False]},
    ]
    items = load_preferences(write_lines(tmp_path / "pairs.jsonl", rows))
    assert items[0] == Ranked("p", ["good", "bad"], [1, 2], ended=[True, False])
    assert (
        items[1].responses == ["a", "a"] and items[1].ended == [True, False] and items[1].pairs() == [(0, 1)]
    )
    assert items[2].responses == ["", "rambling"]
