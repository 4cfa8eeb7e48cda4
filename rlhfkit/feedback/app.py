"""The ranking web app: one page (templates/label.html) and a small JSON API over the store.

    GET  /                   the labeling page        GET /admin   the same page, admin view
    GET  /api/me             who the token belongs to, their role, the project, K, guidelines
    GET  /api/next           the next prompt to rank (null when none is left) and progress
    GET  /api/prompts/{id}   a prompt given to the annotator, with their own ranking of it
    GET  /api/previous       the prompt ranked before ?before=ID (or the last one): "go back"
    POST /api/rankings       {prompt_id, rankings: {criterion: {completion id: rank}} (or, with one
                             criterion, order | ranks), skip, unsafe, comment, submission_id}
    GET  /api/admin          progress per member and round, agreement (the project's admins only)
    GET  /api/admin/prompts  every ranked prompt: rankings, skips, flags, comments, disagreement
    GET  /api/admin/prompts/{id}  one prompt with every annotator's ranking, flag and comment

Every /api call needs `Authorization: Bearer <token>` of a member of the project (401 without a
known, unrevoked token; 403 for someone who is no member). The queue is enforced here, not only
by the page: an annotator reads and ranks only prompts handed to them by /api/next (or ranked
by them before), and no prompt collects more than N rankings. Errors are JSON `{"error": "..."}`
naming the wrong item: 404 unknown prompt, 403 a prompt not given to this annotator (or an
admin view without the admin role), 422 a ranking that is not one of exactly the shown
completions (or a malformed body), 409 a clash with stored data (a prompt whose N rankings are
in, a submission id reused for other content), 413 a body over the limit, 503 a database that
is busy or gone (safe to retry: submissions are idempotent on their submission_id, which names
one content).

Prompts and completions are untrusted model output: the page only ever puts them in the DOM
as text (textContent), and a Content-Security-Policy with a fresh nonce per page load lets no
script run but the page's own.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import jinja2
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhfkit.feedback.checks import MAX_COMMENT_CHARS, MAX_K, MAX_SUBMISSION_ID_CHARS
from rlhfkit.feedback.errors import (
    Conflict,
    DatabaseUnavailable,
    FeedbackError,
    Forbidden,
    InvalidRanking,
    NotFound,
)
from rlhfkit.feedback.records import AnnotatorInfo, PromptDetail, PromptView
from rlhfkit.feedback.store import FeedbackStore

MAX_CRITERIA = 20
"""Most criteria one submission may carry (a page asks for one ranking per criterion)."""
MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (a ranking with a full comment is under 4 KiB)."""
REQUEST_TIMEOUT_S = 15
"""How long the page waits for an answer before retrying a submission (same submission id)."""
ADMIN_TEXT_CHARS = 200
"""Prompt text shown per row of the admin page's prompt table (the whole text is one click away)."""

_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
_PAGE_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_templates = jinja2.Environment(loader=jinja2.PackageLoader("rlhfkit.feedback", "templates"), autoescape=True)


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------
class RankingIn(BaseModel):
    """A ranking as the page (or any client) sends it."""

    model_config = ConfigDict(extra="forbid")

    prompt_id: StrictInt
    order: list[StrictInt] | None = Field(None, max_length=MAX_K, description="completion ids, best first")
    ranks: dict[int, StrictInt] | None = Field(None, max_length=MAX_K, description="completion id -> rank, 0 best")
    rankings: dict[str, dict[int, StrictInt]] | None = Field(
        None, max_length=MAX_CRITERIA, description="criterion name -> {completion id -> rank}: one per criterion"
    )
    skip: StrictBool = False
    unsafe: StrictBool = False
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)
    submission_id: str = Field(
        min_length=8, max_length=MAX_SUBMISSION_ID_CHARS, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="a fresh random id per ranking; send the same one again when retrying",
    )


# ---------------------------------------------------------------------------------------------
# Headers and limits on every response (pure ASGI: no per-request task overhead)
# ---------------------------------------------------------------------------------------------
class _Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        error = None
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            error = 413, f"request body over the limit of {MAX_BODY_BYTES} bytes"
        elif scope["method"] in ("POST", "PUT", "PATCH") and length is None:
            error = 411, "send the request body with a Content-Length header"
        if error is not None:
            response = JSONResponse({"error": error[1]}, status_code=error[0])
            await response(scope, receive, self._secure(send))
            return
        await self.app(scope, receive, self._secure(send))

    @staticmethod
    def _secure(send: Send) -> Send:
        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                if "content-security-policy" not in h:
                    h["Content-Security-Policy"] = _API_CSP
                h["X-Content-Type-Options"] = "nosniff"
                h["Referrer-Policy"] = "no-referrer"
                h["Cache-Control"] = "no-store"
            await send(message)

        return send_secure


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
def create_app(
    store: FeedbackStore, project: str, annotators_per_prompt: int = 1, *, shuffle: bool = True
) -> FastAPI:
    """The labeling app for one project of `store`.

    `annotators_per_prompt`: how many annotators rank each prompt. `shuffle`: show each
    annotator the completions in their own random (but fixed) order, so that the stored order
    (and position bias) does not leak into the rankings.
    """
    info = store.project(project)  # an unknown project fails here, not at the first request
    if isinstance(annotators_per_prompt, bool) or not isinstance(annotators_per_prompt, int) or (
        annotators_per_prompt < 1
    ):
        raise FeedbackError(f"annotators_per_prompt must be an integer >= 1, got {annotators_per_prompt!r}")
    n = annotators_per_prompt
    app = FastAPI(title=f"rlhfkit feedback: {info.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard)

    def annotator(authorization: Annotated[str | None, Header()] = None) -> AnnotatorInfo:
        # Looked up on every request (one indexed query), never cached: a revoked or rotated
        # token, or a removed member, is refused from the next request on.
        if not authorization:
            raise _unauthorized("missing token: sign in with your annotator token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("the Authorization header must be 'Bearer <token>'")
        who = store.annotator_for_token(token, info)
        if who is None:
            raise _unauthorized("unknown or revoked token: check it, or ask the project admin for a new one")
        if who.role is None:
            raise HTTPException(403, f"annotator {who.name!r} is not a member of project {info.name!r}; ask its admin "
                                     f"to add you (rlhfkit feedback add-member {who.name} --project {info.name})")
        return who

    signed_in = Depends(annotator)

    def admin_only(who: AnnotatorInfo = signed_in) -> AnnotatorInfo:
        if not who.is_admin:
            raise HTTPException(403, f"this page needs an admin of project {info.name!r} "
                                     f"(rlhfkit feedback add-member NAME --project {info.name} --admin)")
        return who

    an_admin = Depends(admin_only)

    def prompt_json(view: PromptView | None, who: AnnotatorInfo) -> dict[str, Any] | None:
        if view is None:
            return None
        completions = [{"id": c.id, "text": c.text} for c in view.completions]  # no model ids: no bias
        if shuffle:
            random.Random(f"{who.id}/{view.id}").shuffle(completions)  # same order on every visit
        r = view.ranking
        return {
            "id": view.id,
            "position": view.position,
            "text": view.text,
            "completions": completions,
            "criteria": [{"name": c.name, "description": c.description} for c in view.criteria],
            "ranking": None if r is None else {
                "ranks": {str(k): v for k, v in r.ranks.items()},
                "rankings": _rankings_json(r.by_criterion),
                "skip": r.skip, "unsafe": r.unsafe, "comment": r.comment, "updated_at": r.updated_at,
            },
        }

    def progress_json(who: AnnotatorInfo) -> dict[str, int]:
        done, left = store.standing(info, who, n)
        return {"done": done, "left": left}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = _templates.get_template("label.html").render(
            nonce=nonce, request_timeout_ms=REQUEST_TIMEOUT_S * 1000, max_comment_chars=MAX_COMMENT_CHARS
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": _PAGE_CSP.format(nonce=nonce)})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/me")
    def me(who: AnnotatorInfo = signed_in) -> dict[str, Any]:
        return {"name": who.name, "admin": who.is_admin, "role": who.role, "project": info.name, "k": info.k,
                "annotators_per_prompt": n, "guidelines": store.project(info.name).guidelines,
                "criteria": [{"name": c.name, "description": c.description} for c in store.criteria(info)]}

    @app.get("/api/next")
    def next_prompt(who: AnnotatorInfo = signed_in) -> dict[str, Any]:
        view = store.next_prompt(info, who, n)
        return {"prompt": prompt_json(view, who), "progress": progress_json(who)}

    @app.get("/api/prompts/{prompt_id}")
    def get_prompt(prompt_id: int, who: AnnotatorInfo = signed_in) -> dict[str, Any]:
        return {"prompt": prompt_json(store.prompt(prompt_id, who, project=info, given_only=True), who)}

    @app.get("/api/previous")
    def previous(before: Annotated[int | None, Query()] = None, who: AnnotatorInfo = signed_in) -> dict[str, Any]:
        return {"prompt": prompt_json(store.previous_prompt(info, who, before), who)}

    @app.post("/api/rankings")
    def submit(body: RankingIn, who: AnnotatorInfo = signed_in) -> JSONResponse:
        result = store.submit_ranking(
            who, body.prompt_id, body.ranks, order=body.order, skip=body.skip, unsafe=body.unsafe,
            comment=body.comment, submission_id=body.submission_id, project=info, annotators_per_prompt=n,
            rankings=body.rankings,
        )
        r = result.ranking
        payload = {
            "ranking": {"prompt_id": r.prompt_id, "ranks": {str(k): v for k, v in r.ranks.items()},
                        "rankings": _rankings_json(r.by_criterion), "skip": r.skip,
                        "unsafe": r.unsafe, "comment": r.comment, "submission_id": r.submission_id},
            "created": result.created,
            "duplicate": result.duplicate,
        }
        return JSONResponse(payload, status_code=201 if result.created and not result.duplicate else 200)

    @app.get("/api/admin")
    def admin(who: AnnotatorInfo = an_admin) -> dict[str, Any]:
        by_criterion = {name: dataclasses.asdict(report) for name, report in store.agreements(info).items()}
        return {
            "progress": dataclasses.asdict(store.progress(info.name, n)),
            "agreement": next(iter(by_criterion.values())),  # by the first criterion
            "agreement_by_criterion": by_criterion,
        }

    @app.get("/api/admin/prompts")
    def admin_prompts(who: AnnotatorInfo = an_admin) -> dict[str, Any]:
        rows = [dataclasses.asdict(p) for p in store.prompt_summaries(info)]
        for row in rows:
            row["text"] = row["text"][:ADMIN_TEXT_CHARS]
        return {"prompts": rows}

    @app.get("/api/admin/prompts/{prompt_id}")
    def admin_prompt(prompt_id: int, who: AnnotatorInfo = an_admin) -> dict[str, Any]:
        return {"prompt": detail_json(store.prompt_detail(info, prompt_id))}

    _add_error_handlers(app)
    return app


def detail_json(d: PromptDetail) -> dict[str, Any]:
    """The admin's view of one prompt: completions in stored order (with the model that wrote
    each), and each annotator's ranks aligned with them (null for a skip), by the first criterion
    ("ranks") and by each criterion ("rankings": null where they gave none by it)."""

    def aligned(ranks: dict[int, int] | None) -> list[int] | None:
        return None if not ranks else [ranks[c.id] for c in d.completions]

    return {
        "id": d.id, "round": d.round, "position": d.position, "text": d.text, "disagreement": d.disagreement,
        "criteria": [{"name": c.name, "description": c.description} for c in d.criteria],
        "disagreement_by_criterion": d.disagreement_by_criterion,
        "completions": [{"id": c.id, "text": c.text, "model": c.model} for c in d.completions],
        "rankings": [
            {"annotator": r.annotator, "ranks": None if r.skip else aligned(r.ranks),
             "rankings": {c.name: None if r.skip else aligned(r.by_criterion.get(c.name)) for c in d.criteria},
             "skip": r.skip, "unsafe": r.unsafe, "comment": r.comment, "updated_at": r.updated_at}
            for r in d.rankings
        ],
    }


def _rankings_json(by_criterion: dict[str, dict[int, int]]) -> dict[str, dict[str, int]]:
    return {name: {str(k): v for k, v in ranks.items()} for name, ranks in by_criterion.items()}


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[Exception], int]] = [
        (NotFound, 404), (Forbidden, 403), (InvalidRanking, 422), (Conflict, 409), (DatabaseUnavailable, 503)
    ]

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(FeedbackError)
    async def feedback_error(_request: Request, e: FeedbackError) -> JSONResponse:
        status = next((code for cls, code in statuses if isinstance(e, cls)), 422)
        return error(status, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for item in e.errors():
            where = ".".join(str(x) for x in item.get("loc", ()) if x not in ("body", "query", "path", "header"))
            if item.get("type") == "json_invalid":
                problems.append("the request body is not valid JSON")
            else:
                problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        return error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(DBAPIError)
    async def database_error(_request: Request, e: DBAPIError) -> JSONResponse:
        # A locked SQLite file past its busy timeout, or a lost PostgreSQL connection: the
        # request changed nothing and may be retried.
        return error(503, "the database is busy or unreachable; try again", {"Retry-After": "1"})


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------
def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` from a thread of this process (tests, notebooks, the demo); yields its base URL.

    `port=0` takes a free port. The server stops when the block ends.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="feedback-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the feedback server did not start on {host}:{bound_port} within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
