"""``open_mock_farm``: the farm served by hypercorn's Trio worker, on loopback, or
reached in this process only (``listen=False``, for ``python -m agent run``).

::

    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        client = farm.boto3_client("deadline")      # use it from a worker thread
        job_id = farm.create_job(TEMPLATE, parameters={"Frames": "1-10"})
        await farm.wait_for_job(job_id)

The server binds ``127.0.0.1`` on a free port unless told otherwise; the farm's
records, logs and call record are on the ``MockFarm`` for assertions. A farm that
does not listen is reached through ``MockFarm.transport`` (``agent._asgitransport``):
the same app, the same API, no socket, and none of hypercorn imported.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from .._asgi import hypercorn_config
from ._app import CallLog, CallRecord, MockFarmApp
from ._farm import Farm, FarmConfig
from ._faults import FaultConfig, FaultInjector
from ._logstore import LogStore
from ._monitor import Monitor, MonitorConfig
from ._records import FarmState, Job, WorkerRecord
from ._s3 import S3Config, open_s3

if TYPE_CHECKING:
    import httpx

#: The endpoint of a farm that does not listen: loopback's port 0, which nothing
#: serves, so a client not given the farm's transport fails at once, on this host.
IN_PROCESS_URL = "http://127.0.0.1:0"

#: Job statuses after which nothing more happens unless someone requeues.
FINAL_JOB_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SUSPENDED", "NOT_COMPATIBLE"})


@attrs.frozen
class MockFarmStatistics:
    jobs: int
    workers: int
    sessions_active: int
    calls: int
    calls_by_operation: Mapping[str, int]
    faults_injected: Mapping[str, int]
    log_events: int


def _wire_parameter(value: Any) -> dict[str, Any]:
    """``4`` or ``"x"`` as an untyped ``{"string": ...}`` value the template types later."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bool):
        return {"string": "true" if value else "false"}
    if isinstance(value, list):
        return {"stringList": [str(v) for v in value]}
    return {"string": str(value)}


class MockFarm:
    """A running mock farm: where it listens, its state, and ways to drive it."""

    def __init__(
        self,
        farm: Farm,
        app: MockFarmApp,
        calls: CallLog,
        faults: FaultInjector,
        keys: Mapping[str, str] | None = None,
    ) -> None:
        self.farm = farm
        #: The keys requests must be signed with (None: any request is taken).
        self.keys = dict(keys) if keys is not None else None
        self.app = app
        self.calls = calls
        self._faults = faults
        self.endpoint_url = ""
        #: The way in for clients in this process, when the farm does not listen
        #: (``httpx.AsyncClient(transport=farm.transport)``); ``None`` when it does.
        self.transport: httpx.AsyncBaseTransport | None = None
        #: The S3 endpoint of the farm's job attachments ("" when it has none).
        self.s3_endpoint_url = ""
        self.s3: S3Config | None = None
        #: The monitor page, when the farm serves it (``open_mock_farm(monitor=...)``).
        self.monitor: Monitor | None = None
        self._changed = trio.Event()
        self._waiters = 0
        #: Changes so far (each ``notify``): a reader that was busy tells it missed some.
        self.changes = 0

    # ------------------------------------------------------------ identity

    @property
    def farm_id(self) -> str:
        return self.farm.default_farm_id

    @property
    def fleet_id(self) -> str:
        return self.farm.default_fleet_id

    @property
    def queue_id(self) -> str:
        return self.farm.default_queue_id

    @property
    def state(self) -> FarmState:
        return self.farm.state

    @property
    def logs(self) -> LogStore:
        return self.farm.logs

    @property
    def config(self) -> FarmConfig:
        return self.farm.config

    def info(self) -> dict[str, Any]:
        info = {
            "endpointUrl": self.endpoint_url,
            "farmId": self.farm_id,
            "fleetId": self.fleet_id,
            "queueId": self.queue_id,
            "region": self.config.region,
        }
        if self.s3_endpoint_url:
            info["s3EndpointUrl"] = self.s3_endpoint_url
        return info

    @property
    def monitor_url(self) -> str:
        """The monitor page's address ("" when the farm serves none)."""
        return f"{self.endpoint_url}/monitor" if self.monitor is not None else ""

    @property
    def access_key(self) -> tuple[str, str]:
        """A key this farm takes: the first it was given, else the usual fake one."""
        if self.keys:
            return next(iter(self.keys.items()))
        return ("AKIDMOCKFARM", "mockfarm-secret")

    def environ(self) -> dict[str, str]:
        """Environment variables that point boto3 (and the official agent) at this farm."""
        return {
            "AWS_ENDPOINT_URL_DEADLINE": self.endpoint_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.endpoint_url,
            "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
            "AWS_DEFAULT_REGION": self.config.region,
            "AWS_ACCESS_KEY_ID": self.access_key[0],
            "AWS_SECRET_ACCESS_KEY": self.access_key[1],
            "AWS_EC2_METADATA_DISABLED": "true",
            "DEADLINE_CLOUD_TELEMETRY_OPT_OUT": "true",
            **({"AWS_ENDPOINT_URL_S3": self.s3_endpoint_url} if self.s3_endpoint_url else {}),
        }

    def boto3_client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client (``deadline`` or ``logs``) for this farm. Call it from a thread."""
        key_id, secret = self.access_key
        kwargs.setdefault("aws_access_key_id", key_id)
        kwargs.setdefault("aws_secret_access_key", secret)
        return make_client(service, self.endpoint_url, region=self.config.region, **kwargs)

    # ------------------------------------------------------------ faults

    @property
    def faults(self) -> FaultConfig:
        return self._faults.config

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the fault config; the next request uses it."""
        self._faults.configure(faults)

    # ------------------------------------------------------------ driving the farm

    def create_job(
        self,
        template: str | Mapping[str, Any],
        *,
        parameters: Mapping[str, Any] | None = None,
        queue_id: str | None = None,
        farm_id: str | None = None,
        priority: int = 50,
        **options: Any,
    ) -> str:
        """Submit a job directly (no HTTP); returns its id.

        ``template`` is JSON/YAML text or a mapping; ``parameters`` values may be
        plain (``{"Frames": "1-10"}``) or wire unions (``{"Frames": {"string": "1-10"}}``);
        other options are ``Farm.create_job``'s (``max_retries_per_task``...).
        Raises ``ApiError`` (ValidationException) for a bad template.
        """
        if isinstance(template, Mapping):
            text, template_type = json.dumps(template), "JSON"
        else:
            text = template
            template_type = options.pop("template_type", None) or (
                "JSON" if text.lstrip().startswith("{") else "YAML"
            )
        queue = self.farm.queue(farm_id or self.farm_id, queue_id or self.queue_id)
        job = self.farm.create_job(
            queue,
            text,
            template_type=template_type,
            parameters={name: _wire_parameter(v) for name, v in (parameters or {}).items()},
            priority=priority,
            **options,
        )
        self.notify()
        return job.job_id

    def create_queue(
        self,
        name: str,
        *,
        role_arn: str | None = None,
        job_run_as_user: Mapping[str, Any] | None = None,
        farm_id: str | None = None,
        job_attachment_settings: Mapping[str, str] | None = None,
    ) -> str:
        """Add a queue (as ``CreateQueue``); returns its id. With ``role_arn``, workers
        get credentials for its jobs from ``AssumeQueueRoleForWorker``; with
        ``job_attachment_settings`` (``s3BucketName``, ``rootPrefix``), its jobs may
        have attachments."""
        queue = self.farm._new_queue(
            farm_id or self.farm_id,
            name,
            description=None,
            role_arn=role_arn,
            job_run_as_user=dict(job_run_as_user or {"runAs": "WORKER_AGENT_USER"}),
            job_attachment_settings=dict(job_attachment_settings)
            if job_attachment_settings
            else None,
        )
        self.notify()
        return queue.queue_id

    def create_queue_environment(
        self,
        template: str | Mapping[str, Any],
        *,
        priority: int = 0,
        queue_id: str | None = None,
        farm_id: str | None = None,
    ) -> str:
        """Add an environment template to a queue (as ``CreateQueueEnvironment``); its id.

        Jobs created afterwards enter the queue's environments first, lowest
        ``priority`` first. Raises ``ApiError`` for a bad template or a name the
        queue already has.
        """
        if isinstance(template, Mapping):
            text, template_type = json.dumps(template), "JSON"
        else:
            text = template
            template_type = "JSON" if text.lstrip().startswith("{") else "YAML"
        result = self.farm.CreateQueueEnvironment(
            {
                "farmId": farm_id or self.farm_id,
                "queueId": queue_id or self.queue_id,
                "priority": priority,
                "templateType": template_type,
                "template": text,
            }
        )
        self.notify()
        return str(result["queueEnvironmentId"])

    def job(self, job_id: str) -> Job:
        return self.state.jobs[job_id]

    def worker(self, worker_id: str) -> WorkerRecord:
        return self.state.workers[worker_id]

    def cancel_job(self, job_id: str) -> None:
        """As ``UpdateJob(targetTaskRunStatus=CANCELED)``."""
        self.farm.retarget_job(self.job(job_id), "CANCELED")
        self.notify()

    def requeue_job(self, job_id: str) -> None:
        """As ``UpdateJob(targetTaskRunStatus=READY)``."""
        self.farm.retarget_job(self.job(job_id), "READY")
        self.notify()

    def request_worker_stop(self, worker_id: str) -> None:
        """The worker gets no new work and, once idle, ``desiredWorkerStatus=STOPPED``."""
        self.farm.request_worker_stop(worker_id)
        self.notify()

    def session_log(self, session_id: str) -> list[str]:
        """The messages a session's log stream received."""
        session = self.state.sessions[session_id]
        return self.logs.messages(session.log_group_name, session.log_stream_name)

    def worker_log(self, worker_id: str) -> list[str]:
        worker = self.worker(worker_id)
        return self.logs.messages(worker.log_group_name, worker.worker_id)

    def calls_to(self, operation: str) -> list[CallRecord]:
        return self.calls.to(operation)

    def statistics(self) -> MockFarmStatistics:
        return MockFarmStatistics(
            jobs=len(self.state.jobs),
            workers=len(self.state.workers),
            sessions_active=sum(len(w.sessions) for w in self.state.workers.values()),
            calls=self.calls.total,
            calls_by_operation=dict(self.calls.counts),
            faults_injected=dict(self._faults.injected),
            log_events=self.logs.statistics()["events_received"],
        )

    # ------------------------------------------------------------ waiting

    def notify(self, *, work: bool = True) -> None:
        """Wake ``wait_until`` callers (the farm calls this after every change); a
        persistent farm queues the change for its next commit. ``work``: the change
        may give an idle worker work, so its held UpdateWorkerSchedule looks again."""
        self.changes += 1
        if work:
            self.app.wake_idle_workers()
        if self.farm.store is not None:
            self.farm.store.commit_nowait()
        if self._waiters:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; it is re-checked after every request."""
        while not predicate():
            self._waiters += 1
            try:
                await self._changed.wait()
            finally:
                self._waiters -= 1

    async def wait_changed(self) -> None:
        """Return after the next change (the farm's, or a log line received)."""
        self._waiters += 1
        try:
            await self._changed.wait()
        finally:
            self._waiters -= 1

    async def wait_for_job(self, job_id: str) -> str:
        """Wait until the job has nothing left to run; its task run status."""
        job = self.job(job_id)
        await self.wait_until(lambda: job.status in FINAL_JOB_STATUSES)
        return job.status

    async def _watchdog(self) -> None:
        timeout = self.config.worker_timeout_seconds
        while True:
            await trio.sleep_until(min(self.farm.next_deadline(), trio.current_time() + timeout))
            if self.farm.sweep():
                self.notify()


@asynccontextmanager
async def open_mock_farm(
    *,
    config: FarmConfig | None = None,
    faults: FaultConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    call_history: int | None = 100_000,
    keep_alive_timeout: float = 120.0,
    keys: Mapping[str, str] | None = None,
    s3: S3Config | None = None,
    state_dir: Path | None = None,
    monitor: MonitorConfig | None = None,
    listen: bool = True,
) -> AsyncIterator[MockFarm]:
    """Serve a mock farm on ``host:port`` (a free loopback port by default) while in the block.

    ``call_history`` bounds how many calls ``MockFarm.calls`` keeps (``None``: all).
    ``keys`` (access key id -> secret) makes the farm verify every AWS request's SigV4
    signature against them and the temporary keys it hands out; without, it takes any
    request, which is safe on loopback only (``mockfarm serve`` enforces that).
    ``s3`` gives the farm job attachments: its default queue gets
    ``jobAttachmentSettings`` and an S3 endpoint (moto's, served on ``host``,
    unless ``s3.endpoint_url`` names one); ``environ()`` then points at it too.
    ``state_dir`` keeps the farm in a SQLite database there (see ``_store``): what it
    holds is loaded, and every change is committed before the request is answered;
    without, the farm lives in memory. Raises ``StoreError`` for an unusable state dir.
    ``monitor`` serves the monitor page at ``/monitor`` on the same port (``_monitor``;
    ``MockFarm.monitor_url``), read-only unless ``MonitorConfig(actions=True)``.
    ``listen=False``: no server; clients in this process reach the farm through
    ``MockFarm.transport``, and ``endpoint_url`` is ``IN_PROCESS_URL`` (for their
    requests' URLs and signatures only). A monitor needs a server.
    """
    if not listen and monitor is not None:
        raise ValueError("the monitor page needs a farm that listens")
    serve_farm = partial(
        _serve_farm,
        faults=faults,
        host=host,
        port=port,
        call_history=call_history,
        keep_alive_timeout=keep_alive_timeout,
        keys=keys,
        s3=s3,
        monitor=monitor,
        listen=listen,
    )
    if state_dir is None:
        async with serve_farm(Farm(config)) as mock:
            yield mock
        return
    # Imported here: a farm in memory (``python -m agent run``'s) needs no sqlite3
    # (about 1 MiB and 2 ms to import).
    from ._store import FarmStore

    store = FarmStore(state_dir)
    try:
        async with trio.open_nursery() as writer_nursery:
            farm = Farm(config, store=store)
            writer = trio.CancelScope()

            async def run_writer(*, task_status: trio.TaskStatus[None]) -> None:
                with writer:
                    await store.run_writer(task_status=task_status)

            await writer_nursery.start(run_writer)
            try:
                async with serve_farm(farm) as mock:
                    yield mock
            finally:
                writer.cancel(reason="mock farm closed")
    finally:
        store.close()


@asynccontextmanager
async def _serve_farm(
    farm: Farm,
    *,
    faults: FaultConfig | None,
    host: str,
    port: int,
    call_history: int | None,
    keep_alive_timeout: float,
    keys: Mapping[str, str] | None,
    s3: S3Config | None,
    monitor: MonitorConfig | None,
    listen: bool,
) -> AsyncIterator[MockFarm]:
    calls = CallLog(call_history)
    injector = FaultInjector(faults)
    mock: MockFarm

    def on_change() -> None:
        # The app wakes held calls itself, for the calls that may bring work.
        mock.notify(work=False)

    app = MockFarmApp(
        farm,
        faults=injector,
        calls=calls,
        on_change=on_change,
        info=lambda: mock.info(),
        stop_worker=farm.request_worker_stop,
        keys=keys,
    )
    mock = MockFarm(farm, app, calls, injector, keys)
    if monitor is not None:
        mock.monitor = app.monitor = Monitor(
            mock,
            monitor,
            codec=app.deadline_codec,
            verified=keys is not None,
            stop_worker=farm.request_worker_stop,
        )
    shutdown = trio.Event()
    async with contextlib.AsyncExitStack() as stack:
        if s3 is not None:
            mock.s3 = s3
            mock.s3_endpoint_url = await stack.enter_async_context(
                open_s3(s3, region=farm.config.region, keys=mock.access_key, host=host)
            )
            default_queue = farm.state.queues[farm.default_queue_id]
            default_queue.job_attachment_settings = s3.settings()
            # As a farm set up for attachments has: a queue role, whose credentials
            # (AssumeQueueRoleForWorker/ForUser) reach the bucket.
            default_queue.role_arn = default_queue.role_arn or (
                f"arn:aws:iam::{farm.config.account_id}:role/farmhand-mockfarm-queue"
            )
        nursery = await stack.enter_async_context(trio.open_nursery())
        # MockFarmApp is an ASGI 3 application; hypercorn's TypedDict signature
        # is stricter than the plain mappings it is written with.
        asgi = cast(Any, app)
        if listen:
            from hypercorn.trio import serve

            server_config = hypercorn_config(
                host, port, logger="farmhand.mockfarm.http", keep_alive_timeout=keep_alive_timeout
            )
            binds = await nursery.start(
                partial(serve, asgi, server_config, shutdown_trigger=shutdown.wait)
            )
            mock.endpoint_url = binds[0]
        else:
            from .._asgitransport import AppTransport

            mock.endpoint_url = IN_PROCESS_URL
            mock.transport = AppTransport(asgi, nursery)
        watchdog = trio.CancelScope()

        async def run_watchdog() -> None:
            with watchdog:
                await mock._watchdog()

        nursery.start_soon(run_watchdog)
        try:
            yield mock
        finally:
            watchdog.cancel(reason="mock farm closing")
            if mock.monitor is not None:
                mock.monitor.closing.set()  # its event streams end, so the server can
            shutdown.set()
            if not listen:
                # No server to end: its requests' tasks go with the farm.
                nursery.cancel_scope.cancel(reason="mock farm closing")


def make_client(
    service: str, endpoint_url: str, *, region: str = "us-west-2", **kwargs: Any
) -> Any:
    """A boto3 client for a mock farm endpoint: fake credentials, no host prefix, and
    no retries unless ``config`` asks for them (so callers see every error)."""
    import boto3
    from botocore.config import Config

    config = kwargs.pop("config", None)
    base = Config(inject_host_prefix=False, retries={"total_max_attempts": 1, "mode": "standard"})
    session = boto3.session.Session(
        aws_access_key_id=kwargs.pop("aws_access_key_id", "AKIDMOCKFARM"),
        aws_secret_access_key=kwargs.pop("aws_secret_access_key", "mockfarm-secret"),
        region_name=region,
    )
    return session.client(
        service,
        endpoint_url=endpoint_url,
        config=base.merge(config) if config is not None else base,
        **kwargs,
    )
