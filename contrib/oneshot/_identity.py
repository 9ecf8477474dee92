"""Who is running the record: the ECS task, the Batch job, or this host and process.

On ECS (Fargate included, and Batch on either) the agent's container has
``ECS_CONTAINER_METADATA_URI_V4``; ``$URI/task`` describes the task (its ARN,
cluster, family, revision, availability zone, launch type). Elsewhere the
identity is the host name (a Kubernetes pod's name) and the process id.
Metadata that cannot be read is a warning, never a reason not to run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import structlog
import trio

log = structlog.get_logger("farmhand.oneshot")

METADATA_VARIABLE = "ECS_CONTAINER_METADATA_URI_V4"
#: The task metadata fields kept, and the names they are kept under.
_TASK_FIELDS = {
    "TaskARN": "task_arn",
    "Cluster": "cluster",
    "Family": "family",
    "Revision": "revision",
    "AvailabilityZone": "availability_zone",
    "LaunchType": "launch_type",
}
_ATTEMPTS = 3


@attrs.frozen
class Identity:
    #: One string naming the runner: the task ARN, else ``host:pid``.
    claimed_by: str
    #: What is known about it (``task_arn``, ``cluster``..., ``host``, ``pid``).
    details: Mapping[str, Any]


async def task_identity(environ: Mapping[str, str], *, attempt_seconds: float = 2.0) -> Identity:
    """This runner's identity (see the module docstring)."""
    details: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    batch_job = environ.get("AWS_BATCH_JOB_ID")
    if batch_job:
        details["batch_job_id"] = batch_job
    uri = environ.get(METADATA_VARIABLE)
    if uri:
        details.update(await _ecs_task(uri.rstrip("/") + "/task", attempt_seconds))
    task_arn = details.get("task_arn")
    claimed_by = task_arn if isinstance(task_arn, str) else f"{details['host']}:{details['pid']}"
    return Identity(claimed_by=claimed_by, details=details)


async def _ecs_task(url: str, attempt_seconds: float) -> dict[str, Any]:
    # The metadata endpoint is local to the task: never through a proxy.
    async with httpx.AsyncClient(trust_env=False, timeout=attempt_seconds) as http:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = await http.get(url)
                response.raise_for_status()
                document = response.json()
                if not isinstance(document, dict):
                    raise ValueError("the task metadata is not a JSON object")
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "oneshot.task_metadata_failed", url=url, attempt=attempt, error=str(exc)
                )
                if attempt < _ATTEMPTS:
                    await trio.sleep(0.1 * 2**attempt)
                continue
            return {
                ours: document[theirs]
                for theirs, ours in _TASK_FIELDS.items()
                if isinstance(document.get(theirs), str)
            }
    return {}
