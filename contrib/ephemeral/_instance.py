"""This instance: its id (IMDSv2) and how it ends (EC2 TerminateInstances or a command).

The instance id comes from ``--instance-id`` (``INSTANCE_ID``), else from the
instance-metadata service with an IMDSv2 session token: ``PUT
/latest/api/token``, then ``GET /latest/meta-data/instance-id`` with the
token. The service is at ``--imds-endpoint``, else
``AWS_EC2_METADATA_SERVICE_ENDPOINT``, else ``http://169.254.169.254``;
``AWS_EC2_METADATA_DISABLED=true`` turns it off unless an endpoint is given
explicitly. The metadata service is local: never reached through a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import httpx
import structlog
import trio

log = structlog.get_logger("farmhand.ephemeral")

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
_TOKEN_TTL_SECONDS = "60"
_INSTANCE_ID = re.compile(r"i-[0-9a-zA-Z]{1,64}")
_ATTEMPTS = 3


def imds_endpoint(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """Where the metadata service is, or ``None`` when it is turned off."""
    if explicit:
        return explicit.rstrip("/")
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    return (environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_IMDS_ENDPOINT).rstrip("/")


async def instance_id_from_imds(endpoint: str, *, attempt_seconds: float = 1.0) -> str | None:
    """The instance id from IMDSv2 at ``endpoint``; ``None`` (with a warning) when it
    cannot be had."""
    async with httpx.AsyncClient(trust_env=False, timeout=attempt_seconds) as http:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                token = await http.put(
                    f"{endpoint}/latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": _TOKEN_TTL_SECONDS},
                )
                token.raise_for_status()
                answer = await http.get(
                    f"{endpoint}/latest/meta-data/instance-id",
                    headers={"X-aws-ec2-metadata-token": token.text},
                )
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("ephemeral.imds_failed", attempt=attempt, error=str(exc) or repr(exc))
                if attempt < _ATTEMPTS:
                    await trio.sleep(0.1 * 2**attempt)
                continue
            instance_id = answer.text.strip()
            if _INSTANCE_ID.fullmatch(instance_id):
                return instance_id
            log.warning("ephemeral.imds_failed", attempt=attempt, error="not an instance id")
            return None
    return None


async def run_terminate_command(argv: Sequence[str], *, limit: float = 60.0) -> bool:
    """Run ``argv`` to end this instance; whether it exited 0 within ``limit`` seconds."""
    log.warning("ephemeral.terminating", command=list(argv))
    with trio.move_on_after(limit) as scope:
        try:
            result = await trio.run_process(
                list(argv), check=False, capture_stdout=True, capture_stderr=True
            )
        except OSError as exc:
            log.error("ephemeral.terminate_failed", command=list(argv), error=str(exc))
            return False
    if scope.cancelled_caught:
        log.error(
            "ephemeral.terminate_failed",
            command=list(argv),
            error=f"still running after {limit:g} s",
        )
        return False
    if result.returncode != 0:
        log.error(
            "ephemeral.terminate_failed",
            command=list(argv),
            exit_code=result.returncode,
            output=(result.stdout + result.stderr).decode("utf-8", "replace")[-500:],
        )
        return False
    return True
