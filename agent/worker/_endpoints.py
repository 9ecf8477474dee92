"""Where the worker's farm is: the Deadline and CloudWatch Logs endpoints, and the
AWS configuration and bootstrap credentials they are resolved with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ..deadline import (
    CredentialHolder,
    ServiceEndpoint,
    load_default_credentials,
    resolve_endpoint,
)
from . import _credenv
from ._config import WorkerConfig

if TYPE_CHECKING:
    import botocore.session


@attrs.frozen
class Endpoints:
    deadline: ServiceEndpoint
    logs: ServiceEndpoint


def aws_session(config: WorkerConfig) -> botocore.session.Session:
    """The AWS configuration the worker reads: the environment and config files, with
    the configured profile (``--profile``, ``[aws] profile``) when there is one, and the
    static keys the worker program took out of its environment (``_credenv``)."""
    return _credenv.aws_session(config.profile)


def resolve_endpoints(config: WorkerConfig) -> Endpoints:
    """The Deadline and CloudWatch Logs endpoints for ``config`` (reads AWS config; call once)."""
    session = aws_session(config)
    deadline = resolve_endpoint(
        "deadline", session=session, region=config.region, endpoint_url=config.endpoint_url
    )
    if config.disable_host_prefix:
        deadline = attrs.evolve(deadline, inject_host_prefix=False)
    return Endpoints(deadline, resolve_endpoint("logs", session=session, region=config.region))


async def load_bootstrap_credentials(config: WorkerConfig) -> CredentialHolder:
    """The credentials CreateWorker and AssumeFleetRoleForWorker are called with: the
    default AWS chain, from the configured profile when there is one."""
    return CredentialHolder(await load_default_credentials(aws_session(config)))
