"""The label server end to end in headless Chromium (Debian's `chromium`, driven by Playwright's Python API):
people log in, write a demonstration, rank 4 answers by dragging and by keys, compare two models' answers blind;
an admin sees progress and agreement; the export trains `rlhfkit sft` and `rlhfkit reward` and `rlhfkit eval
--human` reports it, without edits. Also: HTML in answers stays inert, and a cross-site form post is refused.

Without chromium these tests skip with the reason — except under CI (the CI variable set, as `.ci/run` does),
where a missing browser fails. The docs' pictures of the pages come from docs/label-server/screenshots.py.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading

import pytest

from conftest import read_jsonl
from label_server_helpers import Server, free_port
from rlhfkit.cli import main
from rlhfkit.labelserver.db import Database

# Without the networking flags Chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = ["<script>window.pwned = 1</script>", '<img src=x onerror="window.pwned = 2">']


def chromium() -> str:
    path = os.environ.get("RLHFKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if not path:
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {' and '.join(missing)} for the browser tests: .ci/run installs them")
        pytest.skip(f"{' and '.join(missing)} not installed; CI runs these tests")
    return path


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tiny_gpt, tiny_sft, tmp_path_factory):
    """A database with a write set, a rank set of the SFT model's samples, a rank set of answers holding HTML,
    a compare set of two models; two labelers; and a running server whose admin it made itself."""
    from rlhfkit.world import split_prompts

    root = tmp_path_factory.mktemp("label_server")
    db = str(root / "labels.sqlite")

    def prompts(name: str, split: str, n: int) -> str:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": t.prompt}) + "\n" for t in split_prompts()[split][:n]))
        return str(path)

    answers = root / "answers.jsonl"
    answers.write_text(
        json.dumps({"prompt": "<b>哪个回答更好？</b>", "responses": ["回答一", *XSS, "回答四"]}) + "\n"
    )
    add = ["label-server", "tasks", "add", "--db", db, "--max-new-tokens", "12"]
    assert main([*add, "--kind", "write", "--prompts", prompts("write", "rl", 2), "--name", "demos"]) == 0
    assert main([*add, "--kind", "write", "--prompts", prompts("csrf", "rl", 1), "--name", "csrf"]) == 0
    assert (
        main(
            [*add, "--kind", "rank", "--responses", str(answers), "--labels-per-item", "2", "--name", "html"]
        )
        == 0
    )
    rank = ["--kind", "rank", "--prompts", prompts("rank", "rm", 2), "--model", str(tiny_sft), "--k", "4"]
    assert main([*add, *rank, "--labels-per-item", "2", "--name", "sft-k4"]) == 0
    models = ["--models", f"sft-model={tiny_sft}", f"gpt-model={tiny_gpt}"]
    assert (
        main([*add, "--kind", "compare", "--prompts", prompts("compare", "eval", 2), *models, "--name", "ab"])
        == 0
    )
    database = Database(db)
    tokens = {name: database.add_user(name)[1] for name in ("alice", "bob")}
    server = Server(db).start()
    tokens["admin"] = server.proc.stdout.readline().strip()  # made at the first start, shown once
    yield {"url": server.url, "db": db, "tokens": tokens, "root": root, "models": (tiny_gpt, tiny_sft)}
    server.stop()


def open_page(browser, site, who: str):
    """A fresh browser context logged in as `who` through the login page: (page, its script errors)."""
    context = browser.new_context(viewport={"width": 960, "height": 640}, locale="zh-CN")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(site["url"] + "/")
    assert page.url.endswith("/login")
    page.fill("#token", site["tokens"][who])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/(admin)?$"))
    return page, errors


def start(page, task_set: str) -> None:
    page.click(f"tr:has(td:text-is('{task_set}')) a.button")
    page.wait_for_url(re.compile(r"/items/\d+$"))


def submitted(page, before: str) -> None:
    """Wait until the page has moved on from `before`: the server acknowledged the label."""
    page.wait_for_function("url => window.location.href !== url", arg=before)
    page.wait_for_load_state()


def ranks_shown(page) -> list[str]:
    return page.locator("#ranking .answer .rank").all_inner_texts()


def test_people_label_in_a_browser_and_the_stages_train_on_the_export(browser, site, tmp_path):
    db = Database(site["db"], create=False)
    sets = {s.name: s for s in db.task_sets()}

    # alice: log in, see the task sets, write a demonstration
    page, errors = open_page(browser, site, "alice")
    assert page.locator("td:text-is('demos')").count() == 1
    start(page, "demos")
    page.fill("#answer", "我是 alice 写的回答。<b>不是粗体</b>")
    before = page.url
    page.press("#answer", "Control+Enter")
    submitted(page, before)
    (label,) = db.labels(sets["demos"].id)
    assert label["labeler"] == "alice" and label["value"] == {"text": "我是 alice 写的回答。<b>不是粗体</b>"}
    page.fill("#answer", "第二个回答。")
    before = page.url  # read before the click: the page may have moved on by the time click() returns
    page.click("#submit")
    submitted(page, before)
    assert page.locator("h1").inner_text().startswith("Nothing left for you in demos")

    # alice ranks the four answers of "html": drag the fourth to the top, tie another with it by key, flag one
    page.goto(site["url"] + "/")
    start(page, "html")
    cards = page.locator("#ranking .answer")
    assert cards.count() == 4 and ranks_shown(page) == ["–"] * 4
    fourth, first = cards.nth(3), cards.nth(0)
    fourth.drag_to(first, target_position={"x": 40, "y": 4})  # dropped on the upper edge: before it
    assert page.locator("#ranking .answer").evaluate_all("cs => cs.map(c => c.dataset.index)") == [
        "3",
        "0",
        "1",
        "2",
    ]
    assert ranks_shown(page) == ["1", "2", "3", "4"]
    page.locator("#ranking .answer[data-index='2']").focus()
    page.keyboard.press("1")  # ties answer 2 with answer 3 at the top
    page.locator("#ranking .answer[data-index='1']").focus()
    page.keyboard.press("x")  # answer 1 (the <script> one) is unacceptable
    order = page.locator("#ranking .answer").evaluate_all("cs => cs.map(c => c.dataset.index)")
    assert order == ["3", "2", "0", "1"] and ranks_shown(page) == ["1", "1", "2", "✗"]
    before = page.url
    page.keyboard.press("Enter")
    submitted(page, before)
    (label,) = db.labels(sets["html"].id)
    assert label["value"] == {"ranks": [2, None, 1, 1], "unacceptable": [False, True, False, False]}

    # alice and bob rank the SFT model's samples by keys alone, typing one rank after another (focus moves on):
    # alice 1, 2, 3, 4, bob 4, 3, 2, 1 — opposite orders, so their agreement is 0
    bob, bob_errors = open_page(browser, site, "bob")
    for person, keys in ((page, "1234"), (bob, "4321")):
        person.goto(site["url"] + "/")
        start(person, "sft-k4")
        while "/items/" in person.url:
            k = person.locator("#ranking .answer").count()  # 4 unless two samples were the same text
            for key in keys[:k] if keys[0] == "1" else keys[-k:]:
                person.keyboard.press(key)
            before = person.url
            person.keyboard.press("Enter")
            submitted(person, before)
    n_items = db.progress()[sets["sft-k4"].id]["items"]
    assert n_items == 2 and len(db.labels(sets["sft-k4"].id)) == 2 * n_items
    for label in db.labels(sets["sft-k4"].id):
        k = len(label["item"].responses)
        expected = list(range(1, k + 1)) if label["labeler"] == "alice" else list(range(k, 0, -1))
        assert label["value"]["ranks"] == expected

    # bob compares the two models' answers blind: keys a, then t
    bob.goto(site["url"] + "/")
    start(bob, "ab")
    html = bob.content()
    assert "-model" not in html and "A" in bob.locator(".pair h2").all_inner_texts()
    for key in "at":
        before = bob.url
        bob.keyboard.press(key)
        submitted(bob, before)
    verdicts = [label["value"]["choice"] for label in db.labels(sets["ab"].id)]
    assert verdicts == ["a", "tie"]

    # the admin: progress and agreement per task set, a new labeler with a token shown once
    admin, admin_errors = open_page(browser, site, "admin")
    assert admin.url.endswith("/admin")
    rows = admin.locator("#progress tbody tr").all_inner_texts()
    assert any(r.startswith("sft-k4") and "2 / 2" in r for r in rows)
    agreement = admin.locator("#labelers tbody tr:has(td:text-is('sft-k4'))").first.inner_text()
    assert "0.00" in agreement  # alice and bob ordered every pair oppositely
    admin.fill("#person-name", "carol")
    admin.click("#add-person button")
    admin.wait_for_selector("#new-token:not([hidden])")
    token = admin.locator("#new-token .token-value").inner_text()
    assert Database(site["db"], create=False).user_by_token(token).name == "carol"
    assert errors == bob_errors == admin_errors == []  # no script error on any page

    # the export loads in the stages as it is
    out = tmp_path / "export"
    assert main(["label-server", "export", "--db", site["db"], "--out", str(out)]) == 0
    gpt, sft = (str(m) for m in site["models"])
    tiny = ["--max-len", "64", "--save-every", "0", "--log-every", "1"]
    assert (
        main(
            [
                "sft",
                "--model",
                gpt,
                "--data",
                str(out / "demos.jsonl"),
                "--out",
                str(tmp_path / "sft"),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                *tiny,
            ]
        )
        == 0
    )
    rankings = read_jsonl(out / "sft-k4.jsonl")
    assert len(rankings) == 4 and {r["labeler"] for r in rankings} == {"alice", "bob"}
    reward = [
        "reward",
        "--model",
        sft,
        "--data",
        str(out / "sft-k4.jsonl"),
        "--demonstrations",
        str(out / "demos.jsonl"),
    ]
    assert (
        main(
            [
                *reward,
                "--out",
                str(tmp_path / "rm"),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--val-fraction",
                "0",
                *tiny,
            ]
        )
        == 0
    )
    assert (tmp_path / "rm" / "model.safetensors").exists() and (
        tmp_path / "sft" / "model.safetensors"
    ).exists()
    assert (
        main(["eval", "--human", site["db"], "--reference", "gpt-model", "--out", str(tmp_path / "eval")])
        == 0
    )
    (result,) = json.loads((tmp_path / "eval" / "human.json").read_text())["comparisons"]
    assert (result["model"], result["n_verdicts"], result["ties"]) == ("sft-model", 2, 1)


def test_html_in_answers_is_inert_in_the_browser(browser, site):
    page, errors = open_page(browser, site, "bob")
    start(page, "html")  # two labels per item: bob gets the item alice ranked too
    texts = page.locator("#ranking .answer .text").all_inner_texts()
    assert XSS[0] in texts and XSS[1] in texts  # shown as the characters the model wrote
    assert page.locator("#ranking img, #ranking script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.locator(".prompt .text").inner_text() == "<b>哪个回答更好？</b>"
    assert errors == []


def test_a_cross_site_form_post_is_refused(browser, site):
    """Another site's page posts a form at the label server while the person is logged in there."""
    page, _ = open_page(browser, site, "alice")
    csrf_set = next(s.id for s in Database(site["db"], create=False).task_sets() if s.name == "csrf")
    item = page.evaluate(f"fetch('/api/sets/{csrf_set}/next').then(r => r.json())")["item"]
    target = f"{site['url']}/api/items/{item['id']}/label"  # an item alice holds: her own post would count
    evil = f"""<form method=post action="{target}" enctype="text/plain">
    <input name='{{"text": "forged", "x": "' value='"}}'></form><script>document.forms[0].submit()</script>"""

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(evil.encode())

        def log_message(self, *args):
            pass

    port = free_port()
    evil_server = http.server.HTTPServer(("127.0.0.1", port), Evil)  # 127.0.0.1, another port: the same site
    threading.Thread(target=evil_server.serve_forever, daemon=True).start()
    try:
        with page.expect_response(lambda r: r.url == target) as answer:
            page.goto(f"http://127.0.0.1:{port}/")
        assert answer.value.status == 403
    finally:
        evil_server.shutdown()
    db = Database(site["db"], create=False)
    assert (
        db.labels(csrf_set) == []
        and db.assignment(db.user_by_token(site["tokens"]["alice"]), item["id"]) == "open"
    )
