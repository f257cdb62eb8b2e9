"""`rlhfkit label-server`: people write demonstrations, rank K answers and compare two models blind, in a browser.

InstructGPT's three data sets came from people: demonstrations (Step1), rankings of K sampled answers (Step2)
and blind comparisons of two models' answers (the evaluation). This package collects the real thing and writes
it in the formats the stages read, so the loop closes: sample → label → export → `rlhfkit sft / reward / dpo`,
`rlhfkit eval --human labels.sqlite`.

    db.py       SQLite in WAL mode: people and their hashed tokens, sessions, task sets, items, assignments,
                labels; every label committed (fsync'd) before it is acknowledged
    tasks.py    task sets from prompt files (the stages' validation) and a model's samples (`rlhfkit.rollout`)
    labels.py   what a label of each kind is, checked as the server receives it
    export.py   labels -> JSONL in the README's formats; agreement between people; blind verdicts for eval
    app.py      the FastAPI app: pages (Jinja2, autoescaped), JSON API, auth, CSRF, body limit
    settings.py the settings of the command and its verbs (flags, --help, checks)
    cli.py      `rlhfkit label-server [tasks add | export | users add ...]`
"""
