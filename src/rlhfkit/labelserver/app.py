"""The label server's web app: pages for people, a JSON API for scripts, one process (FastAPI + uvicorn).

Why this stack: FastAPI (on Starlette) gives routing, JSON bodies, a request body limit and Jinja2 templates
that escape everything by default; uvicorn serves it. Pages are plain HTML, `static/app.js` is vanilla JS and
`static/style.css` plain CSS — no build step, nothing fetched from a CDN.

Safety, route by route (`guard` runs before every route, so a new route cannot forget it):
- Authentication on every route but the login page, the login call and the static files (the app's own code):
  a browser logs in with its person's token and gets a session cookie (HttpOnly, SameSite=Strict); a script
  sends `Authorization: Bearer TOKEN`. Without either, pages redirect to /login and the API answers 401.
  An item is shown to, and labelled by, only the person it was handed to (else 403); /admin is for admins.
- CSRF: every write from a browser session carries the session's CSRF token in `X-CSRF-Token` (the pages put
  it in a <meta>); a request with an Origin or Sec-Fetch-Site of another site is refused before that. The login
  call checks a token of its own (double-submit cookie). A Bearer request needs none: no browser attaches that
  header to a cross-site request by itself.
- Escaping: every prompt, answer and name goes through Jinja2's autoescape (model output can hold HTML), the
  JS sets text with textContent only, and the Content-Security-Policy allows no inline script at all.
- Request bodies above `max_body` bytes get 413 before they reach a route.
- A label is committed, fsync'd, before the answer that acknowledges it is sent (`db.Database.submit`).
"""

from __future__ import annotations

import hmac
import json
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from rlhfkit.labelserver.db import Database, Item, LabelError, NotYours, TaskSet, User
from rlhfkit.labelserver.export import agreement, set_rows
from rlhfkit.labelserver.labels import check_label

HERE = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_session"
LOGIN_COOKIE = "rlhfkit_login"  # the login form's CSRF token (double submit)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC = {("GET", "/login"), ("HEAD", "/login"), ("POST", "/api/login")}
JSONBody = Annotated[dict[str, Any], Body()]  # a JSON object; anything else is a 422 naming the problem
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    db_path: str, max_body: int = 256 * 1024, lease: float = 1800.0, secure_cookies: bool = False
) -> FastAPI:
    """The app over the database at `db_path`. `lease`: seconds an item handed out is kept for its person;
    `secure_cookies`: mark cookies Secure (when a TLS proxy stands in front)."""
    db = Database(db_path)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, max_body_size=max_body)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    pages = Pages()
    add_guard(app, db, pages)
    add_login_routes(app, db, pages, secure_cookies)
    add_labelling_routes(app, db, pages, lease)
    add_admin_routes(app, db, pages)
    app.state.db = db
    return app


class Pages:
    """The HTML pages, rendered with the person and CSRF token `guard` put on the request."""

    def __init__(self):
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
        self.templates = Jinja2Templates(env=env)

    def page(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        csrf = getattr(request.state, "csrf", None) or ""
        return self.templates.TemplateResponse(
            request, name, {"user": user, "csrf": csrf, **context}, status_code=status
        )

    def refuse(self, request: Request, status: int, message: str) -> Response:
        """JSON for the API and for writes, an error page for a page."""
        if request.url.path.startswith("/api/") or request.method not in SAFE_METHODS:
            return JSONResponse({"error": message}, status_code=status)
        return self.page(request, "error.html", status=status, status_code=status, message=message)


def add_guard(app: FastAPI, db: Database, pages: Pages) -> None:
    """The checks every request passes before its route (origin, login, CSRF, admin), the security headers on
    every answer, and a 422 that names what a bad request body got wrong."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path, method = request.url.path, request.method
        if method not in SAFE_METHODS and not same_origin(request):
            response = JSONResponse({"error": "cross-site request refused"}, status_code=403)
        elif path.startswith("/static/") or (method, path) in PUBLIC:
            response = await call_next(request)
        else:
            who = authenticate(db, request)  # one indexed read: cheaper in the loop than a thread hop
            if who is None:
                if path.startswith("/api/") or method not in SAFE_METHODS:
                    response = JSONResponse(
                        {"error": "log in first: no valid token or session"}, status_code=401
                    )
                else:
                    response = RedirectResponse("/login", status_code=303)
            else:
                request.state.user, request.state.csrf = who
                sent = request.headers.get("x-csrf-token", "")
                if method not in SAFE_METHODS and who[1] and not hmac.compare_digest(sent, who[1]):
                    response = JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, 403)
                elif path.startswith("/admin") or path.startswith("/api/admin/"):
                    if who[0].is_admin:
                        response = await call_next(request)
                    else:
                        response = pages.refuse(request, 403, "this page is for admins")
                else:
                    response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)


def add_login_routes(app: FastAPI, db: Database, pages: Pages, secure_cookies: bool) -> None:
    """Logging in with a person's token (the form's own CSRF token is a double-submit cookie) and out."""

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        # Kept while the browser has one: two tabs of the login page (or a favicon request redirected here)
        # must not make each other's form stale.
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        response = pages.page(request, "login.html", login_csrf=token)
        response.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies, max_age=3600
        )
        return response

    @app.post("/api/login")
    def login(request: Request, body: JSONBody):
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(request.headers.get("x-csrf-token", ""), expected):
            return JSONResponse({"error": "the login form expired: reload the page"}, status_code=403)
        user = db.user_by_token(str(body.get("token", "")).strip())
        if user is None:
            return JSONResponse({"error": "unknown token"}, status_code=401)
        session, _ = db.create_session(user)
        response = JSONResponse({"ok": True, "next": "/admin" if user.is_admin else "/"})
        response.set_cookie(
            SESSION_COOKIE,
            session,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
            max_age=int(7 * 24 * 3600),
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/api/logout")
    def logout(request: Request):
        if request.cookies.get(SESSION_COOKIE):
            db.delete_session(request.cookies[SESSION_COOKIE])
        response = JSONResponse({"ok": True, "next": "/login"})
        response.delete_cookie(SESSION_COOKIE)
        return response


def add_labelling_routes(app: FastAPI, db: Database, pages: Pages, lease: float) -> None:
    """The sets, the next item of one (held for its person `lease` seconds), and labelling or skipping it."""

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        user = request.state.user
        mine = db.user_progress(user)
        return pages.page(request, "home.html", sets=[(s, mine[s.id]) for s in db.task_sets()])

    @app.get("/api/sets")
    def list_sets(request: Request):
        mine = db.user_progress(request.state.user)
        return {"sets": [{**set_view(s), **mine[s.id]} for s in db.task_sets()]}

    @app.get("/sets/{set_id}/next")
    def next_page(request: Request, set_id: int):
        task_set = db.task_set(set_id)
        if task_set is None:
            return pages.refuse(request, 404, "no such task set")
        item = db.next_item(request.state.user, set_id, lease)
        if item is None:
            mine = db.user_progress(request.state.user)[set_id]
            return pages.page(request, "done.html", task_set=task_set, mine=mine)
        return RedirectResponse(f"/items/{item.id}", status_code=303)

    @app.get("/api/sets/{set_id}/next")
    def next_item(request: Request, set_id: int):
        task_set = db.task_set(set_id)
        if task_set is None:
            return pages.refuse(request, 404, "no such task set")
        item = db.next_item(request.state.user, set_id, lease)
        return {"item": None if item is None else item_view(task_set, item)}

    def held_item(request: Request, item_id: int) -> tuple[TaskSet, Item] | Response:
        """The item and its set when it was handed to this person, else the refusal to send."""
        item = db.item(item_id)
        if item is None or db.assignment(request.state.user, item_id) is None:
            return pages.refuse(request, 403, "this item was not given to you")  # nor say whether it exists
        return db.task_set(item.set_id), item

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    def item_page(request: Request, item_id: int):
        held = held_item(request, item_id)
        if isinstance(held, Response):
            return held
        task_set, item = held
        if db.assignment(request.state.user, item_id) != "open":
            return RedirectResponse(f"/sets/{task_set.id}/next", status_code=303)
        view = item_view(task_set, item)
        return pages.page(request, f"{task_set.kind}.html", task_set=task_set, item=item, view=view)

    @app.post("/api/items/{item_id}/label")
    def submit(request: Request, item_id: int, body: JSONBody):
        held = held_item(request, item_id)
        if isinstance(held, Response):
            return held
        task_set, item = held
        try:
            value = check_label(task_set.kind, item, body)
            label_id, repeated = db.submit(request.state.user, item_id, value)
        except NotYours:
            return pages.refuse(request, 403, "this item was not given to you")
        except LabelError as err:
            return JSONResponse(
                {"error": str(err)}, status_code=422 if "cannot be changed" not in str(err) else 409
            )
        # Sent only now: the label is on disk.
        return {"label_id": label_id, "repeated": repeated, "next": f"/sets/{task_set.id}/next"}

    @app.post("/api/items/{item_id}/skip")
    def skip(request: Request, item_id: int):
        held = held_item(request, item_id)
        if isinstance(held, Response):
            return held
        db.skip(request.state.user, item_id)
        return {"ok": True, "next": f"/sets/{held[0].id}/next"}


def add_admin_routes(app: FastAPI, db: Database, pages: Pages) -> None:
    """Progress and agreement per set, adding people, and a set's labels as the JSONL the stages read
    (`guard` lets only admins here)."""

    def overview() -> list[dict]:
        progress = db.progress()
        out = []
        for task_set in db.task_sets():
            labels = db.labels(task_set.id)
            out.append(
                {**set_view(task_set), **progress[task_set.id], "agreement": agreement(task_set, labels)}
            )
        return out

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request):
        return pages.page(request, "admin.html", sets=overview(), people=db.users(), db_path=db.path)

    @app.get("/api/admin/progress")
    def admin_progress(request: Request):
        return {"sets": overview(), "people": [{"name": u.name, "role": u.role} for u in db.users()]}

    @app.post("/api/admin/users")
    def add_person(request: Request, body: JSONBody):
        try:
            user, token = db.add_user(
                str(body.get("name", "")).strip(), "admin" if body.get("admin") else "labeler"
            )
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        return {"name": user.name, "role": user.role, "token": token}

    @app.get("/admin/export/{set_id}.jsonl")
    def download(request: Request, set_id: int):
        task_set = db.task_set(set_id)
        if task_set is None:
            return pages.refuse(request, 404, "no such task set")
        rows, _ = set_rows(task_set, db.labels(set_id))
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return Response(
            text,
            media_type="application/x-ndjson; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{task_set.name}.jsonl"'},
        )


def authenticate(db: Database, request: Request) -> tuple[User, str | None] | None:
    """(person, CSRF token of their browser session — None for a Bearer request) or None."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        user = db.user_by_token(header[7:].strip())
        return (user, None) if user else None
    session = request.cookies.get(SESSION_COOKIE)
    return db.session(session) if session else None


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin / Sec-Fetch-Site headers)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site request: those always carry Origin on a POST
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def set_view(task_set: TaskSet) -> dict:
    return {
        "id": task_set.id,
        "name": task_set.name,
        "kind": task_set.kind,
        "labels_per_item": task_set.labels_per_item,
    }


def item_view(task_set: TaskSet, item: Item) -> dict:
    """What a labeler is shown of an item: never which model wrote a compare answer."""
    shown = [{"text": r["text"], "ended": r["ended"]} for r in item.responses]
    if task_set.kind == "compare":
        shown = [{"label": label, **r} for label, r in zip("AB", shown)]
    return {
        "id": item.id,
        "set": task_set.name,
        "kind": task_set.kind,
        "prompt": item.prompt,
        "context": item.context,
        "responses": shown,
        "instructions": task_set.instructions,
    }
