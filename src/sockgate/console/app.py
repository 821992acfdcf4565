"""The console's Starlette application: read-only pages over console.data.

Safety, in this one place:
- GET (and HEAD) only: no route changes anything; any other method is 405.
- Every response carries `Content-Security-Policy: default-src 'self'` (no inline script
  or style anywhere: the JavaScript is static/console.js, the styles static/console.css),
  `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and refuses framing.
- Templates are Jinja2 with autoescape on for every template; journal values are never
  marked safe. Live rows and charts travel as JSON and are put in the page as text.
- The Host header must name the console (a DNS-rebinding page cannot read it), and with a
  token configured every request must carry it (HTTP Basic password or Bearer), compared
  in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sockgate.console.data import FILTER_PARAMS, TOP_FIELDS, Data, filter_from, row
from sockgate.errors import FleetError, SockgateError
from sockgate.journal.query import Filter
from sockgate.record import NS, format_duration, format_time, oneline

HERE = Path(__file__).parent
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
POLL_S = 0.025         # without inotify: how often Live looks for new entries
IDLE_S = 1.0           # with inotify: look anyway this often (a missed event costs at most this)
SETTLE_S = 0.25        # after an inotify event, look every SETTLE_POLL_S for this long: the event
SETTLE_POLL_S = 0.005  # comes with the WAL write, the commit is visible after the writer's fsync
HEARTBEAT_S = 15.0     # an SSE comment so proxies keep the stream open
LIVE_PAGE = 100        # rows on the first Live page
LIVE_MAX = 500         # rows a stream message carries at most


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = lambda ns: format_time(ns)[:19].replace("T", " ") if ns else "never"
    env.filters["age"] = lambda ns: format_duration(max(0, time.time_ns() - ns) // NS * NS) if ns else "never"
    env.filters["oneline"] = lambda v: oneline(v) if v is not None else "-"
    return env


class _Headers:
    """Security headers on every response, and the token when one is configured."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: frozenset[str] | None) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        if self.hosts is not None and _host(scope) not in self.hosts:
            resp = PlainTextResponse("unknown host (the console answers only to its own address)\n", status_code=421)
            return await resp(scope, receive, send_with_headers)
        if self.token is not None and not _authorized(scope, self.token):
            resp = PlainTextResponse("authentication required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="sockgate console", charset="UTF-8"'})
            return await resp(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def _host(scope: Scope) -> str:
    """The Host header's name without its port ("[::1]" kept bracketed), lower-case."""
    for k, v in scope.get("headers", []):
        if k == b"host":
            h = v.decode("latin-1").strip().lower()
            return h[:h.index("]") + 1] if h.startswith("[") and "]" in h else h.rsplit(":", 1)[0]
    return ""


def _authorized(scope: Scope, token: str) -> bool:
    want = token.encode()
    for k, v in scope.get("headers", []):
        if k != b"authorization":
            continue
        kind, _, cred = v.partition(b" ")
        if kind.lower() == b"bearer":
            return hmac.compare_digest(cred.strip(), want)
        if kind.lower() == b"basic":
            try:
                _, _, password = base64.b64decode(cred.strip(), validate=True).partition(b":")
            except ValueError:
                return False
            return hmac.compare_digest(password, want)
    return False


class Head:
    """The journal's newest seq, watched once for every open Live stream: woken by inotify on
    the journal directory (journal/watch.py), looking again every SETTLE_POLL_S for a moment
    after each event (the commit is published after the event) and every IDLE_S anyway;
    polling every POLL_S where inotify is unavailable. Streams wait for the seq to pass
    their cursor, then read their own (filtered) rows. Runs only while a stream is open."""

    def __init__(self, data: Data, stopping: Callable[[], bool]) -> None:
        self.data, self.stopping = data, stopping
        self.seq = 0
        self.streams = 0
        self.mode = ""          # "inotify" or "poll", once running
        self.changed = asyncio.Condition()
        self.task: asyncio.Task | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self):
        self.streams += 1
        if self.task is None or self.task.done():   # (no await in between: one task at a time)
            self.task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self.streams -= 1

    async def wait(self, after: int, timeout: float) -> int:
        """The newest seq, once it is past `after` or after timeout seconds."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.seq > after), timeout)
            except TimeoutError:
                pass
            return self.seq

    async def _run(self) -> None:
        from sockgate.journal.watch import watch

        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        w = watch(self.data.journal_dir)
        if w is not None:
            loop.add_reader(w.fileno(), lambda: (w.drain(), woke.set()))
        self.mode = "inotify" if w is not None else "poll"
        settle_until = 0.0
        try:
            while self.streams > 0 and not self.stopping():
                seq = await run_in_threadpool(lambda: self.data.last_seq)
                if seq != self.seq:
                    self.seq = seq
                    async with self.changed:
                        self.changed.notify_all()
                if w is None:
                    timeout = POLL_S
                else:
                    timeout = SETTLE_POLL_S if time.monotonic() < settle_until else IDLE_S
                try:
                    await asyncio.wait_for(woke.wait(), timeout)
                except TimeoutError:
                    pass
                if woke.is_set():
                    woke.clear()
                    settle_until = time.monotonic() + SETTLE_S
        finally:
            if w is not None:
                loop.remove_reader(w.fileno())
                w.close()


def create_app(data: Data, *, token: str | None = None, hosts: frozenset[str] | None = None) -> Starlette:
    """The console over `data`. token: required on every request when set; hosts: the Host
    names it answers to (None: any, as behind a unix socket)."""
    env = templates()
    head = Head(data, lambda: app.state.stopping)

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("view", template.split(".")[0])
        ctx.setdefault("replay", bool(data.candidate_file))
        ctx.setdefault("fleet", bool(data.fleet_db))
        return HTMLResponse(env.get_template(template).render(request=request, journal=data.journal_dir, **ctx),
                            status_code=status)

    def form_of(request: Request) -> dict[str, str]:
        """The filter fields as typed (for the form to show them again)."""
        return {k: ", ".join(request.query_params.getlist(k)) for k in FILTER_PARAMS}

    def filt(request: Request, default_since: str | None = None) -> Filter:
        # a field may hold several values separated by commas, as the form shows them
        params: dict[str, list[str]] = {}
        for k in FILTER_PARAMS:
            vals = [p.strip() for v in request.query_params.getlist(k) for p in v.split(",")]
            params[k] = [v for v in vals if v]
        return filter_from(params, default_since=default_since)

    def query_string(request: Request, *drop: str) -> str:
        from urllib.parse import urlencode

        return urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in drop and v])

    async def index(request: Request) -> Response:
        return RedirectResponse("/live", status_code=303)

    async def live(request: Request) -> Response:
        f = filt(request)
        last = await run_in_threadpool(lambda: data.last_seq)
        rows = await run_in_threadpool(data.page, f, LIVE_PAGE)
        qs = query_string(request, "after")
        return page(request, "live.html", rows=[row(e) for e in rows], after=last, form=form_of(request),
                    stream=f"/live/stream?{qs}&after={last}" if qs else f"/live/stream?after={last}")

    async def stream(request: Request) -> Response:
        f = filt(request)
        # a reconnecting EventSource says where it was (Last-Event-ID): no row twice, none lost
        given = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        if not given.isascii() or not given.isdigit() or len(given) > 19:
            raise SockgateError("after: not a sequence number")
        cursor = int(given)

        async def events():
            nonlocal cursor
            beat = time.monotonic()
            yield "retry: 1000\n\n"
            async with head.subscribe():
                while not app.state.stopping:
                    last = await head.wait(cursor, IDLE_S)
                    if last > cursor:
                        entries = await run_in_threadpool(data.after, cursor, f, LIVE_MAX)
                        # the cursor moves past what did not match, too: a filtered stream stays cheap
                        cursor = max(last if len(entries) < LIVE_MAX else 0, entries[-1].seq if entries else 0)
                        if entries:
                            # one message per wake-up, sent at once (each yield is written to the socket)
                            payload = json.dumps({"rows": [row(e) for e in entries], "at": time.time_ns()})
                            yield f"id: {cursor}\nevent: rows\ndata: {payload}\n\n"
                            beat = time.monotonic()
                    if time.monotonic() - beat > HEARTBEAT_S:
                        yield ": keep-alive\n\n"
                        beat = time.monotonic()
                    if await request.is_disconnected():
                        return

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def entry(request: Request) -> Response:
        try:
            seq = int(request.path_params["seq"])
        except ValueError:
            raise SockgateError("not a sequence number") from None
        e = await run_in_threadpool(data.entry, seq)
        if e is None:
            return page(request, "error.html", status=404, message=f"no entry {seq} in this journal")
        explain, policy_error = None, None
        try:
            explain = await run_in_threadpool(data.explain, e)
        except SockgateError as err:
            policy_error = str(err)
        fields = [(k, v) for k, v in e.to_dict().items() if k != "extra"]
        return page(request, "entry.html", e=row(e), fields=fields, extra=sorted(e.extra.items()),
                    explain=explain, policy_error=policy_error, policy_file=data.policy_file, view="live")

    async def rules(request: Request) -> Response:
        f = filt(request, default_since="24h")
        rows, where = await run_in_threadpool(data.rules, f)
        return page(request, "rules.html", rows=rows, where=where, form=form_of(request), since=f.since_ns,
                    policy_file=data.policy_file, qs=query_string(request, "rules"))

    async def rule(request: Request) -> Response:
        name = request.query_params.get("name", "")
        f = replace(filt(request), rules=(name,))
        rows = await run_in_threadpool(data.page, f, 200)
        return page(request, "rule.html", name=name, rows=[row(e) for e in rows], view="rules",
                    form=form_of(request))

    async def top(request: Request) -> Response:
        f = filt(request, default_since="1h")
        try:
            n = max(1, min(100, int(request.query_params.get("n", "10"))))
        except ValueError:
            n = 10
        tables = await run_in_threadpool(data.top, f, n)
        return page(request, "top.html", tables=tables, fields=TOP_FIELDS, form=form_of(request), n=n,
                    since=f.since_ns)

    async def charts(request: Request) -> Response:
        f = filt(request, default_since="1h")
        return page(request, "charts.html", form=form_of(request), qs=query_string(request), since=f.since_ns)

    async def chart_api(request: Request) -> Response:
        f = filt(request, default_since="1h")
        by = request.query_params.get("by", "outcome")
        t0 = time.perf_counter()
        c = await run_in_threadpool(data.chart, f, by)
        c["server_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return JSONResponse(c)

    async def entries_api(request: Request) -> Response:
        f = filt(request)
        try:
            n = max(1, min(1000, int(request.query_params.get("n", "100"))))
        except ValueError:
            n = 100
        rows = await run_in_threadpool(data.page, f, n)
        return JSONResponse({"last_seq": data.last_seq, "rows": [row(e) for e in rows]})

    async def integrity(request: Request) -> Response:
        again = request.query_params.get("reverify") == "1"
        it = await run_in_threadpool(lambda: data.integrity(reverify=again))
        return page(request, "integrity.html", it=it)

    async def replay(request: Request) -> Response:
        f = filt(request, default_since="7d")
        rep = await run_in_threadpool(data.replay_report, f)
        if rep is None:
            return page(request, "error.html", status=404, view="replay",
                        message="no candidate policy: start the console with --candidate FILE")
        if request.query_params.get("format") == "json":
            return JSONResponse(rep.to_dict())
        groups = {k: rep.sorted_groups(k) for k in ("break", "open")}
        return page(request, "replay.html", rep=rep, groups=groups, form=form_of(request),
                    candidate=data.candidate_file)

    async def fleet(request: Request) -> Response:
        if not data.fleet_db:
            return page(request, "error.html", status=404, view="fleet",
                        message="no fleet database: start the console with --fleet-db URL")
        try:
            hosts, problem = await run_in_threadpool(data.fleet), None
        except FleetError as e:
            hosts, problem = [], str(e)
        if request.query_params.get("format") == "json":   # `fleet status --json`, plus rejected_1h
            return JSONResponse({"error": problem} if problem else hosts, status_code=503 if problem else 200)
        return page(request, "fleet.html", status=503 if problem else 200, hosts=hosts, problem=problem,
                    now=time.time_ns())

    async def error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SockgateError)
        return page(request, "error.html", status=400, message=str(exc), view="")

    routes = [
        Route("/", index), Route("/live", live), Route("/live/stream", stream),
        Route("/entry/{seq}", entry), Route("/rules", rules), Route("/rule", rule), Route("/top", top),
        Route("/charts", charts), Route("/api/chart", chart_api), Route("/api/entries", entries_api),
        Route("/integrity", integrity), Route("/replay", replay), Route("/fleet", fleet),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(_Headers, token=token, hosts=hosts)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={SockgateError: error})
    app.state.stopping = False
    return app
