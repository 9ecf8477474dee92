"""Bootstrapping a worker on a farm, and keeping its credentials fresh.

The sequence is the official agent's (worker API contract, "Bootstrap"):

1. load ``<persistence>/worker.json``; with none, ``CreateWorker`` (with the
   bootstrap credentials and the host's properties) and save it (0600);
2. get the worker's own (fleet role) credentials: from the 0600 cache in
   ``<persistence>/credentials/`` while they are valid for a while yet, else
   ``AssumeFleetRoleForWorker`` with the bootstrap credentials;
3. ``UpdateWorker(STARTED)`` with the host's capabilities and properties, with
   the worker's credentials; the answer says where the agent's own log goes;
4. a worker id from disk that the farm no longer knows starts over at 1.

An agent that found sessions its predecessor left running (``resuming``; see
``actors/_restart.py``) does not say ``STARTED`` in step 3: to the farm that
is a fresh start, whose sessions are over. It updates the worker's
capabilities and properties only, and makes one ``UpdateWorkerSchedule`` to
learn whether the farm still counts the worker as online (its sessions still
assigned). If it does not (``STATUS_CONFLICT``: the worker went
``NOT_RESPONDING`` or ``STOPPED``), the sessions are lost anyway: the agent
starts as usual, and ``Bootstrapped.resumed`` says so.

``refresh_credentials`` renews the worker's credentials before they expire:
from 15 minutes before expiry, once a minute until it works, first with the
worker's current credentials and, once those have expired (a host that
slept), with the bootstrap credentials. If they come within 10 minutes of
expiring without a renewal, it calls ``on_failure`` with the time left.
Credentials that live less than an hour get the same windows in proportion
(``agent.worker._queuecreds.refresh_windows``: half, a third and a twelfth of their
lifetime), so short-lived ones are renewed in time rather than in a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import structlog
import trio

from .._errors import FarmhandError, InstanceProfileAttached, WorkerNotFound, WorkerOffline
from ..deadline import CredentialHolder, DeadlineClient, ServiceEndpoint, WorkerClient
from ._config import WorkerConfig
from ._hostinfo import HostFacts
from ._queuecreds import expiry_deadline, refresh_windows
from ._state import (
    CachedCredentials,
    WorkerState,
    load_credentials,
    load_worker_state,
    remove_credentials,
    save_credentials,
    save_worker_state,
)

log = structlog.get_logger("farmhand.bootstrap")

#: The sentinel line external tools watch for (the official agent's wording).
BOOTSTRAPPED = "Worker successfully bootstrapped and is now running."
#: Cached credentials with less left than this are not used at start (they are
#: renewed from then on; see ``agent.worker._queuecreds.refresh_windows``).
ADVISORY_REFRESH = timedelta(minutes=15)


@attrs.frozen
class Bootstrapped:
    worker_id: str
    worker: WorkerClient
    credentials: CredentialHolder
    #: The agent log's CloudWatch group and stream (``None``: not given).
    log_group: str | None
    log_stream: str | None
    host_configuration: Mapping[str, Any] | None
    state: WorkerState
    #: The farm still had the worker online: its held sessions can be taken over.
    resumed: bool = False


def _usable(cached: CachedCredentials | None) -> bool:
    return cached is not None and cached.expiration - datetime.now(UTC) > ADVISORY_REFRESH


async def bootstrap(
    config: WorkerConfig,
    *,
    http: httpx.AsyncClient,
    endpoint: ServiceEndpoint,
    bootstrap_credentials: CredentialHolder,
    facts: HostFacts,
    resuming: bool = False,
    schedule_http: httpx.AsyncClient | None = None,
) -> Bootstrapped:
    directory = config.worker_persistence_dir
    farm_id, fleet_id = config.farm_id, config.fleet_id
    as_bootstrap = DeadlineClient(http, endpoint, bootstrap_credentials)
    state = await trio.to_thread.run_sync(load_worker_state, directory)
    from_disk = state is not None
    while True:
        if state is None:
            response = await as_bootstrap.create_worker(
                farm_id=farm_id, fleet_id=fleet_id, host_properties=facts.host_properties.to_api()
            )
            state = WorkerState(str(response["workerId"]))
            await trio.to_thread.run_sync(save_worker_state, directory, state)
            log.info("bootstrap.worker_created", worker_id=state.worker_id)
        worker_id = state.worker_id
        try:
            cached = await trio.to_thread.run_sync(load_credentials, directory, worker_id)
            if not _usable(cached):
                response = await as_bootstrap.assume_fleet_role_for_worker(
                    farm_id=farm_id, fleet_id=fleet_id, worker_id=worker_id
                )
                cached = CachedCredentials.from_api(response["credentials"])
                await trio.to_thread.run_sync(save_credentials, directory, worker_id, cached)
            assert cached is not None
            credentials = CredentialHolder(None)
            credentials.set_from_api(_api_form(cached))
            worker = DeadlineClient(
                http, endpoint, credentials, schedule_http=schedule_http
            ).for_worker(farm_id, fleet_id, worker_id)
            resumed = False
            if resuming and from_disk:
                resumed, started = await _update_online(worker, facts)
            if not resumed:
                started = await worker.update_worker(
                    status="STARTED",
                    capabilities=facts.capabilities.to_api(),
                    host_properties=facts.host_properties.to_api(),
                )
        except WorkerNotFound:
            if not from_disk:
                raise
            log.warning(
                "bootstrap.worker_unknown", worker_id=worker_id, action="creating a new worker"
            )
            await trio.to_thread.run_sync(remove_credentials, directory, worker_id)
            state, from_disk = None, False
            continue
        if not config.allow_instance_profile:
            await _wait_instance_profile_detached(config, worker)
        log_config = started.get("log") or {}
        options = log_config.get("options") or {}
        driver = log_config.get("logDriver")
        if driver not in (None, "awslogs"):
            log.warning("bootstrap.log_driver_unsupported", driver=driver)
        log.info(BOOTSTRAPPED, worker_id=worker_id, farm_id=farm_id, fleet_id=fleet_id)
        return Bootstrapped(
            worker_id=worker_id,
            worker=worker,
            credentials=credentials,
            log_group=options.get("logGroupName") if driver == "awslogs" else None,
            log_stream=options.get("logStreamName") if driver == "awslogs" else None,
            host_configuration=started.get("hostConfiguration"),
            state=state,
            resumed=resumed,
        )


async def _update_online(worker: WorkerClient, facts: HostFacts) -> tuple[bool, dict[str, Any]]:
    """``UpdateWorker`` with no status, and whether the farm still has the worker
    online (an ``UpdateWorkerSchedule`` that reports nothing goes through)."""
    answer = await worker.update_worker(
        capabilities=facts.capabilities.to_api(),
        host_properties=facts.host_properties.to_api(),
    )
    try:
        await worker.update_worker_schedule()
    except WorkerOffline as exc:
        log.warning("bootstrap.not_online", status=exc.status, action="starting afresh")
        return False, answer
    return True, answer


async def _wait_instance_profile_detached(config: WorkerConfig, worker: WorkerClient) -> None:
    """``--disallow-instance-profile``: jobs must not reach the instance's own role, so
    wait (two minutes, as the official agent) for the profile to be detached; if it
    stays, tell the farm the worker stopped and give up."""
    from ._imds import ImdsMonitor

    monitor = ImdsMonitor(config.imds_endpoint, lambda notice: None)
    if await monitor.wait_instance_profile_detached():
        return
    with trio.move_on_after(5):
        try:
            await worker.update_worker(status="STOPPED")
        except FarmhandError as exc:
            log.warning("bootstrap.stop_failed", error=str(exc))
    raise InstanceProfileAttached(
        "the EC2 instance profile is still attached after 120 s, and "
        "--disallow-instance-profile (allow_ec2_instance_profile = false) asks that jobs "
        "never reach it: detach it from the instance, or allow it"
    )


def _api_form(cached: CachedCredentials) -> dict[str, Any]:
    return {
        "accessKeyId": cached.access_key_id,
        "secretAccessKey": cached.secret_access_key,
        "sessionToken": cached.session_token,
        "expiration": cached.expiration,
    }


async def refresh_credentials(
    config: WorkerConfig,
    booted: Bootstrapped,
    *,
    http: httpx.AsyncClient,
    endpoint: ServiceEndpoint,
    bootstrap_credentials: CredentialHolder,
    on_failure: Callable[[float], Awaitable[None] | None],
) -> None:
    """Run for the worker's lifetime: renew its credentials before they expire."""
    holder = booted.credentials
    as_bootstrap = DeadlineClient(http, endpoint, bootstrap_credentials).for_worker(
        config.farm_id, config.fleet_id, booted.worker_id
    )
    issued = trio.current_time()
    while True:
        expiration = holder.expires_at
        if expiration is None:
            return  # credentials that never expire
        # Trio's clock from here on: a host that sleeps is caught by the next check.
        expires = expiry_deadline(expiration)
        start, give_up, retry = refresh_windows(expires - issued)
        await trio.sleep_until(expires - start)
        while True:
            client = booted.worker if trio.current_time() < expires else as_bootstrap
            try:
                response = await client.assume_fleet_role_for_worker()
                break
            except FarmhandError as exc:
                left = expires - trio.current_time()
                log.warning("credentials.refresh_failed", error=str(exc), seconds_left=round(left))
                if left <= give_up:
                    outcome = on_failure(max(left, 0.0))
                    if outcome is not None:
                        await outcome
                    return
                await trio.sleep(retry)
        cached = CachedCredentials.from_api(response["credentials"])
        holder.set_from_api(response["credentials"])
        issued = trio.current_time()
        await trio.to_thread.run_sync(
            save_credentials, config.worker_persistence_dir, booted.worker_id, cached
        )
        log.info("credentials.refreshed", expires=cached.expiration.isoformat())
