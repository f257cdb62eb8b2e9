"""The bad-input corpus: malformed input to every stage, each case run through `rlhfkit.cli.main` as a user would.

Every case asserts the exit code (2: the user's input), that the output is one `error:` line naming the place —
file:line and field for data, the setting with its flag and value for settings, the path for model and run
directories — and that no traceback is printed. The cases at the end are input that is right to accept, with a
one-line notice of what was done (exit 0). Add a case here for every bug of this kind found later.

Most cases fail in validation before any model loads; those that need one share the session's tiny models
(conftest.py). Cases by stage (`test_the_table_counts_the_cases` keeps this table current):

| stage | cases |
|---|---|
| pretrain | 35 |
| sft | 36 |
| label | 12 |
| reward | 30 |
| ppo | 25 |
| dpo | 8 |
| eval | 15 |
| generate / score | 8 |
| pipeline | 19 |
| world export | 2 |
| **all** | **190** |
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import console_text
from rlhfkit.cli import main


@dataclass
class Case:
    stage: str  # the row of the table above
    name: str
    argv: list[str]  # {tmp}: the case's directory; {gpt} {sft} {rm}: the session's tiny models
    expect: list[str]  # in the one-line message (placeholders as in argv)
    files: dict[str, object] = field(default_factory=dict)  # path in {tmp}: rows (list), text (str) or bytes
    copies: dict[str, str] = field(default_factory=dict)  # path in {tmp}: a copy of this tiny model first
    code: int = 2

    @property
    def id(self) -> str:
        return f"{self.stage}: {self.name}"


def rows(*items) -> list:
    return list(items)


U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731
GOOD_SFT = {"prompt": "去哪玩？", "completion": "重庆。"}
GOOD_PREF = {"prompt": "去哪玩？", "responses": ["重庆有洪崖洞。", "不知道"], "ranking": [0, 1]}


def flag_case(stage: str, argv: list[str], setting: str, shown: str, flag: str, name: str = "") -> Case:
    """A setting out of its range or choices: the message names the setting, its value and its flag."""
    command = argv if stage == "generate / score" else [stage, *argv]
    return Case(stage, name or " ".join(argv), command, [f"{setting} = {shown}", flag])


def data_case(stage: str, name: str, argv: list[str], file: str, content, expect: list[str], **kw) -> Case:
    return Case(stage, name, argv, expect, files={file: content}, **kw)


# ---------------------------------------------------------------------------------------------------------------
# pretrain

PRETRAIN_DATA = ["pretrain", "--data", "{tmp}/t.jsonl", "--out", "{tmp}/o", "--max-steps", "1"]


def pretrain_data(name: str, content, expect: list[str], file: str = "t.jsonl") -> Case:
    argv = [*PRETRAIN_DATA]
    argv[2] = "{tmp}/" + file
    return data_case("pretrain", name, argv, file, content, expect)


CASES = [
    *(
        flag_case("pretrain", argv, setting, shown, flag)
        for argv, setting, shown, flag in [
            (["--max-steps", "0"], "max_steps", "0", "--max-steps"),
            (["--vocab-size", "16"], "vocab_size", "16", "--vocab-size"),
            (["--batch-size", "0"], "batch_size", "0", "--batch-size"),
            (["--lr", "0"], "lr", "0.0", "--lr"),
            (["--lr=-1e-3"], "lr", "-0.001", "--lr"),
            (["--grad-accum", "0"], "grad_accum", "0", "--grad-accum"),
            (["--max-len", "1"], "max_len", "1", "--max-len"),
            (["--seed", "-1"], "seed", "-1", "--seed"),
            (["--seed", str(2**40)], "seed", str(2**40), "--seed"),
            (["--mixed-precision", "fp8"], "mixed_precision", "'fp8'", "--mixed-precision"),
            (["--warmup-steps", "-1"], "warmup_steps", "-1", "--warmup-steps"),
            (["--weight-decay", "-0.1"], "weight_decay", "-0.1", "--weight-decay"),
            (["--world-docs", "0"], "world_docs", "0", "--world-docs"),
            (["--save-every", "-5"], "save_every", "-5", "--save-every"),
            (["--log-every", "0"], "log_every", "0", "--log-every"),
            (["--num-layers", "0"], "num_layers", "0", "--num-layers"),
        ]
    ),
    Case(
        "pretrain",
        "--num-heads that does not divide --hidden-size",
        ["pretrain", "--hidden-size", "64", "--num-heads", "3", "--out", "{tmp}/o"],
        ["hidden_size = 64", "num_heads = 3", "--num-heads"],
    ),
    Case(
        "pretrain",
        "an odd head size",
        ["pretrain", "--hidden-size", "6", "--num-heads", "2", "--out", "{tmp}/o"],
        ["hidden_size / num_heads = 3 is odd", "--hidden-size 6", "--num-heads 2"],
    ),
    Case(
        "pretrain",
        "--mixed-precision fp16 on a CPU",
        [
            "pretrain",
            "--mixed-precision",
            "fp16",
            "--world-docs",
            "20",
            "--max-steps",
            "1",
            "--out",
            "{tmp}/o",
        ],
        ["mixed_precision = 'fp16'", "--mixed-precision fp16", "CUDA GPU"],
    ),
    pretrain_data(
        "malformed JSON", rows('{"text": "重庆"}', '{"text": "成都'), ["{tmp}/t.jsonl:2", "malformed JSON"]
    ),
    pretrain_data(
        "text missing", rows({"text": "a"}, {"body": "b"}), ["{tmp}/t.jsonl:2", 'field "text"', "missing"]
    ),
    pretrain_data(
        "text not a string", rows({"text": 5}), ["{tmp}/t.jsonl:1", 'field "text"', "expected a string"]
    ),
    pretrain_data("text blank", rows({"text": "  "}), ["{tmp}/t.jsonl:1", 'field "text"', "is empty"]),
    pretrain_data(
        "a lone surrogate", ['{"text": "重庆\\ud800"}'], ["{tmp}/t.jsonl:1", 'field "text"', "surrogate"]
    ),
    pretrain_data("a NUL character", ['{"text": "重庆\\u0000"}'], ["{tmp}/t.jsonl:1", 'field "text"', "NUL"]),
    pretrain_data("not UTF-8", "重庆".encode("gbk") + b'"}\n', ["{tmp}/t.jsonl:1", "not valid UTF-8"]),
    pretrain_data("only blank lines", "\n\n", ["{tmp}/t.jsonl", "no rows found", "2 blank lines"]),
    pretrain_data("a JSON list on a line", rows("[1, 2]"), ["{tmp}/t.jsonl:1", "expected a JSON object"]),
    pretrain_data("unsupported file type", "text", ["{tmp}/t.txt", "unsupported file type '.txt'"], "t.txt"),
    pretrain_data(
        "a .json list with a non-object",
        '[{"text": "a"}, 3]',
        ["{tmp}/t.json[row 1]", "expected a JSON object"],
        "t.json",
    ),
    Case(
        "pretrain",
        "--data that does not exist",
        ["pretrain", "--data", "{tmp}/nothing.jsonl", "--out", "{tmp}/o"],
        ["{tmp}/nothing.jsonl", "file not found"],
    ),
    Case(
        "pretrain",
        "--out that is a file",
        ["pretrain", "--out", "{tmp}/f", "--max-steps", "1"],
        ["--out {tmp}/f is a file"],
        files={"f": "x"},
    ),
    Case(
        "pretrain",
        "--out under a file",
        ["pretrain", "--out", "{tmp}/f/run", "--max-steps", "1"],
        ["--out {tmp}/f/run", "{tmp}/f is a file"],
        files={"f": "x"},
    ),
    Case(
        "pretrain",
        "--model with another --tokenizer",
        [
            "pretrain",
            "--model",
            "{tmp}/m",
            "--tokenizer",
            "{tmp}/t",
            "--data",
            "{tmp}/d.jsonl",
            "--out",
            "{tmp}/o",
            "--max-steps",
            "1",
        ],
        ["pretrain --model {tmp}/m", "another vocabulary"],
        files={"d.jsonl": rows({"text": "重庆" * 50})},
        copies={"m": "gpt", "t": "other_tokenizer"},
    ),
    # pretrain, sft, ... --model directories that cannot be loaded
    Case(
        "pretrain",
        "an empty model.safetensors",
        ["pretrain", "--model", "{tmp}/m", "--world-docs", "20", "--out", "{tmp}/o"],
        ["model {tmp}/m", "model.safetensors", "truncated or damaged"],
        files={"m/model.safetensors": b""},
        copies={"m": "gpt"},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# sft


def sft_data(name: str, content, expect: list[str], file: str = "d.jsonl") -> Case:
    argv = ["sft", "--model", "{gpt}", "--data", "{tmp}/" + file, "--out", "{tmp}/o", "--max-steps", "1"]
    return data_case("sft", name, argv, file, content, expect)


CASES += [
    *(
        flag_case("sft", argv, setting, shown, flag)
        for argv, setting, shown, flag in [
            (["--epochs", "0"], "epochs", "0.0", "--epochs"),
            (["--lora-r", "-1"], "lora_r", "-1", "--lora-r"),
            (["--lora-dropout", "1"], "lora_dropout", "1.0", "--lora-dropout"),
            (["--lora-alpha", "0"], "lora_alpha", "0", "--lora-alpha"),
            (["--max-steps", "-1"], "max_steps", "-1", "--max-steps"),
        ]
    ),
    sft_data(
        "completion missing",
        rows(GOOD_SFT, {"prompt": "去哪玩？"}),
        ["{tmp}/d.jsonl:2", 'field "completion"'],
    ),
    sft_data(
        "completion a number",
        rows({"prompt": "p", "completion": 3}),
        ["{tmp}/d.jsonl:1", 'field "completion"'],
    ),
    sft_data(
        "no known fields",
        rows({"question": "q", "answer": "a"}),
        ["{tmp}/d.jsonl:1", "matches no SFT format"],
    ),
    sft_data(
        "messages and prompt together",
        rows({"messages": [U("q"), A("a")], "prompt": "q", "completion": "a"}),
        ["{tmp}/d.jsonl:1", 'field "messages"', "together"],
    ),
    sft_data("messages empty", rows({"messages": []}), ["{tmp}/d.jsonl:1", 'field "messages"', "empty list"]),
    sft_data(
        "a turn not an object",
        rows({"messages": ["q", A("a")]}),
        ['field "messages[0]"', "expected an object"],
    ),
    sft_data(
        "an unknown role",
        rows({"messages": [{"role": "bot", "content": "a"}]}),
        ["{tmp}/d.jsonl:1", 'field "messages[0].role"', '"bot" is not a known role'],
    ),
    sft_data(
        "a role missing", rows({"messages": [{"content": "a"}]}), ['field "messages[0].role"', "is missing"]
    ),
    sft_data(
        "content missing",
        rows({"messages": [U("q"), {"role": "assistant"}]}),
        ['field "messages[1].content"', "missing"],
    ),
    sft_data(
        "last turn not the assistant's",
        rows({"messages": [U("q"), A("a"), U("q2")]}),
        ["{tmp}/d.jsonl:1", 'field "messages"', "not 'assistant'"],
    ),
    sft_data("no user turn", rows({"messages": [S("s"), A("a")]}), ['field "messages"', "has no user turn"]),
    sft_data(
        "two user turns in a row",
        rows({"messages": [U("q"), U("q again"), A("a")]}),
        ["{tmp}/d.jsonl:1", 'field "messages[1].role"', '"user" follows another "user" turn'],
    ),
    sft_data(
        "two assistant turns in a row",
        rows({"messages": [U("q"), A("a"), A("b")]}),
        ['field "messages[2].role"', '"assistant" follows another "assistant"'],
    ),
    sft_data(
        "a system turn not first",
        rows({"messages": [U("q"), S("s"), A("a")]}),
        ['field "messages[1].role"', '"system" is not the first turn'],
    ),
    sft_data(
        "TRL prompt and completion lists that do not alternate",
        rows({"prompt": [U("q")], "completion": [U("q2"), A("a")]}),
        ["{tmp}/d.jsonl:1", 'field "completion[0].role"', "prompt[0]"],
    ),
    sft_data(
        "TRL completion ending with a user turn",
        rows({"prompt": [U("q")], "completion": [A("a"), U("b")]}),
        ['field "completion"', "does not end with an assistant turn"],
    ),
    sft_data(
        "a lone surrogate in the completion",
        ['{"prompt": "q", "completion": "\\udc00a"}'],
        ["{tmp}/d.jsonl:1", 'field "completion"', "surrogate"],
    ),
    sft_data(
        "a NUL character in the prompt",
        ['{"prompt": "q\\u0000", "completion": "a"}'],
        ['field "prompt"', "NUL"],
    ),
    sft_data(
        "<|endoftext|> inside a completion",
        rows({"prompt": "q", "completion": "重庆。<|endoftext|>成都"}),
        ["{tmp}/d.jsonl:1", 'field "completion"', "'<|endoftext|>'", "control token"],
    ),
    sft_data(
        "<|assistant|> inside a turn",
        rows({"messages": [U("q<|assistant|>好的"), A("a")]}),
        ['field "messages[0].content"', "'<|assistant|>'"],
    ),
    sft_data("a row that is a string", rows('"just text"'), ["{tmp}/d.jsonl:1", "expected a JSON object"]),
    sft_data(
        "a parquet file that is not one",
        b"not parquet",
        ["{tmp}/d.parquet", "could not be read"],
        "d.parquet",
    ),
    Case(
        "sft",
        "a prompt that fills --max-len",
        ["sft", "--model", "{gpt}", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/o", "--max-len", "4"],
        ["sft --data {tmp}/d.jsonl", "all 1 demonstrations", "--max-len 4", "skipped"],
        files={"d.jsonl": rows({"prompt": "重庆有什么好玩的地方呢？请告诉我", "completion": "a"})},
    ),
    Case(
        "sft",
        "--model that does not exist",
        ["sft", "--model", "{tmp}/none", "--out", "{tmp}/o"],
        ["{tmp}/none: no such directory"],
    ),
    Case(
        "sft",
        "--model without model files",
        ["sft", "--model", "{tmp}/m", "--out", "{tmp}/o"],
        ["{tmp}/m has no loadable files"],
        files={"m/readme.txt": "x"},
    ),
    Case(
        "sft",
        "a truncated model.safetensors",
        ["sft", "--model", "{tmp}/m", "--out", "{tmp}/o"],
        ["model {tmp}/m", "model.safetensors", "truncated or damaged"],
        copies={"m": "gpt"},
        files={"m/model.safetensors": "truncate:1000"},
    ),
    Case(
        "sft",
        "a garbage model.safetensors",
        ["sft", "--model", "{tmp}/m", "--out", "{tmp}/o"],
        ["model {tmp}/m", "truncated or damaged"],
        copies={"m": "gpt"},
        files={"m/model.safetensors": b"\x07" * 64},
    ),
    Case(
        "sft",
        "weights that do not fit config.json",
        ["sft", "--model", "{tmp}/m", "--out", "{tmp}/o"],
        ["model {tmp}/m", "do not fit its config.json", "model.embed_tokens.weight is [600, 32]"],
        copies={"m": "gpt"},
        files={"m/config.json": "edit:hidden_size=48"},
    ),
    Case(
        "sft",
        "a config.json that is not JSON",
        ["sft", "--model", "{tmp}/m", "--out", "{tmp}/o"],
        ["{tmp}/m cannot be loaded", "config.json' is not a valid JSON file"],
        copies={"m": "gpt"},
        files={"m/config.json": "{not json"},
    ),
    Case(
        "sft",
        "a reward model as --model",
        ["sft", "--model", "{rm}", "--out", "{tmp}/o"],
        ["is a reward model (LlamaForSequenceClassification), not a language model"],
    ),
]

CASES.append(
    Case(
        "sft",
        "a damaged rlhfkit.json in the --out it resumes",
        ["sft", "--model", "{gpt}", "--out", "{tmp}/o", "--resume"],
        ["{tmp}/o/rlhfkit.json: not valid JSON"],
        files={"o/rlhfkit.json": '{"complete": tr'},
    )
)

# ---------------------------------------------------------------------------------------------------------------
# label

LABEL = ["label", "--model", "{sft}", "--out", "{tmp}/c.jsonl"]

CASES += [
    *(
        flag_case("label", argv, setting, shown, flag)
        for argv, setting, shown, flag in [
            (["--k", "1"], "k", "1", "--k"),
            (["--rounds", "0"], "rounds", "0", "--rounds"),
            (["--label-noise", "1.5"], "label_noise", "1.5", "--label-noise"),
            (["--temperature", "-1"], "temperature", "-1.0", "--temperature"),
            (["--top-p", "0"], "top_p", "0.0", "--top-p"),
            (["--max-new-tokens", "0"], "max_new_tokens", "0", "--max-new-tokens"),
            (["--n-labelers", "0"], "n_labelers", "0", "--n-labelers"),
        ]
    ),
    Case(
        "label",
        "labelers that are the eval panel's",
        [*LABEL, "--seed", "1000"],
        ["label --seed 1000", "held-out evaluation panel"],
    ),
    Case(
        "label",
        "prompts its labelers cannot judge",
        [*LABEL, "--prompts", "{tmp}/p.jsonl"],
        ["label --prompts {tmp}/p.jsonl", "not the embedded world's"],
        files={"p.jsonl": rows({"prompt": "Hi?"})},
    ),
    Case(
        "label",
        "a malformed prompts file",
        [*LABEL, "--prompts", "{tmp}/p.jsonl"],
        ["{tmp}/p.jsonl:1", 'field "prompt"'],
        files={"p.jsonl": rows({"prompt": ""})},
    ),
    Case(
        "label",
        "--out that is a directory",
        ["label", "--model", "{sft}", "--out", "{tmp}/dir"],
        ["--out {tmp}/dir is a directory"],
        files={"dir/x": "x"},
    ),
    Case(
        "label",
        "--out under a file, found before sampling",
        ["label", "--model", "{sft}", "--out", "{tmp}/f/c.jsonl"],
        ["{tmp}/f is a file"],
        files={"f": "x"},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# reward


def pref_case(stage: str, name: str, content, expect: list[str]) -> Case:
    if stage == "reward":
        argv = [
            "reward",
            "--model",
            "{sft}",
            "--data",
            "{tmp}/p.jsonl",
            "--out",
            "{tmp}/o",
            "--max-steps",
            "1",
        ]
    else:
        argv = ["dpo", "--policy", "{sft}", "--data", "{tmp}/p.jsonl", "--out", "{tmp}/o", "--max-steps", "1"]
    return data_case(stage, name, argv, "p.jsonl", content, expect)


CASES += [
    *(
        flag_case("reward", argv, setting, shown, flag)
        for argv, setting, shown, flag in [
            (["--val-fraction", "1"], "val_fraction", "1.0", "--val-fraction"),
            (["--margin", "-1"], "margin", "-1.0", "--margin"),
            (["--epochs", "0"], "epochs", "0.0", "--epochs"),
            (
                ["--center-rewards-coefficient", "-1"],
                "center_rewards_coefficient",
                "-1.0",
                "--center-rewards",
            ),
            (["--eval-every", "0"], "eval_every", "0", "--eval-every"),
        ]
    ),
    pref_case(
        "reward",
        "ranking not a permutation",
        rows({**GOOD_PREF, "ranking": [0, 0]}),
        ["{tmp}/p.jsonl:1", 'field "ranking"', "not a permutation of 0..1"],
    ),
    pref_case(
        "reward",
        "ranking of strings",
        rows({**GOOD_PREF, "ranking": ["0", "1"]}),
        ['field "ranking"', "expected a list of integers"],
    ),
    pref_case(
        "reward",
        "ranking a string",
        rows({**GOOD_PREF, "ranking": "0,1"}),
        ['field "ranking"', "expected a list"],
    ),
    pref_case(
        "reward",
        "ranking missing",
        rows({"prompt": "p", "responses": ["a", "b"]}),
        ['field "ranking"', "is missing"],
    ),
    pref_case(
        "reward",
        "ranks of the wrong length",
        rows({"prompt": "p", "responses": ["a", "b"], "ranks": [1]}),
        ['field "ranks"', "has 1 entries for K=2"],
    ),
    pref_case(
        "reward",
        "a rank below 1",
        rows({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}),
        ['field "ranks"', "below 1"],
    ),
    pref_case(
        "reward",
        "a rank above int64",
        ['{"prompt": "p", "responses": ["a", "b"], "ranks": [1, ' + str(2**70) + "]}"],
        ["{tmp}/p.jsonl:1", 'field "ranks"', "above K=2"],
    ),
    pref_case(
        "reward",
        "every response tied",
        rows({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}),
        ['field "ranks"', "ties every response"],
    ),
    pref_case(
        "reward",
        "ranking and ranks together",
        rows({**GOOD_PREF, "ranks": [1, 2]}),
        ['field "ranks"', 'together with "ranking"'],
    ),
    pref_case(
        "reward",
        "one response",
        rows({"prompt": "p", "responses": ["a"], "ranking": [0]}),
        ['field "responses"', "K >= 2"],
    ),
    pref_case(
        "reward",
        "responses not a list",
        rows({"prompt": "p", "responses": "a b", "ranking": [0, 1]}),
        ['field "responses"', "expected a list"],
    ),
    pref_case(
        "reward",
        "an empty hand-written response",
        rows({**GOOD_PREF, "responses": ["a", ""]}),
        ['field "responses[1]"', "is empty"],
    ),
    pref_case(
        "reward",
        "ended of the wrong length",
        rows({**GOOD_PREF, "ended": [True]}),
        ['field "ended"', "not a list of 2 true/false"],
    ),
    pref_case(
        "reward",
        "the same answer ranked apart",
        rows({"prompt": "p", "responses": ["a", "a", "b"], "ranking": [0, 2, 1]}),
        ['field "ranking"', "responses 0 and 1 are the same answer"],
    ),
    pref_case(
        "reward",
        "chosen equal to rejected",
        rows({"prompt": "p", "chosen": "a", "rejected": "a"}),
        ["{tmp}/p.jsonl:1", 'field "rejected"', 'identical to "chosen"'],
    ),
    pref_case(
        "reward",
        "responses and chosen together",
        rows({**GOOD_PREF, "chosen": "a", "rejected": "b"}),
        ['field "responses"', 'together with "chosen"/"rejected"'],
    ),
    pref_case(
        "reward",
        "a pair without a prompt",
        rows({"chosen": "a", "rejected": "b"}),
        ['field "prompt"', "is missing"],
    ),
    pref_case(
        "reward",
        "conversations that do not share a prompt",
        rows({"chosen": [U("q"), A("a")], "rejected": [U("other"), A("b")]}),
        ['field "rejected"', "does not share the turns"],
    ),
    pref_case(
        "reward",
        "a prompt list that ends with the answer",
        rows({**GOOD_PREF, "prompt": [U("q"), A("a")]}),
        ["{tmp}/p.jsonl:1", 'field "prompt[1].role"', "the prompt's last turn is \"assistant\"'s"],
    ),
    pref_case(
        "reward",
        "a chosen conversation ending with the user",
        rows({"prompt": "p", "chosen": [U("q")], "rejected": "b"}),
        ['field "chosen"', "not 'assistant'"],
    ),
    pref_case(
        "reward",
        "a control token in a response",
        rows({**GOOD_PREF, "responses": ["a<|user|>b", "c"]}),
        ['field "responses[0]"', "'<|user|>'", "control token"],
    ),
    pref_case(
        "reward",
        "a lone surrogate in a response",
        ['{"prompt": "p", "responses": ["\\ud800", "b"], "ranking": [0, 1]}'],
        ['field "responses[0]"', "surrogate"],
    ),
    pref_case(
        "reward",
        "no known format",
        rows({"prompt": "p", "answers": ["a", "b"]}),
        ["{tmp}/p.jsonl:1", "matches no preference format"],
    ),
    Case(
        "reward",
        "a bad --demonstrations file",
        [
            "reward",
            "--model",
            "{sft}",
            "--data",
            "{tmp}/p.jsonl",
            "--demonstrations",
            "{tmp}/d.jsonl",
            "--out",
            "{tmp}/o",
        ],
        ["reward --demonstrations {tmp}/d.jsonl", "{tmp}/d.jsonl:1", 'field "completion"'],
        files={"p.jsonl": rows(GOOD_PREF, {**GOOD_PREF, "prompt": "q"}), "d.jsonl": rows({"prompt": "p"})},
    ),
    Case(
        "reward",
        "a damaged --model",
        ["reward", "--model", "{tmp}/m", "--data", "{tmp}/p.jsonl", "--out", "{tmp}/o"],
        ["model {tmp}/m", "truncated or damaged"],
        copies={"m": "sft"},
        files={"p.jsonl": rows(GOOD_PREF), "m/model.safetensors": "truncate:5000"},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# ppo

PPO = ["ppo", "--policy", "{sft}", "--reward-model", "{rm}", "--out", "{tmp}/o", "--iterations", "1"]

CASES += [
    *(
        flag_case("ppo", argv, setting, shown, flag)
        for argv, setting, shown, flag in [
            (["--kl-coef", "-1"], "kl_coef", "-1.0", "--kl-coef"),
            (["--cliprange", "0"], "cliprange", "0.0", "--cliprange"),
            (["--gamma", "1.5"], "gamma", "1.5", "--gamma"),
            (["--lam", "-0.1"], "lam", "-0.1", "--lam"),
            (["--algo", "ddpg"], "algo", "'ddpg'", "--algo"),
            (["--kl-estimator", "k9"], "kl_estimator", "'k9'", "--kl-estimator"),
            (["--ema-decay", "1"], "ema_decay", "1.0", "--ema-decay"),
            (["--ppo-epochs", "0"], "ppo_epochs", "0", "--ppo-epochs"),
            (["--target-kl", "0"], "target_kl", "0.0", "--target-kl"),
            (["--iterations", "0"], "iterations", "0", "--iterations"),
            (["--vf-coef", "-0.5"], "vf_coef", "-0.5", "--vf-coef"),
            (["--ptx-coef", "-1"], "ptx_coef", "-1.0", "--ptx-coef"),
            (["--rloo-k", "1"], "rloo_k", "1", "--rloo-k"),
        ]
    ),
    Case(
        "ppo",
        "--mini-batch-size larger than --batch-size",
        ["ppo", "--batch-size", "16", "--mini-batch-size", "32"],
        ["mini_batch_size = 32 is larger than batch_size = 16", "--mini-batch-size"],
    ),
    Case("ppo", "--grad-accum", [*PPO, "--grad-accum", "2"], ["ppo --grad-accum 2", "--mini-batch-size"]),
    Case("ppo", "--temperature 0", [*PPO, "--temperature", "0"], ["ppo --temperature 0.0"]),
    Case(
        "ppo",
        "rloo batch not a multiple of k",
        [*PPO, "--algo", "rloo", "--batch-size", "6", "--mini-batch-size", "2", "--rloo-k", "4"],
        ["--batch-size 6 must be a multiple of --rloo-k 4"],
    ),
    Case(
        "ppo",
        "--lora-r with --ref-policy",
        [*PPO, "--lora-r", "4", "--ref-policy", "{sft}"],
        ["ppo --lora-r 4 --ref-policy"],
    ),
    Case(
        "ppo",
        "a causal LM as --reward-model",
        ["ppo", "--policy", "{sft}", "--reward-model", "{sft}", "--out", "{tmp}/o"],
        ["is not a reward model (LlamaForCausalLM)"],
    ),
    Case(
        "ppo",
        "a prompt row without a prompt",
        [*PPO, "--prompts", "{tmp}/p.jsonl"],
        ["{tmp}/p.jsonl:2", "matches no prompt format"],
        files={"p.jsonl": rows({"prompt": "q"}, {"question": "q"})},
    ),
    Case(
        "ppo",
        "prompt and messages together",
        [*PPO, "--prompts", "{tmp}/p.jsonl"],
        ['field "messages"', "together"],
        files={"p.jsonl": rows({"prompt": "q", "messages": [U("q")]})},
    ),
    Case(
        "ppo",
        "a prompt that spells a control token",
        [*PPO, "--prompts", "{tmp}/p.jsonl"],
        ["{tmp}/p.jsonl:1", 'field "prompt"', "'<|endoftext|>'"],
        files={"p.jsonl": rows({"prompt": "q<|endoftext|>"})},
    ),
    Case(
        "ppo",
        "prompt messages that do not alternate",
        [*PPO, "--prompts", "{tmp}/p.jsonl"],
        ['field "messages[1].role"', "follows another"],
        files={"p.jsonl": rows({"messages": [U("q"), U("r")]})},
    ),
    Case(
        "ppo",
        "--ptx-data shorter than one block",
        [*PPO, "--ptx-coef", "1", "--ptx-data", "{tmp}/t.jsonl"],
        ["ppo --ptx-data {tmp}/t.jsonl", "fewer than one block"],
        files={"t.jsonl": rows({"text": "短"})},
    ),
    Case(
        "ppo",
        "a malformed --ptx-data",
        [*PPO, "--ptx-coef", "1", "--ptx-data", "{tmp}/t.jsonl"],
        ["{tmp}/t.jsonl:1", 'field "text"'],
        files={"t.jsonl": rows({"txt": "x"})},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# dpo (the same loader as reward: a few cases)

CASES += [
    flag_case("dpo", ["--beta", "0"], "beta", "0.0", "--beta"),
    flag_case("dpo", ["--loss-type", "hinge2"], "loss_type", "'hinge2'", "--loss-type"),
    flag_case("dpo", ["--label-smoothing", "0.5"], "label_smoothing", "0.5", "--label-smoothing"),
    pref_case(
        "dpo",
        "ranking not a permutation",
        rows({**GOOD_PREF, "ranking": [1, 1]}),
        ["{tmp}/p.jsonl:1", 'field "ranking"'],
    ),
    pref_case(
        "dpo",
        "chosen equal to rejected",
        rows({"prompt": "p", "chosen": "a", "rejected": "a"}),
        ['field "rejected"', "identical"],
    ),
    pref_case(
        "dpo",
        "a control token in chosen",
        rows({"prompt": "p", "chosen": "a<|pad|>", "rejected": "b"}),
        ['field "chosen"', "'<|pad|>'"],
    ),
    pref_case("dpo", "malformed JSON", rows(GOOD_PREF, "{"), ["{tmp}/p.jsonl:2", "malformed JSON"]),
    Case(
        "dpo",
        "--policy that does not exist",
        ["dpo", "--policy", "{tmp}/none", "--data", "{tmp}/p.jsonl", "--out", "{tmp}/o"],
        ["{tmp}/none: no such directory"],
        files={"p.jsonl": rows(GOOD_PREF)},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# eval

EVAL = ["eval", "--models", "sft={sft}", "--reference", "sft", "--out", "{tmp}/e"]

CASES += [
    flag_case("eval", ["--samples-per-prompt", "0"], "samples_per_prompt", "0", "--samples-per-prompt"),
    flag_case("eval", ["--top-p", "1.5"], "top_p", "1.5", "--top-p"),
    flag_case("eval", ["--best-of-n", "4", "0"], "best_of_n", "0", "--best-of-n"),
    flag_case("eval", ["--max-new-tokens", "0"], "max_new_tokens", "0", "--max-new-tokens"),
    Case(
        "eval",
        "a model not NAME=DIR",
        ["eval", "--models", "{sft}", "--out", "{tmp}/e"],
        ["should be NAME=DIR"],
    ),
    Case(
        "eval",
        "two models of one name",
        ["eval", "--models", "a={sft}", "a={gpt}", "--reference", "a", "--out", "{tmp}/e"],
        ["two models are named 'a'"],
    ),
    Case(
        "eval", "a reference that is not a model", [*EVAL, "--reference", "ppo"], ["eval --reference 'ppo'"]
    ),
    Case(
        "eval",
        "--best-of-n without --reward-model",
        [*EVAL, "--best-of-n", "4"],
        ["eval --best-of-n needs --reward-model"],
    ),
    Case(
        "eval",
        "--prompts without --judge",
        [*EVAL, "--prompts", "{tmp}/p.jsonl"],
        ["need --judge"],
        files={"p.jsonl": rows({"prompt": "q"})},
    ),
    Case(
        "eval",
        "a malformed --prompts file",
        [*EVAL, "--prompts", "{tmp}/p.jsonl", "--judge", "{rm}"],
        ["{tmp}/p.jsonl:1", 'field "prompt"', "is empty"],
        files={"p.jsonl": rows({"prompt": " "})},
    ),
    Case(
        "eval",
        "a --prompts row that spells a control token",
        [*EVAL, "--prompts", "{tmp}/p.jsonl", "--judge", "{rm}"],
        ["{tmp}/p.jsonl:1", "'<|user|>'"],
        files={"p.jsonl": rows({"prompt": "<|user|>q"})},
    ),
    Case(
        "eval",
        "a causal LM as --judge",
        [*EVAL, "--prompts", "{tmp}/p.jsonl", "--judge", "{sft}"],
        ["is not a reward model"],
        files={"p.jsonl": rows({"prompt": "q"})},
    ),
    Case(
        "eval",
        "a malformed --heldout-text",
        [*EVAL, "--heldout-text", "{tmp}/h.jsonl"],
        ["{tmp}/h.jsonl:1", 'field "text"'],
        files={"h.jsonl": rows({"text": ["a"]})},
    ),
    Case(
        "eval", "--out that is a file", [*EVAL[:-1], "{tmp}/f"], ["--out {tmp}/f is a file"], files={"f": "x"}
    ),
    Case(
        "eval",
        "a model directory that does not exist",
        ["eval", "--models", "sft={tmp}/none", "--reference", "sft", "--out", "{tmp}/e"],
        ["{tmp}/none", "no such directory"],
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# generate / score

CASES += [
    Case(
        "generate / score",
        "generate without a prompt",
        ["generate", "--model", "{sft}"],
        ["give --prompt TEXT"],
    ),
    flag_case(
        "generate / score",
        ["generate", "--max-new-tokens", "0", "--prompt", "x"],
        "max_new_tokens",
        "0",
        "--max-new-tokens",
        "generate --max-new-tokens 0",
    ),
    Case(
        "generate / score",
        "generate --best-of-n without a reward model",
        ["generate", "--model", "{sft}", "--prompt", "x", "--best-of-n", "4"],
        ["generate --best-of-n needs --reward-model"],
    ),
    Case(
        "generate / score",
        "a malformed --prompts-file",
        ["generate", "--model", "{sft}", "--prompts-file", "{tmp}/p.jsonl"],
        ["{tmp}/p.jsonl:1", 'field "prompt"'],
        files={"p.jsonl": rows({"prompt": 1})},
    ),
    Case(
        "generate / score",
        "a missing model",
        ["generate", "--model", "{tmp}/none", "--prompt", "x"],
        ["{tmp}/none", "no such directory"],
    ),
    Case(
        "generate / score",
        "score without a response",
        ["score", "--reward-model", "{rm}", "--prompt", "p"],
        ["give --prompt TEXT and --response TEXT"],
    ),
    Case(
        "generate / score",
        "score with a causal LM",
        ["score", "--reward-model", "{sft}", "--prompt", "p", "--response", "a"],
        ["is not a reward model (LlamaForCausalLM)"],
    ),
    Case(
        "generate / score",
        "score with a damaged reward model",
        ["score", "--reward-model", "{tmp}/m", "--prompt", "p", "--response", "a"],
        ["reward model {tmp}/m", "truncated or damaged"],
        copies={"m": "rm"},
        files={"m/model.safetensors": "truncate:3000"},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# pipeline and its YAML

PIPE = ["pipeline", "--out", "{tmp}/run", "--config", "{tmp}/run.yaml"]


def yaml_case(name: str, text, expect: list[str]) -> Case:
    return Case("pipeline", name, PIPE, expect, files={"run.yaml": text})


CASES += [
    Case(
        "pipeline",
        "an unknown preset",
        ["pipeline", "--preset", "huge", "--out", "{tmp}/run"],
        ["--preset 'huge'"],
    ),
    Case(
        "pipeline",
        "an unknown method",
        ["pipeline", "--methods", "ppo", "sac", "--out", "{tmp}/run"],
        ["--methods: unknown ['sac']"],
    ),
    flag_case("pipeline", ["--seed", "-1", "--out", "{tmp}/run"], "seed", "-1", "--seed", "--seed -1"),
    flag_case(
        "pipeline",
        ["--mixed-precision", "fp4", "--out", "{tmp}/run"],
        "mixed_precision",
        "'fp4'",
        "--mixed-precision",
        "--mixed-precision fp4",
    ),
    Case(
        "pipeline",
        "--out that is a file",
        ["pipeline", "--preset", "tiny", "--out", "{tmp}/f"],
        ["--out {tmp}/f is a file"],
        files={"f": "x"},
    ),
    yaml_case("YAML syntax", "ppo:\n  batch_size: [1,\n", ["{tmp}/run.yaml", "not valid YAML at line"]),
    yaml_case("YAML not UTF-8", "seed: 0\n# 重庆\n".encode("gbk"), ["{tmp}/run.yaml:2", "not valid UTF-8"]),
    yaml_case("YAML a list", "- ppo\n", ["{tmp}/run.yaml", "expected a mapping of settings, got list"]),
    yaml_case("an unknown section", "ppo2: {}\n", ["{tmp}/run.yaml", "unknown section or setting 'ppo2'"]),
    yaml_case("a section that is no mapping", "ppo: 3\n", ["{tmp}/run.yaml", "ppo: expected a mapping"]),
    yaml_case(
        "an unknown setting in a section",
        "ppo: {beta: 1}\n",
        ["{tmp}/run.yaml", "ppo.beta", "not a PPOConfig"],
    ),
    yaml_case(
        "a value of the wrong type",
        "sft: {batch_size: many}\n",
        ["{tmp}/run.yaml", "sft.batch_size", "expected an integer"],
    ),
    yaml_case(
        "ppo: {batch_size: 0}",
        "ppo: {batch_size: 0}\n",
        ["{tmp}/run.yaml", "ppo.batch_size = 0", "--batch-size"],
    ),
    yaml_case(
        "a list item out of range", "eval: {best_of_n: [4, 0]}\n", ["{tmp}/run.yaml", "eval.best_of_n = 0"]
    ),
    yaml_case("the run-wide seed in a section", "sft: {seed: 3}\n", ["sft.seed = 3", "top-level seed"]),
    yaml_case(
        "settings that do not go together",
        "preset: tiny\nppo: {batch_size: 4}\n",
        ["pipeline section 'ppo'", "mini_batch_size = 8 is larger than batch_size = 4"],
    ),
    yaml_case("a top-level seed out of range", "seed: -4\n", ["{tmp}/run.yaml", "seed = -4", "--seed"]),
    Case(
        "pipeline",
        "--config that does not exist",
        ["pipeline", "--config", "{tmp}/none.yaml"],
        ["--config {tmp}/none.yaml: no such file"],
    ),
    Case(
        "pipeline",
        "--config that is a directory",
        ["pipeline", "--config", "{tmp}/d"],
        ["--config {tmp}/d: a directory"],
        files={"d/x": "x"},
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# world export

CASES += [
    Case(
        "world export",
        "--out that is a file",
        ["world", "export", "--out", "{tmp}/f"],
        ["--out {tmp}/f is a file"],
        files={"f": "x"},
    ),
    Case(
        "world export",
        "--out under a file",
        ["world", "export", "--out", "{tmp}/f/w"],
        ["{tmp}/f is a file"],
        files={"f": "x"},
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# Running a case


MODELS = {"gpt": "tiny_gpt", "sft": "tiny_sft", "rm": "tiny_reward"}


def fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def prepare(case: Case, tmp_path: Path, request) -> dict[str, str]:
    """Write the case's files and copies; returns the placeholder values."""
    wanted = {name for text in [*case.argv, *case.expect] for name in re.findall(r"\{(\w+)\}", text)}
    wanted |= set(case.copies.values())
    values = {"tmp": str(tmp_path)}
    for name, fixture in MODELS.items():
        if name in wanted:
            values[name] = str(request.getfixturevalue(fixture))
    for target, source in case.copies.items():
        if source == "other_tokenizer":  # a tokenizer trained on other text: another vocabulary
            from rlhfkit.tokenizer import train_tokenizer

            train_tokenizer(["hello world, another corpus"] * 50, vocab_size=300).save_pretrained(
                tmp_path / target
            )
        else:
            shutil.copytree(values.get(source) or request.getfixturevalue(MODELS[source]), tmp_path / target)
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, list):
            lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in content]
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        elif content.startswith("truncate:"):
            path.write_bytes(path.read_bytes()[: int(content.split(":")[1])])
        elif content.startswith("edit:"):
            key, value = content[5:].split("=")
            config = json.loads(path.read_text())
            config[key] = int(value)
            path.write_text(json.dumps(config))
        else:
            path.write_text(content, encoding="utf-8")
    return values


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_one_clear_line(case: Case, tmp_path, request, capsys):
    values = prepare(case, tmp_path, request)
    capsys.readouterr()
    code = main([fill(arg, values) for arg in case.argv])
    captured = capsys.readouterr()
    output = " ".join((captured.out + captured.err).split())
    assert "Traceback" not in output
    assert code == case.code, output
    assert output.count("error:") == 1 and "the run failed" not in output, output
    message = output[output.index("error:") :]
    for expected in case.expect:
        assert fill(expected, values) in message, f"{fill(expected, values)!r} not in {message!r}"


def test_the_table_counts_the_cases():
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case.stage] = counts.get(case.stage, 0) + 1
    table = dict(re.findall(r"^\| ([a-z/ ]+) \| (\d+) \|$", __doc__, re.M))
    assert {stage: int(n) for stage, n in table.items()} == counts
    assert f"**{len(CASES)}**" in __doc__ and len(CASES) >= 120
    assert len({case.id for case in CASES}) == len(CASES)  # every case its own name


# ---------------------------------------------------------------------------------------------------------------
# Right to accept, with a word of what was done


def test_an_sft_answer_cut_to_max_len_is_counted(tiny_gpt, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"prompt": "去哪玩？", "completion": "重庆有洪崖洞。" * 2000}) + "\n", encoding="utf-8"
    )
    out = tmp_path / "o"
    args = ["sft", "--model", str(tiny_gpt), "--data", str(data), "--out", str(out), "--max-steps", "1"]
    assert main([*args, "--max-len", "32", "--batch-size", "1"]) == 0
    text = console_text(capsys)
    assert f"sft --data {data}: 1 of 1 demonstrations are longer than --max-len 32" in text


def test_a_ranking_file_without_a_validation_split_says_so(tiny_sft, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps(GOOD_PREF, ensure_ascii=False) + "\n", encoding="utf-8")
    args = [
        "reward",
        "--model",
        str(tiny_sft),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--max-steps",
        "1",
    ]
    assert main(args) == 0
    assert "--val-fraction 0.1 of 1 prompts holds out none, so no validation accuracy" in console_text(capsys)


def test_prompts_that_go_on_after_the_user_are_answered_from_it_with_a_word(tmp_path, capsys):
    from rlhfkit.data import load_prompts

    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "q"}, {"messages": [U("重庆？"), A("洪崖洞")]}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    rows = load_prompts(path)
    assert rows[1].context == [U("重庆？")]
    assert "1 of 2 prompts go on after their last user turn (the first is row 2)" in console_text(capsys)


def test_pretraining_text_that_spells_a_control_token_is_counted(tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    docs = [{"text": "重庆有洪崖洞。<|endoftext|>成都有春熙路。" * 20}, {"text": "北京有故宫。" * 20}]
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    args = [
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--max-steps",
        "1",
        "--vocab-size",
        "300",
        "--hidden-size",
        "16",
        "--num-heads",
        "2",
        "--num-layers",
        "1",
        "--intermediate-size",
        "16",
        "--max-len",
        "32",
        "--batch-size",
        "2",
    ]
    assert main(args) == 0
    assert f"{data}: '<|endoftext|>' in 1 of 2 documents" in console_text(capsys)
