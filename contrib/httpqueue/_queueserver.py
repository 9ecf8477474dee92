"""The reference job server: the queue over HTTP, served by hypercorn's Trio worker.

::

    async with open_job_server(store=JsonStore(path)) as server:
        server.url                      # http://127.0.0.1:PORT
        job = await server.submit({"job_name": "x", "config_path": "/shared/x.yaml"})
        await server.wait_until(lambda: server.queue.jobs[job["job_id"]]["status"] == "finished")

Routes (JSON bodies and answers; errors are ``{"error": "..."}`` with 400,
404, 405 or 409)::

    GET  /api/health
    POST /api/jobs                    submit: job_name, config_path, requirements, timeout, priority
    GET  /api/jobs[?status=S]         {"jobs": [...]}
    GET  /api/jobs/{id}               the job
    POST /api/jobs/{id}/cancel        the job, canceled
    POST /api/jobs/{id}/stop          the job, stopped
    GET  /api/workers                 {"workers": [...]}: what each worker's heartbeat said
    POST /api/agent/next-job          200 with a job, or 204 when there is none
    POST /api/agent/job-status        {"job_id", "status", "applied"}
    POST /api/agent/job-reject        {"job_id", "status", "applied"}
    POST /api/agent/heartbeat         {"ok": true}
    GET  /status/{id}                 {"job_id", "status", "worker_id"}: what the OPEVA
                                      backend answers a worker polling its job

``/status/{id}`` speaks the OPEVA backend's job states: a running job a person
stopped is ``stop_requested`` until its worker confirms ``stopped``.

Every change is written to the store before the answer goes out. With a token,
every route but ``/api/health`` answers 401 to a caller without it; with mutual
TLS, a caller without a client certificate the CA signed gets no connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qs

import structlog
import trio
from hypercorn.trio import serve

from agent.jobs import (
    DocumentError,
    Receive,
    Scope,
    Send,
    answer_lifespan,
    hypercorn_config,
    load_json,
)

from ._auth import OPEN_PATHS, ServerTls, token_matches
from ._protocol import JOB_STATUSES
from ._queue import Job, JobQueue, QueueConfig, QueueError, public
from ._store import MemoryStore, Store, StoreError

log = structlog.get_logger("farmhand.httpqueue.server")


#: Largest request body accepted.
MAX_BODY_BYTES = 1 << 20
_STORE_LIMITER = trio.CapacityLimiter(1)


class JobServer:
    """The ASGI application and the queue behind it."""

    def __init__(
        self,
        store: Store,
        jobs: list[Job] | None = None,
        config: QueueConfig | None = None,
        *,
        token: str | None = None,
    ) -> None:
        """``jobs``: what ``store.load()`` returned (the caller loads, in a thread).
        ``token``: every call but the health check must carry it as a bearer token."""
        self.store = store
        self._token = token
        self.queue = JobQueue(jobs or (), config)
        self.url = ""
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._deadline_changed = trio.Event()
        self.requests = 0
        #: Calls answered 401 for want of the token.
        self.refused = 0

    # ------------------------------------------------------------ driving it directly

    async def submit(self, payload: Mapping[str, Any]) -> Job:
        """Submit a job as ``POST /api/jobs`` does; the job as the API shows it."""
        async with self._lock:
            job = self.queue.submit(dict(payload))
            await self._persist([job])
        return public(job)

    async def end_job(self, job_id: str, status: str) -> Job:
        """Cancel (``"canceled"``) or stop (``"stopped"``) a job, as a person does."""
        async with self._lock:
            job = self.queue.end_by_person(job_id, status)
            await self._persist([job])
        return public(job)

    def job(self, job_id: str) -> Job:
        return public(self.queue.get(job_id))

    def status_of(self, job_id: str) -> dict[str, Any]:
        """``GET /status/{id}``: the job's state as the OPEVA backend names it."""
        job = self.queue.get(job_id)
        status = job["status"]
        if status == "stopped" and job["worker_id"] is not None and not job["ended_at"]:
            status = "stop_requested"  # its worker has yet to stop it and say so
        return {
            "job_id": job_id,
            "status": status,
            "worker_id": job["worker_id"],
            "exit_code": job["exit_code"],
            "error": job["error"],
            "status_updated_at": job.get("status_updated_at"),
        }

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; checked after every change."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _persist(self, jobs: list[Job]) -> None:
        if jobs and self.store.durable:
            snapshot = [dict(job) for job in jobs]
            # Not abandoned on cancel: the answer waits until the change is on disk.
            await trio.to_thread.run_sync(self.store.save, snapshot, limiter=_STORE_LIMITER)
        self._notify()
        self._deadline_changed.set()

    # ------------------------------------------------------------ the sweeper

    async def run_sweeper(self) -> None:
        """Requeue stale assignments and fail lost workers' jobs, on time."""
        while True:
            self._deadline_changed = trio.Event()
            with trio.move_on_at(self.queue.next_deadline()):
                await self._deadline_changed.wait()
                continue
            async with self._lock:
                changed = self.queue.sweep(trio.current_time())
                for job in changed:
                    log.info(
                        "httpqueue.job_swept",
                        job_id=job["job_id"],
                        status=job["status"],
                        detail=job["detail"],
                    )
                await self._persist(changed)

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._token is not None and scope["path"] not in OPEN_PATHS:
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not token_matches(authorization, self._token):
                self.refused += 1
                self._notify()
                await _respond(
                    send,
                    401,
                    {"error": "this job server needs its bearer token (Authorization: Bearer ...)"},
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, 413, {"error": "the request body is too large"})
                return
            if not message.get("more_body"):
                break
        self.requests += 1
        try:
            status, answer = await self._route(scope, body)
        except QueueError as exc:
            status, answer = exc.status, {"error": str(exc)}
        except StoreError as exc:
            log.error("httpqueue.store_failed", error=str(exc))
            status, answer = 503, {"error": f"the store failed: {exc}"}
        await _respond(send, status, answer)

    async def _route(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        method: str = scope["method"]
        parts = [part for part in str(scope["path"]).split("/") if part]
        if len(parts) == 2 and parts[0] == "status":
            _allow(method, "GET")
            return 200, self.status_of(parts[1])
        if parts[:1] != ["api"]:
            raise QueueError(404, f"no route {scope['path']}")
        parts = parts[1:]
        now = trio.current_time()
        queue = self.queue
        if parts == ["health"]:
            _allow(method, "GET")
            return 200, {"ok": True, "jobs": queue.statistics()}
        if parts == ["workers"]:
            _allow(method, "GET")
            return 200, {"workers": [w.to_api(now) for w in queue.workers.values()]}
        if parts == ["jobs"]:
            if method == "GET":
                query = parse_qs(scope.get("query_string", b"").decode())
                status = query.get("status", [None])[0]
                if status is not None and status not in JOB_STATUSES:
                    raise QueueError(400, f"status must be one of {', '.join(JOB_STATUSES)}")
                return 200, {"jobs": [public(job) for job in queue.list_jobs(status)]}
            _allow(method, "POST")
            return 201, await self.submit(_json(body))
        if len(parts) == 2 and parts[0] == "jobs":
            _allow(method, "GET")
            return 200, self.job(parts[1])
        if len(parts) == 3 and parts[0] == "jobs" and parts[2] in ("cancel", "stop"):
            _allow(method, "POST")
            status = "canceled" if parts[2] == "cancel" else "stopped"
            return 200, await self.end_job(parts[1], status)
        if len(parts) == 2 and parts[0] == "agent":
            _allow(method, "POST")
            return await self._agent(parts[1], _json(body), now)
        raise QueueError(404, f"no route {scope['path']}")

    async def _agent(self, operation: str, payload: Any, now: float) -> tuple[int, Any]:
        queue = self.queue
        async with self._lock:
            if operation == "next-job":
                job = queue.next_job(payload, now)
                if job is None:
                    self._notify()
                    return 204, None
                await self._persist([job])
                log.info("httpqueue.job_assigned", job_id=job["job_id"], worker_id=job["worker_id"])
                return 200, public(job)
            if operation == "job-status":
                job, changed = queue.report(payload, now)
                await self._persist([job] if changed else [])
                if changed:
                    log.info(
                        "httpqueue.job_status",
                        job_id=job["job_id"],
                        status=job["status"],
                        reported=payload.get("status"),
                        worker_id=payload.get("worker_id"),
                    )
                return 200, {"job_id": job["job_id"], "status": job["status"], "applied": changed}
            if operation == "job-reject":
                job, changed = queue.reject(payload, now)
                await self._persist([job] if changed else [])
                log.info(
                    "httpqueue.job_rejected",
                    job_id=job["job_id"],
                    worker_id=payload.get("worker_id"),
                    reason=payload.get("reason"),
                )
                return 200, {"job_id": job["job_id"], "status": job["status"], "applied": changed}
            if operation == "heartbeat":
                queue.heartbeat(payload, now)
                self._notify()
                return 200, {"ok": True}
        raise QueueError(404, f"no agent operation {operation!r}")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise QueueError(405, f"use {allowed} here, not {method}")


def _json(body: bytes) -> Any:
    try:
        return load_json(body or b"null")  # bounded nesting: deep bodies are a 400
    except DocumentError as exc:
        raise QueueError(400, str(exc)) from None


async def _respond(
    send: Send, status: int, answer: Any, *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = b"" if answer is None else json.dumps(answer).encode()
    headers = [(b"content-length", str(len(payload)).encode()), *(extra or ())]
    if answer is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def open_job_server(
    *,
    store: Store | None = None,
    config: QueueConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    tls: ServerTls | None = None,
) -> AsyncIterator[JobServer]:
    """Serve the queue on ``host:port`` (a free loopback port by default) for the block;
    ``token`` and ``tls`` as in ``_auth.py`` (the caller checks the exposure)."""
    store = store if store is not None else MemoryStore()
    jobs = await trio.to_thread.run_sync(store.load)
    server = JobServer(store, jobs, config, token=token)
    http_config = hypercorn_config(host, port, logger="farmhand.httpqueue.http")
    if tls is not None:
        tls.apply(http_config)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            # JobServer is an ASGI 3 application; hypercorn's TypedDict signature is
            # stricter than the plain mappings it is written with.
            binds = await nursery.start(
                partial(
                    serve,
                    cast(Any, server),
                    http_config,
                    shutdown_trigger=shutdown.wait,
                )
            )
            server.url = binds[0]
            sweeper = trio.CancelScope()

            async def run_sweeper() -> None:
                with sweeper:
                    await server.run_sweeper()

            nursery.start_soon(run_sweeper)
            try:
                yield server
            finally:
                sweeper.cancel(reason="the job server is closing")
                shutdown.set()
    finally:
        store.close()
