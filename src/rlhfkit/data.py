"""Load and validate the data files of every stage.

Formats (one JSON object per line, UTF-8; TRL's conventions so users can bring existing data):

    pretrain     {"text": str}
    sft          {"prompt": str, "completion": str}
                 {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}
    preferences  {"prompt": str, "responses": [str x K], "ranking": [i_best, ..., i_worst]}
                 {"prompt": str, "responses": [str x K], "ranks": [int x K]}     1 = best, equal = tie
                 {"prompt": str, "chosen": str, "rejected": str}                 the K = 2 case
                 {"chosen": [messages], "rejected": [messages]}                   TRL conversational,
                                                                                  "prompt" optional
                 any of them + "ended": [bool x K], [chosen, rejected] for pairs  false = cut off before EOS
    prompts      {"prompt": str, ...}   or   {"messages": [...]}                  extra fields kept in `meta`
    responses    {"prompt": str, "responses": [str x K], "ended": [bool x K]?}     unranked, for people to rank

`.jsonl` / `.json` files are read here line by line; `.parquet`, `.csv`, `.tsv`, `.arrow` files and
directories written by `datasets.save_to_disk` go through the `datasets` library and hold the same columns.

Every loader checks every row and raises `DataError` on the first bad one. Its message names the place
(`file:line`, 1-based, for JSON lines; `file[row i]`, 0-based as in `dataset[i]`, otherwise), the field, what
was wrong and what to do:

    data/rm.jsonl:7: field "ranking": [0, 0, 2] is not a permutation of 0..2 (K=3 responses). List each ...

Blank lines are skipped, never an error, and counted in the returned `Loaded.skipped_blank`; no row is ever
dropped silently. Unknown extra fields are ignored (or, for prompts, kept).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rlhfkit.console import console
from rlhfkit.errors import UsageError
from rlhfkit.rundir import open_atomic

ROLES = ("system", "user", "assistant")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DATASETS_SUFFIXES = (".parquet", ".csv", ".tsv", ".arrow")

T = TypeVar("T")


class DataError(UsageError):
    """A problem in a user's data file; the message says where, what was wrong and what to do."""


@dataclass
class PromptCompletion:
    """One SFT demonstration. For chat rows `messages` is the whole conversation, `prompt` its last user turn
    and `completion` its final assistant turn (the only tokens the SFT loss is taken on)."""

    prompt: str
    completion: str
    messages: list[dict] | None = None


@dataclass
class Ranked:
    """One preference item: K responses to a prompt and the rank of each (1 = best, equal ranks = tie).
    `prompt_messages` keeps the conversation before the responses when the row was given as chat messages."""

    prompt: str
    responses: list[str]
    ranks: list[int]
    prompt_messages: list[dict] | None = None
    ended: list[bool] | None = None  # optional "ended" field: False = the response was cut off before EOS

    @property
    def context(self) -> str | list[dict]:
        """What the responses answer: the whole conversation when the row gave one, else the prompt text."""
        return self.prompt_messages or self.prompt

    def pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs over all C(K, 2) pairs of responses; a tie gives no pair."""
        pairs = []
        for i in range(len(self.ranks)):
            for j in range(i + 1, len(self.ranks)):
                if self.ranks[i] < self.ranks[j]:
                    pairs.append((i, j))
                elif self.ranks[j] < self.ranks[i]:
                    pairs.append((j, i))
        return pairs


@dataclass
class Prompt:
    """A prompt for RL or evaluation; `meta` holds the row's other fields (e.g. "family", "messages")."""

    prompt: str
    meta: dict = field(default_factory=dict)

    @property
    def context(self) -> str | list[dict]:
        """What the model answers: the conversation up to its last user turn when the row gave one (system
        prompt and earlier turns included), else the prompt text."""
        turns = self.meta.get("messages")
        if not turns:
            return self.prompt
        last_user = max(i for i, turn in enumerate(turns) if turn["role"] == "user")
        return turns[: last_user + 1]


class Loaded(list[T]):
    """The validated rows of one file, plus what was skipped on the way, for the caller to report."""

    def __init__(self, rows: Iterable[T], path: str, skipped_blank: int) -> None:
        super().__init__(rows)
        self.path = path
        self.skipped_blank = skipped_blank

    def summary(self) -> str:
        return f"loaded {len(self)} rows from {self.path}, skipped {self.skipped_blank} blank lines"


# ------------------------------------------------------------------------------------------------------------
# Public loaders


def load_pretrain(path: str | Path) -> Loaded[str]:
    """Pretraining documents from rows {"text": str}."""
    return _load(path, _parse_pretrain, '{"text": "..."}')


def load_sft(path: str | Path, control_tokens: Iterable[str] = ()) -> Loaded[PromptCompletion]:
    """SFT demonstrations from rows {"prompt", "completion"} or {"messages"}; text holding one of the tokenizer's
    `control_tokens` is refused (see `_refuse_control_tokens`)."""
    return _load(path, _parse_sft, '{"prompt": "...", "completion": "..."}', control_tokens)


def load_preferences(path: str | Path, control_tokens: Iterable[str] = ()) -> Loaded[Ranked]:
    """Preference items from K-wise rows ("ranking" or "ranks") or pairwise rows ("chosen", "rejected")."""
    return _load(
        path,
        _parse_preference,
        '{"prompt": "...", "responses": ["...", "..."], "ranking": [1, 0]}',
        control_tokens,
    )


def load_prompts(path: str | Path, control_tokens: Iterable[str] = ()) -> Loaded[Prompt]:
    """RL / evaluation prompts from rows {"prompt", ...} or {"messages"}. A conversation that goes on after its
    last user turn (an SFT row) is answered from that turn; how many rows lose turns so is said."""
    rows = _load(path, _parse_prompt, '{"prompt": "..."}', control_tokens)
    cut = [
        i
        for i, row in enumerate(rows)
        if row.meta.get("messages") and row.meta["messages"][-1]["role"] != "user"
    ]
    if cut:
        console.print(
            f"[data] {path}: {len(cut)} of {len(rows)} prompts go on after their last user turn (the first is row "
            f"{cut[0] + 1}): each is answered from that turn, the turns after it left out"
        )
    return rows


def load_responses(path: str | Path, control_tokens: Iterable[str] = ()) -> Loaded[Ranked]:
    """K answers to a prompt for people to rank (`rlhfkit label-server tasks add --kind rank --responses`): rows
    {"prompt", "responses"[, "ended"]}, checked as preference rows are, without a ranking (`ranks` all 1)."""
    return _load(path, _parse_responses, '{"prompt": "...", "responses": ["...", "..."]}', control_tokens)


def read_records(path: str | Path, *, blank_lines: list[int] | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) for every row of a data file, e.g. ("data/x.jsonl:12", {...}).

    If `blank_lines` is given, the 1-based numbers of the blank lines skipped are appended to it.
    """
    name = str(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{name}: file not found. Check the path (relative paths start at {os.getcwd()}).")
    if path.is_dir() or suffix in DATASETS_SUFFIXES:
        yield from _read_with_datasets(path, name)
    elif suffix == ".json" and _starts_with(path, "["):
        yield from _read_json_array(path, name)
    elif suffix in JSON_SUFFIXES:
        yield from _read_json_lines(path, name, blank_lines)
    else:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}. Use JSON lines "
            f"({', '.join(JSON_SUFFIXES)}), {', '.join(DATASETS_SUFFIXES)}, or a directory written by "
            "datasets.save_to_disk."
        )


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept readable) and return how many.

    Atomic: the rows go to a temporary file next to `path`, flushed to disk and renamed over it at the end
    (`rundir.open_atomic`), so a reader never sees half a file, even after a kill. Parent directories are created.
    """
    count = 0
    with open_atomic(path) as f:
        for record in records:
            if not isinstance(record, dict):
                raise TypeError(f"write_jsonl expects dicts, got {type(record).__name__}")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# ------------------------------------------------------------------------------------------------------------
# Reading files


def _load(
    path: str | Path, parse_row: Callable[[str, dict], T], example: str, control_tokens: Iterable[str] = ()
) -> Loaded[T]:
    blank_lines: list[int] = []
    tokens = sorted(set(control_tokens), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
    rows = []
    for location, record in read_records(path, blank_lines=blank_lines):
        rows.append(parse_row(location, record))
        if pattern is not None:
            _refuse_control_tokens(location, record, pattern)
    if not rows:
        blanks = f" ({len(blank_lines)} blank lines)" if blank_lines else ""
        raise DataError(
            f"{path}: no rows found, the file is empty{blanks}. "
            f"Write one JSON object per line, e.g. {example}."
        )
    return Loaded(rows, str(path), len(blank_lines))


def _read_json_lines(path: Path, name: str, blank_lines: list[int] | None) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            location = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{location}: not valid UTF-8 ({e.reason} at byte {e.start}). Save the file as UTF-8."
                ) from None
            if not line.strip():
                if blank_lines is not None:
                    blank_lines.append(lineno)
                continue
            try:
                record = json.loads(line.rstrip())  # so the column of an error is on this line
            except json.JSONDecodeError as e:
                hint = (
                    " A .json file must hold one JSON list of objects, or one object per line."
                    if path.suffix.lower() == ".json"
                    else ""
                )
                raise DataError(
                    f"{location}: malformed JSON: {e.msg} (column {e.colno}). "
                    f"Each line must be one complete JSON object.{hint}"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{location}: expected a JSON object {{...}}, got {_kind(record)}. "
                    "Write one object per line."
                )
            yield location, record


def _read_json_array(path: Path, name: str) -> Iterator[tuple[str, dict]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}: not valid UTF-8 ({e.reason} at byte {e.start}). Save the file as UTF-8."
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{name}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno}). Fix the JSON list."
        ) from None
    for i, record in enumerate(rows):
        if not isinstance(record, dict):
            raise DataError(
                f"{name}[row {i}]: expected a JSON object {{...}}, got {_kind(record)}. "
                "The list must hold objects."
            )
        yield f"{name}[row {i}]", record


def _read_with_datasets(path: Path, name: str) -> Iterator[tuple[str, dict]]:
    import datasets  # imported here: heavy, and only these formats need it

    progress_was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # loading prints nothing on success
    try:
        dataset = _open_dataset(datasets, path, name)
    except DataError:
        raise
    except Exception as e:  # whatever the file is wrong with, the user needs the file named
        raise DataError(
            f"{name}: could not be read by `datasets` ({type(e).__name__}: {e}). Check the file format."
        ) from e
    finally:
        if not progress_was_disabled:
            datasets.enable_progress_bars()
    for i, row in enumerate(dataset):
        yield f"{name}[row {i}]", row


def _open_dataset(datasets: Any, path: Path, name: str) -> Any:
    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if len(dataset) != 1:
                raise DataError(
                    f"{name}: holds the splits {list(dataset)}. Pass one split's directory, "
                    f"e.g. {path / next(iter(dataset))}."
                )
            dataset = next(iter(dataset.values()))
        return dataset
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if suffix == ".csv":
        return datasets.Dataset.from_csv(str(path))
    if suffix == ".tsv":
        return datasets.Dataset.from_csv(str(path), sep="\t")
    return datasets.Dataset.from_file(str(path))  # .arrow, as written by datasets


def _starts_with(path: Path, char: str) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith(char)
    return False


# ------------------------------------------------------------------------------------------------------------
# One row of each format


def _parse_pretrain(location: str, record: dict) -> str:
    return _text(location, "text", _field(location, record, "text"))


def _parse_sft(location: str, record: dict) -> PromptCompletion:
    _alone(
        location,
        record,
        "messages",
        ["prompt", "completion"],
        ", so it is unclear which conversation to learn",
        'Keep one: "messages" (the whole conversation) or "prompt" + "completion"',
    )
    if _has(record, "messages"):
        turns = _messages(location, "messages", record["messages"])
        prompt = _last_user(location, "messages", turns)
        if turns[-1]["role"] != "assistant":
            raise _error(
                location,
                "messages",
                f"the last turn is {turns[-1]['role']!r}, not 'assistant'",
                "End each conversation with the assistant answer to learn",
            )
        return PromptCompletion(prompt, turns[-1]["content"], messages=turns)
    if not _has(record, "prompt") and not _has(record, "completion"):
        raise _no_format(location, record, "SFT", ['{"prompt", "completion"}', '{"messages"}'])
    prompt = _field(location, record, "prompt")
    completion = _field(location, record, "completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL conversational prompt-completion
        prompt_turns = _turns(location, "prompt", prompt, role="user")
        completion_turns = _turns(location, "completion", completion, role="assistant")
        last = (prompt_turns[-1]["role"], f"prompt[{len(prompt_turns) - 1}]")
        _check_order(location, "completion", completion_turns, 0, before=last)
        if completion_turns[-1]["role"] != "assistant":
            raise _error(
                location,
                "completion",
                "does not end with an assistant turn",
                "End it with the answer to learn",
            )
        return PromptCompletion(
            _last_user(location, "prompt", prompt_turns),
            completion_turns[-1]["content"],
            messages=prompt_turns + completion_turns,
        )
    return PromptCompletion(_text(location, "prompt", prompt), _text(location, "completion", completion))


def _parse_preference(location: str, record: dict) -> Ranked:
    kwise = [key for key in ("responses", "ranking", "ranks") if _has(record, key)]
    if kwise:
        _alone(
            location,
            record,
            kwise[0],
            ["chosen", "rejected"],
            ", so it is unclear which responses to rank",
            'Keep one format: "responses" with "ranking" or "ranks" (K-wise), or "chosen" and "rejected"',
        )
        return _parse_kwise(location, record)
    if _has(record, "chosen") or _has(record, "rejected"):
        return _parse_pairwise(location, record)
    raise _no_format(
        location,
        record,
        "preference",
        [
            '{"prompt", "responses", "ranking"}',
            '{"prompt", "responses", "ranks"}',
            '{"prompt", "chosen", "rejected"}',
            '{"chosen", "rejected"} as message lists',
        ],
    )


def _parse_kwise(location: str, record: dict) -> Ranked:
    prompt, prompt_turns = _prompt(location, record)
    responses = _list(location, "responses", _field(location, record, "responses"))
    k = len(responses)
    if k < 2:
        raise _error(
            location,
            "responses",
            f"has {k} response(s), a ranking needs K >= 2",
            "Give at least two responses to compare",
        )
    # Sampled data (rows that carry "ended", as `rlhfkit label` writes) may hold an empty answer: a model that
    # stopped at once really said nothing, and labelers rank that too. Hand-written rows may not.
    sampled = _has(record, "ended")
    responses = [_text(location, f"responses[{i}]", r, allow_empty=sampled) for i, r in enumerate(responses)]

    _alone(
        location,
        record,
        "ranks",
        ["ranking"],
        "",
        'Keep one of "ranking" (indices, best first) or "ranks" (1 = best)',
    )
    if _has(record, "ranking"):
        ranking = _ints(location, "ranking", record["ranking"])
        if sorted(ranking) != list(range(k)):
            raise _error(
                location,
                "ranking",
                f"{_show(ranking)} is not a permutation of 0..{k - 1} (K={k} responses)",
                'List each index of "responses" exactly once, best first; for ties use "ranks" instead',
            )
        ranks = [0] * k
        for position, index in enumerate(ranking):
            ranks[index] = position + 1
    elif _has(record, "ranks"):
        ranks = _ints(location, "ranks", record["ranks"])
        if len(ranks) != k:
            raise _error(
                location,
                "ranks",
                f"has {len(ranks)} entries for K={k} responses",
                "Give one rank per response (1 = best, equal = tie)",
            )
        if min(ranks) < 1 or max(ranks) > k:
            raise _error(
                location,
                "ranks",
                f"{_show(ranks)} has a rank {'below 1' if min(ranks) < 1 else f'above K={k}'}",
                f"Ranks run from 1 (the best response) to at most K={k}, equal for a tie",
            )
        if len(set(ranks)) < 2:
            raise _error(
                location,
                "ranks",
                f"{_show(ranks)} ties every response, so there is no preference to learn",
                "Give at least two different ranks, or remove the row",
            )
    else:
        raise _error(
            location,
            "ranking",
            "is missing",
            'Add "ranking": [i_best, ..., i_worst] (indices into "responses") '
            'or "ranks": [1, 2, 2, ...] (1 = best, equal = tie)',
        )
    ended = _ended(location, record, k)
    # The same answer twice must tie, as chosen == rejected is refused.
    first: dict[tuple[str, bool], int] = {}  # (answer, ended) -> the index it first appears at
    for i, key in enumerate(zip(responses, ended or [True] * k)):
        j = first.setdefault(key, i)
        if ranks[j] != ranks[i]:
            raise _error(
                location,
                "ranking" if _has(record, "ranking") else "ranks",
                f"responses {j} and {i} are the same answer but ranked {ranks[j]} and {ranks[i]}",
                'Give identical answers the same rank (a tie, with "ranks"), or keep only one of them',
            )
    return Ranked(prompt, responses, ranks, prompt_messages=prompt_turns, ended=ended)


def _parse_responses(location: str, record: dict) -> Ranked:
    prompt, prompt_turns = _prompt(location, record)
    responses = _list(location, "responses", _field(location, record, "responses"))
    if len(responses) < 2:
        raise _error(
            location,
            "responses",
            f"has {len(responses)} response(s), a ranking needs K >= 2",
            "Give at least two responses to rank",
        )
    sampled = _has(record, "ended")  # as in K-wise rows: sampled answers may be empty
    texts = [_text(location, f"responses[{i}]", r, allow_empty=sampled) for i, r in enumerate(responses)]
    ended = _ended(location, record, len(texts))
    return Ranked(prompt, texts, [1] * len(texts), prompt_messages=prompt_turns, ended=ended)


def _parse_pairwise(location: str, record: dict) -> Ranked:
    chosen_value = _field(location, record, "chosen")
    rejected_value = _field(location, record, "rejected")
    sampled = _has(record, "ended")  # as in K-wise rows: sampled answers may be empty
    chosen = _response(location, "chosen", chosen_value, allow_empty=sampled)
    rejected = _response(location, "rejected", rejected_value, allow_empty=sampled)
    ended = _ended(location, record, 2, order=", in the order [chosen, rejected]")

    if _has(record, "prompt"):
        prompt, prompt_turns = _prompt(location, record)
    elif isinstance(chosen_value, list) and isinstance(rejected_value, list):
        # TRL's implicit prompt: both conversations share every turn before the final assistant answer
        prompt_turns = chosen_value[:-1]
        if rejected_value[:-1] != prompt_turns:
            raise _error(
                location,
                "rejected",
                'does not share the turns before its last one with "chosen"',
                'Make both conversations identical up to the final assistant answer, or add a "prompt" field',
            )
        prompt = _last_user(location, "chosen", prompt_turns)
    else:
        raise _error(
            location,
            "prompt",
            f"is missing (the row has {_fields(record)})",
            'Add "prompt", or give "chosen" and "rejected" as message lists '
            "that share the conversation before the answer",
        )
    # As in K-wise rows, the same text once ended and once cut off is two different answers.
    if chosen == rejected and (ended is None or ended[0] == ended[1]):
        raise _error(
            location,
            "rejected",
            'is identical to "chosen"',
            "A preference needs two different responses; fix or remove the row",
        )
    return Ranked(prompt, [chosen, rejected], [1, 2], prompt_messages=prompt_turns, ended=ended)


def _parse_prompt(location: str, record: dict) -> Prompt:
    meta = {key: value for key, value in record.items() if key != "prompt"}
    _alone(
        location,
        record,
        "messages",
        ["prompt"],
        ", so it is unclear which the model should answer",
        'Keep one: "prompt" (text, or a list of turns) or "messages" (the conversation to answer)',
    )
    if _has(record, "prompt"):
        prompt, prompt_turns = _prompt(location, record, answered_after=True)
        if prompt_turns is not None:
            meta.setdefault("messages", prompt_turns)
        return Prompt(prompt, meta)
    if _has(record, "messages"):
        turns = _messages(location, "messages", record["messages"])
        return Prompt(_last_user(location, "messages", turns), meta)
    raise _no_format(location, record, "prompt", ['{"prompt"}', '{"messages"}'])


# ------------------------------------------------------------------------------------------------------------
# Field checks; each returns the checked value or raises DataError

TEXT_FIELDS = ("text", "prompt", "completion", "messages", "responses", "chosen", "rejected")


def _refuse_control_tokens(location: str, record: dict, pattern: re.Pattern) -> None:
    """Text that spells one of the tokenizer's control tokens (`<|endoftext|>`, `<|assistant|>`, `</s>`) would be
    tokenized as that token: an answer that ends there, a turn of another speaker. Data must not hold them."""
    for name, text in _texts(record):
        found = pattern.search(text)
        if found:
            raise _error(
                location,
                name,
                f"holds {found.group()!r} (at character {found.start()}), a control token of the tokenizer: it "
                "would be read as that token, not as text (an answer that ends there, a turn of another speaker)",
                "Remove it from the data, or write it another way (e.g. with a space inside)",
            )


def _texts(record: dict) -> Iterator[tuple[str, str]]:
    """(field, text) of every text a row's known fields hold: strings, lists of them, chat turns' contents."""

    def walk(name: str, value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(f"{name}[{i}]", item)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            yield f"{name}.content", value["content"]

    for key in TEXT_FIELDS:
        if _has(record, key):
            yield from walk(key, record[key])


def _error(location: str, name: str, problem: str, fix: str) -> DataError:
    return DataError(f'{location}: field "{name}": {problem}. {fix}.')


def _has(record: dict, key: str) -> bool:
    # null counts as absent: columnar files (parquet, csv) fill a column a row does not use with null
    return record.get(key) is not None


def _alone(location: str, record: dict, key: str, others: list[str], why: str, fix: str) -> None:
    """Refuse `key` given together with any of `others`: one of the two would be silently ignored."""
    if _has(record, key) and any(_has(record, other) for other in others):
        together = "/".join(f'"{other}"' for other in others)
        raise _error(location, key, f"is given together with {together}{why}", fix)


def _field(location: str, record: dict, key: str) -> Any:
    if not _has(record, key):
        problem = "is null" if key in record else "is missing"
        raise _error(location, key, f"{problem} (the row has {_fields(record)})", f'Give "{key}" in the row')
    return record[key]


def _text(location: str, name: str, value: Any, allow_empty: bool = False) -> str:
    if value is None:
        raise _error(location, name, "is missing or null", "Give the text as a non-empty string")
    if not isinstance(value, str):
        raise _error(
            location, name, f"expected a string, got {_describe(value)}", "Give the text as a JSON string"
        )
    if not value.strip() and not allow_empty:
        raise _error(location, name, "is empty", "Give non-blank text, or remove the row")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can spell a lone surrogate ("\\ud800"); no tokenizer takes one
        raise _error(
            location,
            name,
            f"holds {value[e.start]!r} at character {e.start}, half of a UTF-16 surrogate pair: not text",
            'Write the character itself (or its full pair, e.g. "\\ud83d\\ude00"), or remove it',
        ) from None
    if (
        "\x00" in value and not allow_empty
    ):  # sampled answers (allow_empty) may hold one: a byte-level model's
        raise _error(
            location,
            name,
            f"holds a NUL character (\\u0000) at character {value.index(chr(0))}, a sign of binary or damaged text",
            "Remove it (and check how the file was made)",
        )
    return value


def _list(location: str, name: str, value: Any) -> list:
    if not isinstance(value, list):
        raise _error(
            location, name, f"expected a list, got {_describe(value)}", "Give it as a JSON list [...]"
        )
    return value


def _ints(location: str, name: str, value: Any) -> list[int]:
    values = _list(location, name, value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _error(
            location, name, f"expected a list of integers, got {_show(values)}", "Use whole numbers only"
        )
    return values


def _messages(location: str, name: str, value: Any) -> list[dict]:
    turns = _list(location, name, value)
    if not turns:
        raise _error(
            location, name, "is an empty list", 'Give at least one {"role": ..., "content": ...} turn'
        )
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise _error(
                location,
                where,
                f"expected an object, got {_describe(turn)}",
                'Write each turn as {"role": ..., "content": ...}',
            )
        role = turn.get("role")
        if role not in ROLES:
            problem = "is missing" if role is None else f"{_show(role)} is not a known role"
            raise _error(location, f"{where}.role", problem, f"Use one of {', '.join(ROLES)}")
        _text(location, f"{where}.content", turn.get("content"))
        _check_order(location, name, turns, i)
    return turns


def _check_order(
    location: str, name: str, turns: list[dict], i: int, before: tuple[str, str] | None = None
) -> None:
    """A system prompt opens a conversation; after it, user and assistant take turns (chat templates assume so,
    and some refuse anything else). `before` is (role, field) of the turn before turns[0] when they continue
    another field's turns."""
    role = turns[i]["role"]
    if i:
        before = (turns[i - 1]["role"], f"{name}[{i - 1}]")
    if role == "system" and before:
        raise _error(
            location,
            f"{name}[{i}].role",
            '"system" is not the first turn',
            "A system prompt opens the conversation: move it to the start, or give it as a user turn",
        )
    if before and role == before[0]:
        raise _error(
            location,
            f"{name}[{i}].role",
            f"{_show(role)} follows another {_show(role)} turn ({before[1]})",
            "User and assistant turns must alternate: merge the two turns into one",
        )


def _turns(location: str, name: str, value: Any, role: str) -> list[dict]:
    """A field that is either plain text (one turn of `role`) or a list of chat turns."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(location, name, value)}]
    return _messages(location, name, value)


def _last_user(location: str, name: str, turns: list[dict]) -> str:
    for turn in reversed(turns):
        if turn["role"] == "user":
            return turn["content"]
    raise _error(location, name, "has no user turn", "Include the user's prompt as a turn with role 'user'")


def _prompt(location: str, record: dict, answered_after: bool = False) -> tuple[str, list[dict] | None]:
    """The "prompt" field as text, plus its turns when it was given as chat messages. Turns after the last user
    turn are refused (responses answer the prompt), unless `answered_after`: a prompts file's row is answered
    from its last user turn (`Prompt.context`), and `load_prompts` says how many rows lose turns that way."""
    value = _field(location, record, "prompt")
    if isinstance(value, list):
        turns = _messages(location, "prompt", value)
        if not answered_after:
            _ends_with_user(location, "prompt", turns)
        return _last_user(location, "prompt", turns), turns
    return _text(location, "prompt", value), None


def _ends_with_user(location: str, name: str, turns: list[dict]) -> None:
    """What a model answers ends with the user's turn; a trailing assistant turn would be dropped or answered."""
    if turns[-1]["role"] != "user":
        raise _error(
            location,
            f"{name}[{len(turns) - 1}].role",
            f"the prompt's last turn is {_show(turns[-1]['role'])}'s, not the user's",
            "End a prompt with the user turn to answer; a conversation ending with the answer is SFT data "
            "(rlhfkit sft --data)",
        )


def _ended(location: str, record: dict, k: int, order: str = "") -> list[bool] | None:
    """The optional "ended" field: one boolean per response, False = the response was cut off before EOS."""
    if not _has(record, "ended"):
        return None
    ended = record["ended"]
    if not isinstance(ended, list) or len(ended) != k or not all(isinstance(e, bool) for e in ended):
        raise _error(
            location,
            "ended",
            f"{_show(ended)} is not a list of {k} true/false values",
            f"Give one boolean per response{order} (false = the response was cut off), or leave the field out",
        )
    return ended


def _response(location: str, name: str, value: Any, allow_empty: bool = False) -> str:
    """A response given as text or, TRL-style, as a conversation whose last turn is the assistant's answer."""
    if isinstance(value, list):
        turns = _messages(location, name, value)
        if turns[-1]["role"] != "assistant":
            raise _error(
                location,
                name,
                f"the last turn is {turns[-1]['role']!r}, not 'assistant'",
                "End it with the answer being ranked",
            )
        return turns[-1]["content"]
    return _text(location, name, value, allow_empty)


def _no_format(location: str, record: dict, kind: str, formats: list[str]) -> DataError:
    return DataError(
        f"{location}: a row with {_fields(record)} matches no {kind} format. "
        f"Expected the fields {' or '.join(formats)} (extra fields are fine)."
    )


def _fields(record: dict) -> str:
    names = [key for key, value in record.items() if value is not None]
    return "fields " + ", ".join(f'"{key}"' for key in names) if names else "no fields"


def _kind(value: Any) -> str:
    kinds = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    return "null" if value is None else f"{_kind(value)} {_show(value)}"


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
