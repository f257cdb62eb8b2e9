"""`rlhfkit label-server`: assignment, labels, export formats the stages load, agreement, `eval --human`, and the
safety of every route (auth, CSRF, escaping, body limit), through FastAPI's TestClient; then a real server killed
with SIGKILL mid-load, which must restart with every label it acknowledged. The browser tests are in
test_label_server_browser.py."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient

from label_server_helpers import Server, call
from rlhfkit.data import DataError, load_preferences, load_sft
from rlhfkit.labelserver.app import PUBLIC, create_app
from rlhfkit.labelserver.db import Database, LabelError
from rlhfkit.labelserver.export import export_ranks, pairwise_agreement, set_rows, verdicts
from rlhfkit.labelserver.labels import check_label

XSS = ["<script>window.pwned = 1</script>", '<img src=x onerror="window.pwned = 2">']
RANK = {"ranks": [1, 2, 3, 4], "unacceptable": [False] * 4}


def rank_items(n: int, k: int = 4) -> list[dict]:
    return [
        {"prompt": f"p{i}", "responses": [{"text": f"p{i} answer {j}", "ended": True} for j in range(k)]}
        for i in range(n)
    ]


def compare_items(n: int) -> list[dict]:
    return [
        {
            "prompt": f"q{i}",
            "responses": [
                {"model": "secret-ppo" if i % 2 else "secret-sft", "text": f"q{i} x", "ended": True},
                {"model": "secret-sft" if i % 2 else "secret-ppo", "text": f"q{i} y", "ended": True},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture
def db(tmp_path) -> Database:
    return Database(tmp_path / "labels.sqlite")


def label_everything(db: Database, set_id: int, people, value) -> list[tuple[int, str]]:
    """Every person asks for work and labels until none is left; returns (item, person) per label."""
    done = []
    for person in people:
        while (item := db.next_item(person, set_id, lease=1800)) is not None:
            db.submit(person, item.id, value(item) if callable(value) else value)
            done.append((item.id, person.name))
    return done


# -- storage and assignment ---------------------------------------------------------------------------------


def test_each_item_gets_n_labels_from_different_people(db):
    people = [db.add_user(name)[0] for name in ("ann", "bo", "cy")]
    task_set = db.add_task_set("r", "rank", 2, "", {}, rank_items(5))
    done = label_everything(db, task_set.id, people, RANK)
    per_item = {}
    for item, person in done:
        per_item.setdefault(item, []).append(person)
    assert len(per_item) == 5 and all(len(p) == 2 == len(set(p)) for p in per_item.values())
    assert len(done) == len(set(done)) == 10
    assert db.progress()[task_set.id]["complete"] == 5


def test_an_item_handed_out_is_held_for_its_person_until_the_lease_ends(db):
    ann, bo = db.add_user("ann")[0], db.add_user("bo")[0]
    task_set = db.add_task_set("r", "rank", 1, "", {}, rank_items(2))
    first = db.next_item(ann, task_set.id, lease=1800)
    assert db.next_item(ann, task_set.id, lease=1800).id == first.id  # a reload gives the same item back
    assert db.next_item(bo, task_set.id, lease=1800).id != first.id  # held for ann
    assert db.next_item(db.add_user("cy")[0], task_set.id, lease=1800) is None  # both held
    cy = db.users()[-1]
    assert db.next_item(cy, task_set.id, lease=0).id == first.id  # after the lease, someone else may take it
    db.submit(ann, first.id, RANK)  # ann's late label still counts: nobody's work is thrown away
    db.submit(cy, first.id, RANK)
    assert db.item(first.id).n_labels == 2


def test_a_label_is_refused_from_anyone_the_item_was_not_given_to_and_is_final(db):
    ann, bo = db.add_user("ann")[0], db.add_user("bo")[0]
    task_set = db.add_task_set("r", "rank", 2, "", {}, rank_items(1))
    item = db.next_item(ann, task_set.id, lease=1800)
    with pytest.raises(PermissionError):
        db.submit(bo, item.id, RANK)
    first = db.submit(ann, item.id, RANK)
    assert db.submit(ann, item.id, RANK) == (first[0], True)  # a retry of a lost answer: stored once
    with pytest.raises(LabelError, match="cannot be changed"):
        db.submit(ann, item.id, {"ranks": [4, 3, 2, 1], "unacceptable": [False] * 4})
    assert len(db.labels(task_set.id)) == 1


def test_a_skipped_item_goes_to_someone_else_and_not_back(db):
    ann, bo = db.add_user("ann")[0], db.add_user("bo")[0]
    task_set = db.add_task_set("r", "rank", 1, "", {}, rank_items(2))
    first = db.next_item(ann, task_set.id, lease=1800)
    db.skip(ann, first.id)
    assert db.next_item(ann, task_set.id, lease=1800).position == 1  # not the skipped one again
    assert db.next_item(bo, task_set.id, lease=1800).id == first.id  # free for others at once
    assert db.progress()[task_set.id]["skipped"] == 1
    with pytest.raises(PermissionError):
        db.skip(db.add_user("cy")[0], first.id)


def test_people_commands_print_the_token_alone_on_stdout(db, capsys):
    from rlhfkit.cli import main

    assert main(["label-server", "users", "add", "--db", db.path, "--name", "ann", "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert db.user_by_token(token).role == "admin"
    assert (
        main(["label-server", "--db", db.path, "users", "reset", "--name", "ann"]) == 0
    )  # --db before the verb
    new = capsys.readouterr().out.strip()
    assert db.user_by_token(token) is None and db.user_by_token(new).name == "ann"
    assert main(["label-server", "users", "add", "--db", db.path, "--name", "ann"]) == 2  # the name is taken
    assert main(["label-server", "users", "list", "--db", db.path]) == 0
    assert capsys.readouterr().out == "ann\tadmin\n"
    db.add_task_set("r", "rank", 2, "", {}, rank_items(3))
    assert main(["label-server", "tasks", "list", "--db", db.path]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "r\trank\t3\t0\t0\t2"


def test_tokens_and_sessions_are_stored_hashed(db, tmp_path):
    user, token = db.add_user("ann", "admin")
    session, csrf = db.create_session(user)
    raw = (tmp_path / "labels.sqlite").read_bytes() + (tmp_path / "labels.sqlite-wal").read_bytes()
    assert token.encode() not in raw and session.encode() not in raw
    assert db.user_by_token(token).name == "ann" and db.session(session) == (user, csrf)
    new = db.reset_token("ann")
    assert db.user_by_token(token) is None and db.user_by_token(new).name == "ann"
    assert db.session(session) is None  # a new token ends the old sessions


@pytest.mark.parametrize(
    "kind, body, message",
    [
        ("write", {"text": "  "}, "empty"),
        ("write", {"text": "x", "extra": 1}, "fields"),
        ("compare", {"choice": "c"}, "choice"),
        ("rank", {"ranks": [1, 2, 3], "unacceptable": [False] * 4}, "one rank per answer"),
        ("rank", {"ranks": [1, 2, 3, None], "unacceptable": [False] * 4}, "answer 4 has no rank"),
        ("rank", {"ranks": [1, 2, 3, 5], "unacceptable": [False] * 4}, "answer 4 has no rank from 1 to 4"),
        ("rank", {"ranks": [1, 2, 3, True], "unacceptable": [False] * 4}, "answer 4"),
        ("rank", {"ranks": [1, 2, 3, 4], "unacceptable": [False, 0, False, False]}, "true/false"),
    ],
)
def test_bad_labels_are_refused_with_what_is_wrong(db, kind, body, message):
    task_set = db.add_task_set("s", kind, 1, "", {}, rank_items(1))
    item = db.next_item(db.add_user("ann")[0], task_set.id, 1800)
    with pytest.raises(LabelError, match=message):
        check_label(kind, item, body)


# -- export: the stages' formats ------------------------------------------------------------------------------


def test_export_rows_load_in_the_stages_loaders(db, tmp_path):
    from rlhfkit.cli import main

    ann, bo = db.add_user("ann")[0], db.add_user("bo")[0]
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    write = db.add_task_set(
        "demos", "write", 1, "", {}, [{"prompt": "p"}, {"prompt": "hi", "context": conversation}]
    )
    label_everything(db, write.id, [ann], lambda item: {"text": f"answer to {item.prompt}"})
    rank = db.add_task_set("ranks", "rank", 2, "", {}, rank_items(3))
    flagged = {"ranks": [1, 1, 3, None], "unacceptable": [False, False, False, True]}
    all_bad = {"ranks": [None] * 4, "unacceptable": [True] * 4}
    label_everything(db, rank.id, [ann], flagged)
    label_everything(db, rank.id, [bo], lambda item: all_bad if item.position == 0 else RANK)
    compare = db.add_task_set(
        "ab", "compare", 1, "", {"models": {"secret-ppo": "a", "secret-sft": "b"}}, compare_items(2)
    )
    label_everything(db, compare.id, [ann], {"choice": "a"})

    assert main(["label-server", "export", "--db", db.path, "--out", str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert {s["name"]: s["rows"] for s in manifest["sets"]} == {"demos": 2, "ranks": 5, "ab": 2}
    assert manifest["sets"][1]["left_out"] == {
        "rankings that tie every answer": 1
    }  # counted, not dropped silently

    demos = load_sft(tmp_path / "export" / "demos.jsonl")
    assert [d.completion for d in demos] == ["answer to p", "answer to hi"]
    assert demos[1].messages[:2] == conversation  # the conversation whole, the answer as its last turn
    ranked = load_preferences(tmp_path / "export" / "ranks.jsonl")
    # Flagged answers tie below every acceptable one, in dense ranks: [1, 1, 3, flagged] -> [1, 1, 2, 3].
    assert ranked[0].ranks == [1, 1, 2, 3] and ranked[0].pairs() == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert ranked[-1].ranks == [1, 2, 3, 4]
    rows = [json.loads(line) for line in (tmp_path / "export" / "ab.jsonl").read_text().splitlines()]
    # "a" is whichever model was shown first: the export names the model, whatever the order on the page was
    assert [(r["winner"], r["shown_first"]) for r in rows] == [
        ("secret-sft", "secret-sft"),
        ("secret-ppo", "secret-ppo"),
    ]


def test_export_ranks_are_dense_with_flagged_answers_tied_last():
    assert export_ranks({"ranks": [2, 5, 5, None], "unacceptable": [False, False, False, True]}) == [
        1,
        2,
        2,
        3,
    ]
    assert export_ranks({"ranks": [None, 1, None], "unacceptable": [True, False, True]}) == [2, 1, 2]
    assert export_ranks({"ranks": [None, None], "unacceptable": [True, True]}) == [1, 1]


def test_a_bad_responses_file_stops_with_file_and_line(db, tmp_path):
    from rlhfkit.cli import main

    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "p", "responses": ["a", 3]}\n')
    with pytest.raises(DataError, match=r'answers.jsonl:2: field "responses\[1\]": expected a string'):
        from rlhfkit.data import load_responses

        load_responses(bad)
    assert (
        main(["label-server", "tasks", "add", "--db", db.path, "--kind", "rank", "--responses", str(bad)])
        == 2
    )
    assert db.task_sets() == []  # nothing half-made


def test_tasks_add_merges_identical_answers_and_counts_what_it_leaves_out(db, tmp_path, capsys):
    from rlhfkit.cli import main

    answers = tmp_path / "answers.jsonl"
    rows = [
        {"prompt": "p", "responses": ["a", "a", "b"]},
        {"prompt": "q", "responses": ["same", "same"]},
        {
            "prompt": "r",
            "responses": ["x", "x"],
            "ended": [True, False],
        },  # cut off once: two different answers
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ["--db", db.path, "--kind", "rank", "--responses", str(answers), "--name", "mine"]
    assert main(["label-server", "tasks", "add", *flags]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "2 answer(s) repeated another answer to their prompt" in said  # a twice in p, same twice in q
    assert "1 prompt(s) had fewer than 2 distinct answers" in said  # q
    items = [db.item(i) for i in (1, 2)]
    assert [[r["text"] for r in item.responses] for item in items] == [["a", "b"], ["x", "x"]]


# -- agreement, as reward/eval.json computes it ---------------------------------------------------------------


def test_agreement_is_reward_evals_inter_labeler_agreement_for_the_simulated_labelers():
    from rlhfkit.world import inter_labeler_agreement, labelers, split_prompts

    people = labelers(3, seed=0, noise=0.5, flip_rate=0.1)
    answers = ["洪崖洞、三峡博物馆。", "都江堰和三峡大坝。", "成都有春熙路。", "要求字数800字"]
    items = [(task.prompt, answers, [True] * 4) for task in split_prompts()["rm"][:12]]
    by_item = {}
    for n, (prompt, responses, ended) in enumerate(items):
        for who, person in enumerate(people):
            order = person.rank(prompt, responses, ended)
            by_item.setdefault(n, {})[f"l{who}"] = [order.index(i) + 1 for i in range(4)]
    ours = pairwise_agreement(by_item)
    assert ours["agreement"] == pytest.approx(inter_labeler_agreement(people, items), abs=1e-12)
    assert ours["pairs_of_people"] == 3 and ours["per_labeler"]["l0"]["pairs"] == 2 * 12 * 6


def test_agreement_leaves_out_pairs_either_person_tied():
    by_item = {1: {"a": [1, 2, 3], "b": [1, 3, 2]}, 2: {"a": [1, 1, 2], "b": [1, 2, 3]}}
    # item 1: (0,1) and (0,2) agree, (1,2) does not; item 2: (0,1) is tied by a, (0,2) and (1,2) agree
    result = pairwise_agreement(by_item)
    assert result["agreement"] == pytest.approx(4 / 5)
    assert result["per_labeler"]["a"] == {"agreement": pytest.approx(4 / 5), "pairs": 5, "others": 1}
    assert pairwise_agreement({1: {"a": [1, 2]}})["agreement"] is None  # one person: nothing to agree with


# -- eval --human ---------------------------------------------------------------------------------------------


def test_eval_human_reports_win_rates_with_the_panels_bootstrap_interval(db, tmp_path):
    from rlhfkit.config import EvalConfig
    from rlhfkit.evaluate import bootstrap_ci, run

    people = [db.add_user(name)[0] for name in ("ann", "bo")]
    models = {"secret-ppo": "runs/ppo", "secret-sft": "runs/sft"}  # compare_items' names
    task_set = db.add_task_set("ab", "compare", 2, "", {"models": models}, compare_items(6))

    def choose(item):  # prefer ppo on items 0-3, a tie on 4, sft on 5
        if item.position == 4:
            return {"choice": "tie"}
        wanted = "ppo" if item.position < 4 else "sft"
        shown = [r["model"] for r in item.responses]
        return {"choice": "a" if shown[0] == f"secret-{wanted}" else "b"}

    label_everything(db, task_set.id, people, choose)
    report = run(EvalConfig(human=db.path, out=str(tmp_path / "eval"), reference="secret-sft"))
    (result,) = report["comparisons"]
    wins = [1.0] * 8 + [0.5] * 2 + [0.0] * 2
    assert (result["model"], result["opponent"]) == ("secret-ppo", "secret-sft")
    assert result["win_rate"] == pytest.approx(sum(wins) / 12)
    groups = [i for i in range(6) for _ in range(2)]  # each prompt's two verdicts resampled together
    assert result["win_rate_ci"] == bootstrap_ci(wins, groups, seed=0)
    assert (result["n_verdicts"], result["n_prompts"], result["ties"]) == (12, 6, 2)
    assert (
        json.loads((tmp_path / "eval" / "human.json").read_text())["comparisons"][0]["win_rate"]
        == result["win_rate"]
    )
    assert len(verdicts(db.path)) == 12


def test_eval_human_without_comparisons_says_so(db, tmp_path):
    from rlhfkit.cli import main

    assert main(["eval", "--human", db.path, "--out", str(tmp_path)]) == 2
    assert main(["eval", "--human", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path)]) == 2


# -- the web app: every route's safety ------------------------------------------------------------------------


@pytest.fixture
def app_db(tmp_path):
    """An app over a database with a rank set (answers holding HTML), a compare set, two labelers and an admin."""
    db = Database(tmp_path / "labels.sqlite")
    tokens = {
        name: db.add_user(name, role)[1]
        for name, role in [("ann", "labeler"), ("bo", "labeler"), ("boss", "admin")]
    }
    items = rank_items(3)
    items[0]["responses"][0]["text"], items[0]["responses"][1]["text"] = XSS
    items[0]["prompt"] = "<b>bold</b> & <i>prompt</i>"
    db.add_task_set("r", "rank", 1, "<u>guidelines</u>", {}, items)
    db.add_task_set(
        "ab", "compare", 1, "", {"models": {"secret-ppo": "", "secret-sft": ""}}, compare_items(2)
    )
    return create_app(db.path, max_body=4096), db, tokens


def log_in(client: TestClient, token: str) -> str:
    """Log a TestClient in through the login page, as a browser does; returns the pages' CSRF token."""
    client.get("/login")
    response = client.post(
        "/api/login", json={"token": token}, headers={"X-CSRF-Token": client.cookies["rlhfkit_login"]}
    )
    assert response.status_code == 200, response.text
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


def test_every_route_but_the_login_refuses_a_request_without_a_valid_token(app_db):
    app, _, _ = app_db
    client = TestClient(app)
    routes = [(m, r.path) for r in app.routes if hasattr(r, "methods") for m in r.methods if m != "HEAD"]
    assert len(routes) >= 12
    for auth in [{}, {"Authorization": "Bearer wrong"}, {"Cookie": "rlhfkit_session=forged"}]:
        for method, path in routes:
            if (method, path) in PUBLIC:
                continue
            url = re.sub(r"\{[^}]+\}", "1", path)
            response = client.request(
                method, url, headers=auth, json={} if method == "POST" else None, follow_redirects=False
            )
            if path.startswith("/api/") or method != "GET":
                assert response.status_code == 401, (method, path, auth)
            else:  # a page sends the browser to the login
                assert (response.status_code, response.headers["location"]) == (303, "/login"), (method, path)
    assert client.get("/static/app.js").status_code == 200  # the app's own code is public, no data


def test_another_labelers_item_is_refused(app_db):
    app, db, tokens = app_db
    client = TestClient(app)
    ann, bo = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("ann", "bo"))
    item = client.get("/api/sets/1/next", headers=ann).json()["item"]
    for headers in (bo, {"Authorization": f"Bearer {tokens['boss']}"}):  # not even an admin labels it for ann
        assert client.get(f"/items/{item['id']}", headers=headers).status_code == 403
        assert client.post(f"/api/items/{item['id']}/label", json=RANK, headers=headers).status_code == 403
        assert client.post(f"/api/items/{item['id']}/skip", headers=headers).status_code == 403
    assert client.get("/items/999", headers=bo).status_code == 403  # missing or not yours: not told apart
    assert client.get("/admin", headers=ann).status_code == 403
    assert client.post("/api/admin/users", json={"name": "eve"}, headers=ann).status_code == 403
    assert client.post(f"/api/items/{item['id']}/label", json=RANK, headers=ann).status_code == 200
    assert db.labels(1)[0]["labeler"] == "ann"


def test_writes_without_the_sessions_csrf_token_or_from_another_site_are_refused(app_db):
    app, db, tokens = app_db
    client = TestClient(app)
    csrf = log_in(client, tokens["ann"])
    item = client.get("/api/sets/1/next").json()["item"]["id"]
    url = f"/api/items/{item}/label"
    for headers in [
        {},
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"},  # another port of this host is another origin
    ]:
        response = client.post(url, json=RANK, headers=headers)
        assert response.status_code == 403 and "error" in response.json(), headers
    assert db.labels(1) == []
    assert client.post("/api/logout").status_code == 403  # logging out is a write too
    ok = client.post(url, json=RANK, headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert ok.status_code == 200 and len(db.labels(1)) == 1
    # The login form has its own token: a cross-site page cannot log a browser into someone else's account.
    fresh = TestClient(app)
    assert fresh.post("/api/login", json={"token": tokens["ann"]}).status_code == 403
    fresh.get("/login")
    assert (
        fresh.post(
            "/api/login", json={"token": "wrong"}, headers={"X-CSRF-Token": fresh.cookies["rlhfkit_login"]}
        ).status_code
        == 401
    )


def test_html_in_prompts_answers_and_names_is_shown_as_text(app_db):
    app, db, tokens = app_db
    client = TestClient(app)
    log_in(client, tokens["ann"])
    page = client.get("/sets/1/next")
    assert page.status_code == 200 and page.headers["content-security-policy"].startswith(
        "default-src 'none'"
    )
    html = page.text
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html and "<script>window" not in html
    assert "&lt;img src=x onerror=&#34;window.pwned = 2&#34;&gt;" in html and "<img" not in html
    assert (
        "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;i&gt;prompt&lt;/i&gt;" in html
        and "&lt;u&gt;guidelines&lt;/u&gt;" in html
    )
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/static/app.js" defer>'
    ]  # no inline script at all
    # A person's name with markup in it cannot be made: names are letters, digits, _ . -
    admin = TestClient(app)
    log_in(admin, tokens["boss"])
    refused = admin.post(
        "/api/admin/users",
        json={"name": "<b>x</b>"},
        headers={
            "X-CSRF-Token": re.search(r'name="csrf-token" content="([^"]+)"', admin.get("/").text).group(1)
        },
    )
    assert refused.status_code == 422 and "letters" in refused.json()["error"]


def test_compare_pages_hide_the_models(app_db):
    app, _, tokens = app_db
    client = TestClient(app)
    log_in(client, tokens["ann"])
    html = client.get("/sets/2/next").text
    assert "q0 x" in html and "secret" not in html
    api = client.get("/api/sets/2/next").json()["item"]
    assert "secret" not in json.dumps(api) and [r["label"] for r in api["responses"]] == ["A", "B"]


def test_an_oversized_body_gets_413(app_db):
    app, db, tokens = app_db
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {tokens['ann']}"}
    item = client.get("/api/sets/1/next", headers=auth).json()["item"]["id"]
    big = {"ranks": [1, 2, 3, 4], "unacceptable": [False] * 4, "padding": "x" * 5000}
    assert client.post(f"/api/items/{item}/label", json=big, headers=auth).status_code == 413
    assert (
        client.post(
            "/api/login", content=b"{" + b" " * 5000 + b"}", headers={"Content-Type": "application/json"}
        ).status_code
        == 413
    )
    assert db.labels(1) == []
    bad = client.post(f"/api/items/{item}/label", json={"ranks": [1, 2]}, headers=auth)
    assert (
        bad.status_code == 422 and "one rank per answer" in bad.json()["error"]
    )  # a clear error, not a trace


# -- durability: kill -9 mid-load ----------------------------------------------------------------------------


def test_a_server_killed_mid_load_restarts_with_every_acknowledged_label(tmp_path):
    db = Database(tmp_path / "labels.sqlite")
    tokens = [db.add_user(f"l{i}")[1] for i in range(4)]
    db.add_user("boss", "admin")
    db.add_task_set("r", "rank", 2, "", {}, rank_items(300))
    server = Server(db.path).start()
    acknowledged, lock, stop = [], threading.Lock(), threading.Event()

    def labeler(token: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            while not stop.is_set():
                _, answer = call(conn, "GET", "/api/sets/1/next", token)
                status, label = call(conn, "POST", f"/api/items/{answer['item']['id']}/label", token, RANK)
                if status == 200:
                    with lock:
                        acknowledged.append(label["label_id"])
        except (OSError, http.client.HTTPException, KeyError, TypeError):
            return  # the server is gone

    threads = [threading.Thread(target=labeler, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while len(acknowledged) < 60 and time.time() < deadline:
        time.sleep(0.01)
    server.kill9()  # mid-load: requests are in flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 60
    with Server(db.path) as restarted:  # the same file, a new process: SQLite replays its log
        conn = http.client.HTTPConnection("127.0.0.1", restarted.port, timeout=10)
        assert call(conn, "GET", "/api/sets", tokens[0])[0] == 200
        stored = Database(db.path, create=False).labels(1)
    ids = [label["label_id"] for label in stored]
    assert set(acknowledged) <= set(ids), "an acknowledged label was lost"
    assert len(ids) == len(set(ids)) and len(acknowledged) == len(set(acknowledged))
    pairs = [(label["item"].id, label["labeler"]) for label in stored]
    assert len(pairs) == len(set(pairs))  # no one labelled an item twice
    rows, _ = set_rows(db.task_sets()[0], stored)
    assert sorted(r["label_id"] for r in rows) == sorted(ids)
