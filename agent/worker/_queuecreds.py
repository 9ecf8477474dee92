"""Queue role credentials for jobs, as the official agent provides them.

A job whose queue has a role (``queueRoleArn`` in ``jobDetails``) runs with
that role's credentials. ``QueueCredentials`` gets them with
``AssumeQueueRoleForWorker`` once per queue and role, shares them among that
queue's sessions, renews them before they expire and hands them to jobs as a
``credential_process`` profile, in ``<persistence>/queues/<queue-id>/``:

=========================  ============================================================
``aws_credentials.json``   the credentials in ``credential_process`` form (``Version`` 1,
                           ``AccessKeyId``, ``SecretAccessKey``, ``SessionToken``,
                           ``Expiration``); rewritten atomically on every renewal
``get_aws_credentials.sh`` ``exec cat`` of that file
``config``                 ``[profile deadline-<queue-id>]`` with ``credential_process``
``credentials``            ``[deadline-<queue-id>]`` with the same ``credential_process``
=========================  ============================================================

Sessions get ``AWS_PROFILE=deadline-<queue-id>``, ``AWS_CONFIG_FILE`` and
``AWS_SHARED_CREDENTIALS_FILE``; any AWS SDK in the job picks up renewed
credentials by itself. Files and the directory are the agent's (0600, 0700);
for a job user they belong to its group (0640, the script and the directory
0750), and ``<persistence>`` and ``<persistence>/queues`` get the "search"
bit for others (0711: a name must be known to be reached; nothing can be
listed), so the job user can reach its queue's directory and no other.

Renewal starts ``min(15 min, lifetime / 2)`` before expiry and is retried every
``min(1 min, lifetime / 12)``; the official agent's 15 and 10 minute windows for
an hour's credentials, scaled down for short-lived ones. When a renewal cannot
be had (an error that retrying cannot fix, or none worked by
``min(10 min, lifetime / 3)`` before expiry), every session sharing those
credentials is told (``QueueAccess.failed``) and stops; other queues' sessions
are untouched. The next session of that queue starts afresh.

The directory goes when its last session ends, and ``<persistence>/queues``
is emptied when the agent starts and stops, so no credentials outlive the
sessions that needed them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from actors._jobuser import ResolvedJobUser
from actors._worksession import QueueAccess, QueueCredentialsError

from .._errors import (
    FarmhandError,
    InternalServerError,
    RetriesExhausted,
    ThrottlingError,
    TransportError,
)
from ._state import CachedCredentials

log = structlog.get_logger("farmhand.queuecreds")

#: ``AssumeQueueRoleForWorker`` for one queue; its ``credentials`` member, if any.
AssumeQueueRole = Callable[[str], Awaitable[Mapping[str, Any]]]

#: Errors a later renewal may not meet; any other one ends the credentials at once.
_TRANSIENT = (TransportError, RetriesExhausted, ThrottlingError, InternalServerError)


#: Renewal starts this long before expiry, gives up this long before, retries this often
#: (the official agent's windows, for credentials of an hour or more).
ADVISORY_SECONDS, MANDATORY_SECONDS, RETRY_SECONDS = 900.0, 600.0, 60.0


def refresh_windows(lifetime: float) -> tuple[float, float, float]:
    """(start renewing, give up, retry every), in seconds: the first two before expiry.

    An hour's credentials get the official agent's 15 and 10 minutes and a retry a
    minute; shorter-lived ones get the same proportions of their lifetime."""
    lifetime = max(lifetime, 0.0)
    return (
        min(ADVISORY_SECONDS, lifetime / 2),
        min(MANDATORY_SECONDS, lifetime / 3),
        max(min(RETRY_SECONDS, lifetime / 12), 0.1),
    )


def expiry_deadline(expiration: datetime) -> float:
    """``expiration`` (wall clock) as a ``trio.current_time()`` deadline."""
    return trio.current_time() + (expiration - datetime.now(UTC)).total_seconds()


@attrs.frozen
class QueueCredentialsStatistics:
    #: Credentials held now (one per queue and role in use).
    queues: int
    sessions: int
    renewals: int
    failures: int


@attrs.define(eq=False)
class _Entry:
    queue_id: str
    role_arn: str
    directory: Path
    job_user: ResolvedJobUser | None
    ready: trio.Event = attrs.field(factory=trio.Event)
    #: Why the credentials are unusable (set once; the entry is then retired).
    error: str | None = None
    #: The farm gave no credentials (the queue has no role after all): no profile.
    none: bool = False
    leases: set[QueueAccess] = attrs.field(factory=set)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    expires_at: float = 0.0
    issued_at: float = 0.0

    @property
    def profile(self) -> str:
        return f"deadline-{self.queue_id}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_PROFILE": self.profile,
            "AWS_CONFIG_FILE": str(self.directory / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.directory / "credentials"),
        }


class QueueCredentials:
    """See the module docstring. Start with ``await nursery.start(creds.run)``; sessions
    then call ``open_access``."""

    def __init__(self, assume_queue_role: AssumeQueueRole, persistence_dir: Path) -> None:
        self._assume = assume_queue_role
        self._persistence = persistence_dir
        self._root = persistence_dir / "queues"
        self._entries: dict[tuple[str, str, int | None], _Entry] = {}
        self._live: set[_Entry] = set()
        self._nursery: trio.Nursery | None = None
        self._renewals = 0
        self._failures = 0

    def statistics(self) -> QueueCredentialsStatistics:
        return QueueCredentialsStatistics(
            queues=len(self._live),
            sessions=sum(len(entry.leases) for entry in self._live),
            renewals=self._renewals,
            failures=self._failures,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Credentials left by an agent that died cannot be for a session of ours.
        _remove_tree(self._root)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for entry in list(self._live):
                entry.scope.cancel(reason="the agent is stopping")
            _remove_tree(self._root)

    @contextlib.asynccontextmanager
    async def open_access(
        self, queue_id: str, role_arn: str, job_user: ResolvedJobUser | None
    ) -> AsyncIterator[QueueAccess | None]:
        """The queue's credentials for the block (see ``QueueCredentialSource``)."""
        key = (queue_id, role_arn, job_user.gid if job_user is not None else None)
        while True:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = self._new_entry(queue_id, role_arn, job_user)
                await self._first(entry)
            else:
                await entry.ready.wait()
            if entry.error is not None:
                raise QueueCredentialsError(entry.error)
            if entry.none:
                yield None
                return
            if entry in self._live:
                break
            # Its sessions all ended while this one waited (files gone): start afresh.
        access = QueueAccess(entry.env())
        entry.leases.add(access)
        try:
            yield access
        finally:
            entry.leases.discard(access)
            if not entry.leases:
                self._retire(entry, None)

    # ------------------------------------------------------------------ internals

    def _new_entry(self, queue_id: str, role_arn: str, job_user: ResolvedJobUser | None) -> _Entry:
        taken = {entry.directory.name for entry in self._live}
        name, index = queue_id, 1
        while name in taken:
            index += 1
            name = f"{queue_id}.{index}"
        entry = _Entry(queue_id, role_arn, self._root / name, job_user)
        self._live.add(entry)
        return entry

    async def _first(self, entry: _Entry) -> None:
        """Get the credentials for a new entry (in the first session's task)."""
        try:
            credentials = await self._fetch(entry)
            if credentials is None:
                log.warning(
                    "queuecreds.none_given",
                    queue_id=entry.queue_id,
                    note="the farm gave no credentials; the jobs run without a queue profile",
                )
                entry.none = True
                self._retire(entry, None, keep_waiters=True)
            else:
                self._install(entry, credentials)
                assert self._nursery is not None, "QueueCredentials.run is not running"
                self._nursery.start_soon(self._renew, entry)
        except (FarmhandError, OSError, ValueError) as exc:
            self._failures += 1
            log.error("queuecreds.unavailable", queue_id=entry.queue_id, error=str(exc))
            self._retire(entry, str(exc), keep_waiters=True)
        finally:
            entry.ready.set()

    async def _fetch(self, entry: _Entry) -> CachedCredentials | None:
        response = await self._assume(entry.queue_id)
        wire = response.get("credentials")
        return CachedCredentials.from_api(wire) if wire else None

    def _install(self, entry: _Entry, credentials: CachedCredentials) -> None:
        entry.issued_at = trio.current_time()
        entry.expires_at = expiry_deadline(credentials.expiration)
        _write_profile(self._persistence, entry, credentials)
        log.info(
            "queuecreds.installed",
            queue_id=entry.queue_id,
            expires=credentials.expiration.isoformat(),
            directory=str(entry.directory),
        )

    async def _renew(self, entry: _Entry) -> None:
        with entry.scope:
            while True:
                start, give_up, retry = refresh_windows(entry.expires_at - entry.issued_at)
                await trio.sleep_until(entry.expires_at - start)
                while True:
                    try:
                        credentials = await self._fetch(entry)
                        if credentials is None:
                            raise QueueCredentialsError("the farm gave no credentials")
                        self._install(entry, credentials)
                        self._renewals += 1
                        break
                    except (FarmhandError, QueueCredentialsError, OSError, ValueError) as exc:
                        left = entry.expires_at - trio.current_time()
                        log.warning(
                            "queuecreds.renewal_failed",
                            queue_id=entry.queue_id,
                            error=str(exc),
                            seconds_left=round(left, 1),
                        )
                        if not isinstance(exc, _TRANSIENT) or left <= give_up:
                            self._failures += 1
                            self._fail(entry, str(exc))
                            return
                        await trio.sleep(retry)

    def _fail(self, entry: _Entry, error: str) -> None:
        """Tell the sessions; new sessions of the queue start afresh."""
        key = (entry.queue_id, entry.role_arn, entry.job_user.gid if entry.job_user else None)
        if self._entries.get(key) is entry:
            del self._entries[key]
        entry.error = error
        for access in list(entry.leases):
            access.error = error
            access.failed.set()

    def _retire(self, entry: _Entry, error: str | None, *, keep_waiters: bool = False) -> None:
        """Forget ``entry`` and remove its files (its sessions have ended, or it never got
        credentials; ``keep_waiters``: sessions waiting for it still read ``error``)."""
        entry.scope.cancel(reason="no session uses these credentials")
        key = (entry.queue_id, entry.role_arn, entry.job_user.gid if entry.job_user else None)
        if self._entries.get(key) is entry:
            del self._entries[key]
        if error is not None:
            entry.error = error
        self._live.discard(entry)
        _remove_tree(entry.directory)


# ------------------------------------------------------------------ files


def _write_profile(persistence: Path, entry: _Entry, credentials: CachedCredentials) -> None:
    user = entry.job_user
    directory = entry.directory
    root = directory.parent
    if not root.exists():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o711 if user is not None else 0o700)
    if user is not None:
        for path in (persistence, root):
            mode = path.stat().st_mode & 0o7777
            if mode & 0o011 != 0o011:
                # The job user must reach its queue's directory (search, not list).
                path.chmod(mode | 0o011)
    fresh = not directory.exists()
    if fresh:
        directory.mkdir(mode=0o700)
        if user is not None:
            os.chown(directory, -1, user.gid)
            directory.chmod(0o750)
    json_path = directory / "aws_credentials.json"
    _write(json_path, json.dumps(credentials.to_cache()), 0o640, user)
    if fresh:
        script = directory / "get_aws_credentials.sh"
        _write(script, f"#!/bin/sh\nexec cat -- {shlex.quote(str(json_path))}\n", 0o750, user)
        process = f"credential_process = {shlex.quote(str(script))}\n"
        _write(directory / "config", f"[profile {entry.profile}]\n{process}", 0o640, user)
        _write(directory / "credentials", f"[{entry.profile}]\n{process}", 0o640, user)


def _write(path: Path, text: str, group_mode: int, user: ResolvedJobUser | None) -> None:
    """Write ``path`` atomically: the agent's own (group bits cleared) without a job
    user, else shared with the job user's group with ``group_mode``."""
    mode = group_mode if user is not None else group_mode & 0o700
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            if user is not None:
                os.fchown(file.fileno(), -1, user.gid)
            os.fchmod(file.fileno(), mode)
            file.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("queuecreds.cleanup_failed", path=str(path), error=str(exc))
