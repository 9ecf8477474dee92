"""``python -m agent run`` through the whole tree: an embedded farm and one embedded worker.

::

    mock farm (this process; over loopback HTTP only with --monitor)
      └─ queue environments   one per ``--environment``, in the order given
      └─ the job              the steps and tasks chosen, the path-mapping rules
    worker (``open_agent``)   bootstrap, scheduler, session, fetcher, heartbeat, logs
      └─ on_event ──────────▶ the renderer (the same human or jsonl output)

``run_through_farm`` submits the plan that ``plan_local_session`` made (the
template was validated there, so a bad one never reaches the farm), starts one
worker against the farm and shows the session's events as the worker sees them.
The worker reaches the farm through the farm's in-process transport
(``agent._asgitransport``): its Deadline and Logs calls are serialized, signed,
answered and parsed as on the wire, with no socket or HTTP codec between them,
and hypercorn is not even imported. With ``--monitor`` the farm listens on
loopback (the page is for a browser) and the worker calls it there.
The farm is told to run the job as ``openjd run`` would: in one session
(``session_limit=1``), on this host whatever the steps' host requirements, with
no retries, the job failing at its first failed task. The session's output
goes to the renderer only (no session log on disk or in the farm, which would
throw it away); the agent's own log still goes through the log shipper. When
the job is over and its session has ended on the worker, the worker finishes
and stops (UpdateWorker STOPPED) and the farm's verdict (the job's task run
status) is returned.

Signals (when ``handle_signals``): the first SIGINT or SIGTERM cancels the job
on the farm, as a user would, and asks the worker to sync at once; the farm
cancels the running action, which the worker cancels with the template's own
method, then the environment exits run. A second signal kills the running
action at once (the exits still run); a third drains the worker with no grace,
which skips the remaining exits.

``FarmRunSettings`` holds the farm's knobs that matter for speed: how many task
runs the farm assigns ahead (the worker must never wait for its next task
while the report of the last one is in flight) and the heartbeat interval
(nothing waits on it: every final state is reported at once).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import structlog
import trio
from openjd.expr import PathMappingRule

from actors import Containment, SessionEvent, default_session_root, private_directory

from .._progress import StatusLine
from .._signals import StopLevel, open_stop_signals
from .._words import counted
from ..deadline import CredentialHolder, ServiceEndpoint, static_credentials
from ..mockfarm import (
    ApiError,
    FarmConfig,
    MockFarm,
    MonitorConfig,
    S3Config,
    open_mock_farm,
)
from ..mockfarm._jobs import parameter_to_wire
from ..mockfarm._mockfarm import FINAL_JOB_STATUSES
from ..mockfarm._s3 import moto_available
from ..worker._config import WorkerConfig
from ..worker._hostinfo import Capabilities
from ..worker._worker import Endpoints, Worker, open_agent
from ._localrun import Limits, LocalPlan
from ._render import OutputGuard
from ._templates import TemplateError

if TYPE_CHECKING:
    # A bundle's job attachments (``agent.local._bundle``, ``agent.attachments``) are
    # imported when a run has a bundle: a plain template's run never needs them.
    from ..attachments import TransferStatistics
    from ._bundle import BundleAssets, JobBundle

log = structlog.get_logger("farmhand.run")


@attrs.frozen
class FarmRunSettings:
    #: Task runs the farm assigns ahead of the one running: at least what the worker
    #: runs in one report interval (below), so it never waits on a round trip.
    pipeline_depth: int = 256
    #: ``updateIntervalSeconds``: the worker's heartbeat.
    update_interval_seconds: int = 15
    #: The worker's report interval for routine successes (its failures, and the last
    #: success of what it was assigned, go at once). Every UpdateWorkerSchedule answer
    #: lists every action assigned ahead, so a call costs about the pipeline depth
    #: either way; with millisecond tasks one call per quarter second reports a couple
    #: of hundred: 17 calls for 2,000 tasks of ``true``, where one every 50 ms with 64
    #: ahead made 87 (benchmarks/RESULTS.md, issue 16). Nothing the user sees waits on
    #: it: the output comes from the worker's own events.
    report_interval_seconds: float = 0.25
    #: Calls the farm remembers (for ``MockFarm.calls``): none, as nobody reads them
    #: here, and a PutLogEvents input can be a megabyte.
    call_history: int = 0


def _farm_config(settings: FarmRunSettings) -> FarmConfig:
    return FarmConfig(
        update_interval_seconds=settings.update_interval_seconds,
        pipeline_depth=settings.pipeline_depth,
        max_sessions_per_worker=1,
        max_retries_per_task=0,
        max_failed_tasks_count=1,
        # The worker is in this process; a stalled event loop is not a lost worker.
        worker_timeout_seconds=24 * 3600.0,
        match_host_requirements=False,
        keep_log_events=False,
    )


def why_not_through_farm(plan: LocalPlan) -> str | None:
    """Why the plan cannot go through a farm (``None``: it can). The Deadline API has
    no place for these, so ``python -m agent run`` runs such a plan directly."""
    names = [str((d.get("environment") or {}).get("name")) for d in plan.environment_documents]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        return (
            f"two --environment templates are named {duplicates[0]!r}, and a queue's "
            "environments need distinct names"
        )
    for rule in plan.path_mapping_rules:
        if rule.to_dict()["source_path_format"] not in ("POSIX", "WINDOWS"):
            return "a path mapping rule's source format is neither POSIX nor WINDOWS"
    return None


def quota_exceeded(plan: LocalPlan) -> str | None:
    """Which of Deadline Cloud's task quotas the plan is past (``None``: none). A farm
    refuses such a job; the embedded one keeps the same quotas (see ``FarmConfig``)."""
    quotas = FarmConfig()
    for name, count in plan.step_task_counts.items():
        if count > quotas.max_tasks_per_step:
            return (
                f"step {name!r} has {count:,} tasks, and Deadline Cloud's quota "
                f"'Tasks per step' allows {quotas.max_tasks_per_step:,}"
            )
    if plan.task_count > quotas.max_tasks_per_job:
        return (
            f"the job has {plan.task_count:,} tasks, and Deadline Cloud's quota "
            f"'Tasks per job' allows {quotas.max_tasks_per_job:,}"
        )
    return None


def _wire_rule(rule: PathMappingRule) -> dict[str, str]:
    plain = rule.to_dict()
    return {
        "sourcePathFormat": str(plain["source_path_format"]),
        "sourcePath": str(plain["source_path"]),
        "destinationPath": str(plain["destination_path"]),
    }


def submit(farm: MockFarm, plan: LocalPlan, *, attachments: Mapping[str, Any] | None = None) -> str:
    """Put the plan on the farm: its environments, then the job. Raises ``TemplateError``
    for what the farm refuses."""
    try:
        for priority, document in enumerate(plan.environment_documents):
            farm.create_queue_environment(dict(document), priority=priority)
        return farm.create_job(
            dict(plan.template_document),
            parameters={
                name: parameter_to_wire(value)
                for name, value in plan.created.parameter_values.items()
            },
            steps=plan.steps,
            tasks=plan.tasks or None,
            path_mapping_rules=[_wire_rule(rule) for rule in plan.path_mapping_rules],
            session_limit=1,
            attachments=dict(attachments) if attachments is not None else None,
        )
    except ApiError as exc:
        raise TemplateError(exc.message) from exc


def _endpoints(farm: MockFarm) -> Endpoints:
    region = farm.config.region
    return Endpoints(
        ServiceEndpoint("deadline", farm.endpoint_url, region, inject_host_prefix=False),
        ServiceEndpoint("logs", farm.endpoint_url, region, inject_host_prefix=False),
    )


def worker_config(
    farm: MockFarm, directory: Path, *, preserve: bool, report_interval: float
) -> WorkerConfig:
    return WorkerConfig(
        farm_id=farm.farm_id,
        fleet_id=farm.fleet_id,
        worker_persistence_dir=directory / "persistence",
        worker_logs_dir=directory / "logs",
        session_root_dir=default_session_root(),
        no_shutdown=True,
        run_jobs_as_agent_user=True,
        retain_session_dir=preserve,
        # The session's output is what this command prints; a log of it on disk
        # would be deleted with the run's directory.
        local_session_logs=False,
        drain_grace_seconds=0.0,
        # No agent comes back for a run's sessions: they die with it.
        restart_grace_seconds=0.0,
        report_interval_seconds=report_interval,
        # This farm assigns work whatever the host has (match_host_requirements=False),
        # so the worker need not ask nvidia-smi (nor warn when there is none).
        capabilities=Capabilities({"amount.worker.gpu": 0, "amount.worker.gpu.memory": 0}),
    )


async def run_through_farm(
    plan: LocalPlan,
    on_event: Callable[[SessionEvent], None],
    *,
    preserve: bool = False,
    handle_signals: bool = True,
    settings: FarmRunSettings | None = None,
    bundle: JobBundle | None = None,
    on_interrupt: Callable[[str], None] | None = None,
    limits: Limits | None = None,
    monitor: MonitorConfig | None = None,
    monitor_port: int = 0,
) -> str:
    """Run the plan on an embedded farm with one embedded worker; the job's final
    task run status (``SUCCEEDED`` when everything ran and succeeded). A job
    bundle's files go through job attachments (``agent.local._bundle``).
    ``on_interrupt`` hears of the first stop signal (``"SIGINT"``). ``monitor``: the
    farm serves its monitor page (on ``monitor_port``, 0: any free one), whose address
    goes to stderr, and keeps the session's log, which the worker then ships."""
    settings = settings or FarmRunSettings()
    # Before the worker makes it: the worker would make it world-readable, not private.
    private_directory(default_session_root())
    assets: BundleAssets | None = None
    if bundle is not None:
        from ._bundle import bundle_assets

        assets = bundle_assets(bundle, plan.template_document, plan.created.parameter_values)
    if assets is not None and not moto_available():
        raise TemplateError(
            "a job bundle's files go through job attachments, which need moto's S3 "
            "(pip install 'farmhand[mockfarm]'); or run it with --direct"
        )
    with tempfile.TemporaryDirectory(prefix="farmhand-run-") as tmp:
        async with (
            _containment_ahead() as containment,
            open_mock_farm(
                config=attrs.evolve(_farm_config(settings), keep_log_events=True)
                if monitor is not None
                else _farm_config(settings),
                call_history=settings.call_history,
                s3=S3Config() if assets is not None else None,
                port=monitor_port if monitor is not None else 0,
                monitor=monitor,
                listen=monitor is not None,
            ) as farm,
            trio.open_nursery() as nursery,
        ):
            if farm.monitor is not None:
                mode = "actions allowed" if farm.monitor.config.actions else "read-only"
                print(f"[farmhand] monitor: {farm.monitor_url} ({mode})", file=sys.stderr)
            attachments = None
            if assets is not None:
                attachments = await _upload_bundle(farm, assets)
            job_id = submit(farm, plan, attachments=attachments)
            job = farm.job(job_id)
            holder: list[Worker] = []
            interrupt = partial(_interrupt, farm, job_id, holder, nursery)
            if handle_signals:
                nursery.start_soon(_forward_signals, interrupt, holder, on_interrupt)
            # The output gone (a closed pipe) interrupts the run as a first signal does.
            output = OutputGuard(on_event, interrupt)
            async with (
                _farm_http(farm) as http,
                open_agent(
                    attrs.evolve(
                        worker_config(
                            farm,
                            Path(tmp),
                            preserve=preserve,
                            report_interval=settings.report_interval_seconds,
                        ),
                        s3_endpoint_url=farm.s3_endpoint_url or None,
                        session_memory_limit=limits.memory if limits else None,
                        action_output_limit=limits.output if limits else None,
                        action_output_limit_mode=limits.output_mode if limits else "truncate",
                    ),
                    endpoints=_endpoints(farm),
                    http=http,
                    containment=containment,
                    bootstrap_credentials=CredentialHolder(
                        static_credentials("AKIDFARMHANDRUN", "farmhand-run")
                    ),
                    on_event=lambda _session_id, event: output(event),
                    # The output goes to the renderer only, as with the direct runner: the
                    # embedded farm would throw a shipped copy away (unless its monitor shows it).
                    ship_session_logs=monitor is not None,
                    # As with `openjd run`, the user's jobs see the user's own environment.
                    jobs_get_agent_credentials=True,
                ) as worker,
            ):
                holder.append(worker)
                await farm.wait_until(
                    lambda: job.status in FINAL_JOB_STATUSES and not job.active_sessions
                )
                # The farm has ended the session; the worker ends it once it hears so.
                worker.finish_then_stop()
                await worker.wait_stop_requested()
                await worker.drain(0)
            if assets is not None:
                await _download_bundle(farm, assets, job_id)
            nursery.cancel_scope.cancel(reason="the run is over")
            return job.status


@asynccontextmanager
async def _containment_ahead() -> AsyncIterator[Containment]:
    """The run's containment (``actors._contain``), its watchdog started, and the one
    session's launcher started ahead: its interpreter starts on another core while
    the farm and the worker start, instead of after them."""
    containment = Containment()
    # It first ends what a killed earlier run left (/proc scans): not on the loop.
    await trio.to_thread.run_sync(containment.start_watchdog)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(containment.keep_spare_launcher, sessions=1))
            # Wait for it to be spawned: the farm's set-up and the worker's next hold the
            # loop (and the GIL) for tens of milliseconds, and the spawning thread would
            # wait on them; the launcher's own start then overlaps theirs, and so do its
            # moves into cgroups (~10 ms of the kernel's, in a thread), which the session
            # waits for when it takes the launcher.
            await containment.wait_spare_spawned()
            yield containment
            nursery.cancel_scope.cancel(reason="the run is over")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(containment.close)


@asynccontextmanager
async def _farm_http(farm: MockFarm) -> AsyncIterator[httpx.AsyncClient | None]:
    """The worker's way to the farm: the farm's in-process transport, or ``None`` (the
    worker's own client, to the port of a farm that listens)."""
    if farm.transport is None:
        yield None
        return
    async with httpx.AsyncClient(transport=farm.transport, timeout=httpx.Timeout(30.0)) as http:
        yield http


async def _upload_bundle(farm: MockFarm, assets: BundleAssets) -> dict[str, Any]:
    from ..attachments import AttachmentError, S3Settings
    from ._bundle import transfer_progress, upload_inputs

    assert farm.s3 is not None
    settings = S3Settings(farm.s3.bucket, farm.s3.root_prefix)
    try:
        with StatusLine(sys.stderr) as line:
            attachments, files, size = await upload_inputs(
                assets,
                endpoint_url=farm.s3_endpoint_url,
                settings=settings,
                farm_id=farm.farm_id,
                queue_id=farm.queue_id,
                keys=farm.access_key,
                on_progress=lambda stats: line.show(
                    transfer_progress("uploading the bundle's inputs", stats)
                ),
            )
    except AttachmentError as exc:
        raise TemplateError(f"cannot upload the bundle's inputs: {exc}") from exc
    print(
        f"[farmhand] job attachments: {counted(files, 'input file')}, "
        f"{counted(size, 'byte')} under {assets.root}",
        file=sys.stderr,
    )
    return attachments


async def _download_bundle(farm: MockFarm, assets: BundleAssets, job_id: str) -> None:
    from ..attachments import AttachmentError, S3Settings
    from ._bundle import describe, download_outputs, transfer_progress

    assert farm.s3 is not None
    settings = S3Settings(farm.s3.bucket, farm.s3.root_prefix)
    try:
        with StatusLine(sys.stderr) as line:

            async def show(stats: TransferStatistics) -> None:
                line.show(transfer_progress("downloading the job's outputs", stats))

            stats = await download_outputs(
                assets,
                endpoint_url=farm.s3_endpoint_url,
                settings=settings,
                farm_id=farm.farm_id,
                queue_id=farm.queue_id,
                job_id=job_id,
                keys=farm.access_key,
                on_progress=show,
            )
    except AttachmentError as exc:
        print(f"[farmhand] error: cannot download the job's outputs: {exc}", file=sys.stderr)
        return
    print(
        f"[farmhand] job attachments: {describe(stats, assets.root, assets.outputs)}",
        file=sys.stderr,
    )


def _interrupt(farm: MockFarm, job_id: str, holder: list[Worker], nursery: trio.Nursery) -> None:
    """What the first signal does: cancel the job on the farm, and have the worker hear
    of it at once (it cancels the running action with its own method)."""
    farm.cancel_job(job_id)
    if holder:
        nursery.start_soon(holder[0].sync_now)


async def _forward_signals(
    interrupt: Callable[[], None],
    holder: list[Worker],
    on_interrupt: Callable[[str], None] | None,
) -> None:
    with open_stop_signals() as signals:
        async with trio.open_nursery() as nursery:
            async for request in signals:
                log.info("run.signal", signal=request.signal, count=request.count)
                worker = holder[0] if holder else None
                if request.level is StopLevel.GRACEFUL:
                    if on_interrupt is not None:
                        on_interrupt(request.signal)
                    interrupt()
                elif worker is None:
                    continue
                elif request.level is StopLevel.IMMEDIATE:
                    worker.cancel_running(
                        time_limit=0, reason="interrupted again: killing the running action"
                    )
                elif request.count == 3:  # abandon: skip the exits, once
                    nursery.start_soon(worker.drain, 0.0)
