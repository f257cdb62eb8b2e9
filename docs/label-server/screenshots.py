"""The pictures of docs/label-server.md: each page of `rlhfkit label-server`, with the seed's own examples.

    .venv/bin/python docs/label-server/screenshots.py        (needs Debian's chromium and playwright)

Task sets are made through the CLI where it can (write, rank from a file); the compare set, which would need two
trained models, is stored directly with the seed's 环保 answers (a news item against a continued assignment).
Some labels are given through the API so that the admin page shows progress and agreement. Then the real
server runs on a free loopback port and headless Chromium takes each page. PNGs with a 64-colour palette.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from rlhfkit.cli import main
from rlhfkit.labelserver.db import Database
from rlhfkit.world import SEED_RANKINGS

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
ARGS += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]


def shot(page, name: str) -> None:
    path = HERE / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def api(port: int, token: str, method: str, path: str, body=None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    return json.loads(conn.getresponse().read())


def build(root: Path) -> tuple[str, dict]:
    db = str(root / "labels.sqlite")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p}, ensure_ascii=False) + "\n"
            for p in ["请写一篇关于环保的新闻稿。", "向一个6岁小孩解释什么是登录月球"]
        ),
        encoding="utf-8",
    )
    (chongqing, answers), (beijing, beijing_answers) = SEED_RANKINGS
    responses = root / "responses.jsonl"
    rows = [
        {
            "prompt": chongqing,
            "responses": [answers[1], answers[0], "我想去成都玩，有哪些好玩的地点呢？", answers[2]],
        },
        {"prompt": beijing, "responses": beijing_answers + ["<b>故宫</b>"]},
        {"prompt": chongqing, "responses": [answers[2], answers[0]]},
    ]
    responses.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    add = ["label-server", "tasks", "add", "--db", db]
    assert main([*add, "--kind", "write", "--prompts", str(prompts), "--name", "demos"]) == 0
    assert (
        main(
            [
                *add,
                "--kind",
                "rank",
                "--responses",
                str(responses),
                "--labels-per-item",
                "2",
                "--name",
                "rank-sft",
            ]
        )
        == 0
    )
    news = (
        "本报讯，春季植树活动中，志愿者共种下树苗三万多棵。本市全面推行垃圾分类，居民小区已基本实现分类投放。"
    )
    items = [
        {
            "prompt": "请写一篇关于环保的新闻稿。",
            "responses": [
                {"model": "gpt", "text": "要求字数800字，信息充分、清晰、叙述简洁。", "ended": True},
                {"model": "sft", "text": news, "ended": True},
            ],
        }
    ]
    database = Database(db)
    database.add_task_set(
        "gpt-vs-sft",
        "compare",
        1,
        "Which answer is better: more helpful, true and harmless? The two come from different models, in random order, and you are not told which.",
        {"models": {"sft": "runs/demo/sft", "gpt": "runs/demo/gpt"}},
        items,
    )
    tokens = {
        name: database.add_user(name, role)[1]
        for name, role in [("alice", "labeler"), ("bob", "labeler"), ("admin", "admin")]
    }
    return db, tokens


def main_() -> None:
    root = Path(tempfile.mkdtemp(prefix="label_server_docs_"))
    db, tokens = build(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit.cli", "label-server", "--db", db, "--port", str(port)]
    )
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    try:
        # bob ranks two items first; alice ranks the first of them in the browser: the admin page then has an agreement
        for who, ranks in (("bob", [2, 1, 3, 4]), ("bob", [1, 2, 3])):
            item = api(port, tokens[who], "GET", "/api/sets/2/next")["item"]
            k = len(item["responses"])
            api(
                port,
                tokens[who],
                "POST",
                f"/api/items/{item['id']}/label",
                {"ranks": ranks[:k], "unacceptable": [False] * k},
            )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium"), args=ARGS
            )
            page = browser.new_context(viewport={"width": 960, "height": 600}, locale="zh-CN").new_page()
            page.goto(url + "/")
            page.fill("#token", "••••••••••••••••")
            shot(page, "login")
            page.fill("#token", tokens["alice"])
            page.click("button[type=submit]")
            page.wait_for_url(url + "/")
            shot(page, "home")
            page.goto(url + "/sets/1/next")
            page.fill("#answer", "本报讯，本市今年新种树木三万棵，全面推行垃圾分类，空气质量持续改善。")
            shot(page, "write")
            page.goto(url + "/sets/2/next")
            cards = page.locator("#ranking .answer")
            cards.nth(1).drag_to(
                cards.nth(0), target_position={"x": 40, "y": 4}
            )  # the right answer to the top
            page.locator("#ranking .answer[data-index='3']").focus()
            page.keyboard.press("3")
            page.locator("#ranking .answer[data-index='2']").focus()
            page.keyboard.press("x")  # the continued question is no answer at all
            page.mouse.move(0, 0)
            shot(page, "rank")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            page.goto(url + "/sets/3/next")
            shot(page, "compare")
            with page.expect_navigation():
                page.keyboard.press("b")
            admin = browser.new_context(viewport={"width": 960, "height": 600}).new_page()
            admin.goto(url + "/login")
            admin.fill("#token", tokens["admin"])
            admin.click("button[type=submit]")
            admin.wait_for_url(url + "/admin")
            shot(admin, "admin")
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main_()
