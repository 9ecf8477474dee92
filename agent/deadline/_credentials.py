"""The credentials requests are signed with, and how the agent swaps them.

A ``CredentialHolder`` is shared by every client of one worker. The agent starts
it with the bootstrap credentials (``load_default_credentials``: botocore's
default chain) and swaps in the fleet-role credentials from
``AssumeFleetRoleForWorker`` with ``set_from_api``; the next request is signed
with whatever the holder holds at that moment (each retry signs afresh).

Any botocore ``Credentials`` works, including ``RefreshableCredentials``. Their
refresh is a blocking call (often a network round trip), so when one is due it
runs in a worker thread, one at a time, never on the Trio thread.
``static_credentials`` makes keys that never change without botocore's
``credentials`` module (its providers, configparser, getpass: 0.9 MiB and ~5 ms
to import), which only resolving a profile or a credential chain needs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import botocore.exceptions
import trio

from .._awskeys import FrozenCredentials
from .._errors import CredentialsError

if TYPE_CHECKING:
    import botocore.credentials
    import botocore.session

# Resolving the default chain or refreshing can block on the network (instance
# metadata, STS, a credential process). Few are ever needed at once.
_CREDENTIALS_LIMITER = trio.CapacityLimiter(2)

# What credential providers raise: botocore's own errors, and ClientError from
# the STS or SSO calls some of them make.
_CREDENTIAL_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class Credentials(Protocol):
    """What the holder takes: botocore's ``Credentials`` (``RefreshableCredentials``
    too) or ``StaticCredentials``."""

    def get_frozen_credentials(self) -> Any: ...


@attrs.frozen
class StaticCredentials:
    """Keys that never change, as botocore's ``Credentials`` offers them to a signer."""

    access_key: str
    secret_key: str = attrs.field(repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    method: str = "explicit"

    def get_frozen_credentials(self) -> FrozenCredentials:
        return FrozenCredentials(self.access_key, self.secret_key, self.token)


@attrs.frozen
class CredentialStatistics:
    #: How many times credentials were set (each swap counts).
    generation: int
    #: Refreshes of refreshable credentials run on our behalf.
    refreshes: int
    #: When the current credentials expire, if known.
    expires_at: datetime | None
    #: Whether the holder holds any credentials.
    present: bool


def static_credentials(
    access_key_id: str, secret_access_key: str, session_token: str | None = None
) -> StaticCredentials:
    """Plain credentials from their parts."""
    return StaticCredentials(access_key_id, secret_access_key, session_token)


def _refreshable(credentials: Credentials) -> bool:
    """Whether these are botocore's ``RefreshableCredentials``: none can exist unless
    its ``credentials`` module was imported (by whoever made them)."""
    module = sys.modules.get("botocore.credentials")
    return module is not None and isinstance(credentials, module.RefreshableCredentials)


class CredentialHolder:
    """Holds the credentials to sign with; the agent swaps them with ``set``."""

    def __init__(
        self, credentials: Credentials | None = None, *, expires_at: datetime | None = None
    ) -> None:
        self._credentials: Credentials | None = None
        self._frozen: FrozenCredentials | None = None
        self._expires_at: datetime | None = None
        self._generation = 0
        self._refreshes = 0
        self._refresh_lock = trio.Lock()
        if credentials is not None:
            self.set(credentials, expires_at=expires_at)

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    @property
    def expires_at(self) -> datetime | None:
        """When the current credentials expire, as given to ``set`` (``None``: unknown)."""
        return self._expires_at

    def set(self, credentials: Credentials | None, *, expires_at: datetime | None = None) -> None:
        """Sign the next requests with ``credentials`` (``None``: with nothing; calls fail)."""
        self._credentials = credentials
        self._expires_at = expires_at
        self._generation += 1
        if credentials is None or _refreshable(credentials):
            self._frozen = None
        else:
            self._frozen = _freeze(credentials)

    def set_from_api(self, credentials: Mapping[str, Any]) -> None:
        """Swap in the ``credentials`` member of an ``Assume*RoleForWorker`` response."""
        try:
            access_key = credentials["accessKeyId"]
            secret_key = credentials["secretAccessKey"]
        except KeyError as exc:
            raise CredentialsError(f"the farm's credentials lack {exc.args[0]}") from exc
        expiration = credentials.get("expiration")
        self.set(
            static_credentials(access_key, secret_key, credentials.get("sessionToken")),
            expires_at=_as_datetime(expiration) if expiration is not None else None,
        )

    async def frozen(self) -> FrozenCredentials:
        """The credentials to sign one request with; refreshes in a thread when due."""
        if self._frozen is not None:
            return self._frozen
        credentials = self._credentials
        if credentials is None:
            raise CredentialsError(
                "no credentials to sign requests with: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (any pair for a mock farm on loopback; the pair "
                "`mockfarm serve` prints when it verifies signatures), or AWS_PROFILE / "
                "--profile naming a profile that has keys"
            )
        if _refreshable(credentials):
            refreshable: Any = credentials  # botocore's RefreshableCredentials
            if refreshable.refresh_needed():
                async with self._refresh_lock:
                    return await self._refresh(refreshable)
        return _freeze(credentials)

    async def _refresh(self, credentials: Any) -> FrozenCredentials:
        if not credentials.refresh_needed():  # another task refreshed meanwhile
            return _freeze(credentials)
        self._refreshes += 1
        try:
            # Not abandoned on cancel: botocore holds its own lock while it
            # refreshes, and the result is shared by every later request.
            frozen: FrozenCredentials = await trio.to_thread.run_sync(
                credentials.get_frozen_credentials, limiter=_CREDENTIALS_LIMITER
            )
        except _CREDENTIAL_ERRORS as exc:
            raise CredentialsError(f"refreshing credentials failed: {exc}") from exc
        return _check(frozen)

    def statistics(self) -> CredentialStatistics:
        return CredentialStatistics(
            generation=self._generation,
            refreshes=self._refreshes,
            expires_at=self.expires_at,
            present=self._credentials is not None,
        )


async def load_default_credentials(
    session: botocore.session.Session | None = None,
) -> botocore.credentials.Credentials | None:
    """Resolve botocore's default credential chain (env, profile, process, SSO,
    container, instance metadata) in a thread; ``None`` when it finds nothing.

    This is how the bootstrap credentials are found, as the official agent does.
    The chain may query the EC2 instance-metadata service unless
    ``AWS_EC2_METADATA_DISABLED=true``.
    """
    if session is None:
        # Imported here: a session's imports (clients, waiters, docs) are for this alone.
        from botocore.session import Session

        session = Session()
    try:
        # Abandoned on cancel: a read with no side effects; a hung metadata
        # lookup must not hold up shutdown.
        credentials: botocore.credentials.Credentials | None = await trio.to_thread.run_sync(
            session.get_credentials, abandon_on_cancel=True, limiter=_CREDENTIALS_LIMITER
        )
    except _CREDENTIAL_ERRORS as exc:
        raise CredentialsError(f"resolving the default credentials failed: {exc}") from exc
    return credentials


def _freeze(credentials: Credentials) -> FrozenCredentials:
    try:
        frozen: FrozenCredentials = credentials.get_frozen_credentials()
    except _CREDENTIAL_ERRORS as exc:
        raise CredentialsError(f"reading credentials failed: {exc}") from exc
    return _check(frozen)


def _check(frozen: FrozenCredentials) -> FrozenCredentials:
    if not frozen.access_key or not frozen.secret_key:
        raise CredentialsError("the credentials lack an access key or secret key")
    return frozen


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CredentialsError(f"unreadable credential expiration {value!r}") from exc
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise CredentialsError(f"unreadable credential expiration {value!r}")
