"""Queue role credentials: shared per queue, renewed before expiry, a credential_process
profile for jobs, and a failed renewal that stops only its own queue's sessions."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors._jobuser import ResolvedJobUser
from actors._worksession import QueueAccess, QueueCredentialsError
from agent._errors import AccessDeniedError, RetriesExhausted, TransportError
from agent.worker._queuecreds import QueueCredentials, refresh_windows


class FakeFarm:
    """AssumeQueueRoleForWorker: credentials that live ``lifetime`` seconds (wall clock,
    computed at each call, so autojumped Trio time and expirations agree)."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.calls: Counter[str] = Counter()
        #: queue id -> exceptions to raise on the next calls, in order.
        self.errors: dict[str, list[Exception]] = {}
        self.no_role: set[str] = set()

    async def assume(self, queue_id: str) -> Mapping[str, Any]:
        self.calls[queue_id] += 1
        await trio.lowlevel.checkpoint()
        pending = self.errors.get(queue_id)
        if pending:
            raise pending.pop(0)
        if queue_id in self.no_role:
            return {}
        n = self.calls[queue_id]
        return {
            "credentials": {
                "accessKeyId": f"ASIA{queue_id.upper()}{n}",
                "secretAccessKey": f"secret-{n}",
                "sessionToken": f"token-{n}",
                "expiration": datetime.now(UTC) + timedelta(seconds=self.lifetime),
            }
        }


def denied(message: str) -> AccessDeniedError:
    return AccessDeniedError(
        "AssumeQueueRoleForWorker", "AccessDeniedException", message, status=403
    )


def credential_process(access: QueueAccess) -> dict[str, Any]:
    """Run the profile's credential_process as an SDK would."""
    config = configparser.ConfigParser()
    config.read(access.env["AWS_CONFIG_FILE"])
    command = config[f"profile {access.env['AWS_PROFILE']}"]["credential_process"]
    done = subprocess.run(shlex.split(command), capture_output=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_refresh_windows_are_the_official_ones_for_an_hour_and_scale_down() -> None:
    """An hour: 15 min, 10 min, 1 min. A minute: half, a third, a twelfth."""
    assert refresh_windows(3600) == (900, 600, 60)
    assert refresh_windows(60) == (30, 20, 5)
    assert refresh_windows(0)[2] > 0  # never a busy loop


async def test_one_call_per_queue_shared_by_its_sessions(tmp_path: Path) -> None:
    """Two sessions of one queue share one AssumeQueueRoleForWorker and one profile;
    the files are the agent's own when jobs run as the agent's user."""
    farm = FakeFarm()
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        got: list[QueueAccess | None] = []

        async def session() -> None:
            async with creds.open_access("queue-a", "arn:role", None) as access:
                got.append(access)
                await trio.testing.wait_all_tasks_blocked()

        async with trio.open_nursery() as sessions:
            sessions.start_soon(session)
            sessions.start_soon(session)
        nursery.cancel_scope.cancel()
    first, second = got
    assert first is not None and second is not None
    assert farm.calls == {"queue-a": 1}
    assert first.env == second.env
    directory = tmp_path / "queues" / "queue-a"
    assert first.env == {
        "AWS_PROFILE": "deadline-queue-a",
        "AWS_CONFIG_FILE": str(directory / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "credentials"),
    }
    assert not directory.exists()  # gone with the last session


async def test_the_profile_gives_the_credentials_to_an_sdk(tmp_path: Path) -> None:
    """credential_process prints the queue's credentials; modes are 0700/0600."""
    creds = QueueCredentials(FakeFarm().assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with creds.open_access("queue-a", "arn:role", None) as access:
            assert access is not None
            printed = credential_process(access)
            directory = Path(access.env["AWS_CONFIG_FILE"]).parent
            modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
            dir_mode = directory.stat().st_mode & 0o777
            shared = configparser.ConfigParser()
            shared.read(access.env["AWS_SHARED_CREDENTIALS_FILE"])
        nursery.cancel_scope.cancel()
    assert printed["Version"] == 1
    assert printed["AccessKeyId"] == "ASIAQUEUE-A1"
    assert printed["SecretAccessKey"] == "secret-1"
    assert printed["SessionToken"] == "token-1"
    assert printed["Expiration"].endswith("Z")
    assert "credential_process" in shared["deadline-queue-a"]
    assert dir_mode == 0o700
    assert modes == {
        "aws_credentials.json": 0o600,
        "get_aws_credentials.sh": 0o700,
        "config": 0o600,
        "credentials": 0o600,
    }


async def test_files_belong_to_the_job_users_group(tmp_path: Path) -> None:
    """For a job user: 0640 files and 0750 script and directory in its group; the
    persistence directory can be searched (not listed) by others."""
    persistence = tmp_path / "persistence"
    persistence.mkdir(mode=0o700)
    gid = os.getgid()  # a group we may give files to, root or not
    user = ResolvedJobUser("jobuser", os.geteuid() + 1, "jobgroup", gid)
    creds = QueueCredentials(FakeFarm().assume, persistence)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with creds.open_access("queue-a", "arn:role", user) as access:
            assert access is not None
            directory = Path(access.env["AWS_CONFIG_FILE"]).parent
            found = {
                p.name: (p.stat().st_mode & 0o777, p.stat().st_gid) for p in directory.iterdir()
            }
            found["."] = (directory.stat().st_mode & 0o777, directory.stat().st_gid)
        nursery.cancel_scope.cancel()
    assert found == {
        ".": (0o750, gid),
        "aws_credentials.json": (0o640, gid),
        "get_aws_credentials.sh": (0o750, gid),
        "config": (0o640, gid),
        "credentials": (0o640, gid),
    }
    assert persistence.stat().st_mode & 0o777 == 0o711


async def test_credentials_are_renewed_before_they_expire(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An hour's credentials are renewed 15 minutes before expiry, and again after that."""
    farm = FakeFarm(lifetime=3600)
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with creds.open_access("queue-a", "arn:role", None) as access:
            assert access is not None
            start = trio.current_time()
            await trio.sleep(2699)
            assert credential_process(access)["AccessKeyId"] == "ASIAQUEUE-A1"
            await trio.sleep(2)
            assert credential_process(access)["AccessKeyId"] == "ASIAQUEUE-A2"
            await trio.sleep(2700)
            assert farm.calls["queue-a"] == 3
            assert not access.failed.is_set()
            assert trio.current_time() - start == pytest.approx(5401)
        nursery.cancel_scope.cancel()
    assert creds.statistics().renewals == 2


async def test_a_transient_failure_is_retried_until_it_works(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Transport errors and exhausted retries are tried again every minute."""
    farm = FakeFarm(lifetime=3600)
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with creds.open_access("queue-a", "arn:role", None) as access:
            assert access is not None
            farm.errors["queue-a"] = [
                TransportError("AssumeQueueRoleForWorker", "connection refused"),
                RetriesExhausted("AssumeQueueRoleForWorker", 5, ValueError("x")),
            ]
            await trio.sleep(2700 + 60 + 60 + 1)
            assert farm.calls["queue-a"] == 4
            assert credential_process(access)["AccessKeyId"] == "ASIAQUEUE-A4"
            assert not access.failed.is_set()
        nursery.cancel_scope.cancel()


async def test_a_failed_renewal_stops_only_that_queues_sessions(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Access denied on renewal fails queue B's sessions at once; queue A's go on; the
    next session of queue B starts afresh."""
    farm = FakeFarm(lifetime=3600)
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with (
            creds.open_access("queue-a", "arn:a", None) as a,
            creds.open_access("queue-b", "arn:b", None) as b,
        ):
            assert a is not None and b is not None
            farm.errors["queue-b"] = [denied("nope")]
            with trio.fail_after(2701):
                await b.failed.wait()
            assert b.error is not None and "nope" in b.error
            # Both were issued at the same trio time, but their deadlines come from the
            # wall-clock expiry, microseconds apart: let queue A's renewal come due.
            await trio.sleep(1)
            assert farm.calls["queue-a"] == 2
            assert not a.failed.is_set()
            async with creds.open_access("queue-b", "arn:b", None) as fresh:
                assert fresh is not None and not fresh.failed.is_set()
                assert Path(fresh.env["AWS_CONFIG_FILE"]).parent.name == "queue-b.2"
        nursery.cancel_scope.cancel()
    assert farm.calls == {"queue-a": 2, "queue-b": 3}
    assert creds.statistics().failures == 1


async def test_renewal_gives_up_before_the_credentials_expire(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Transient errors past the mandatory window (10 minutes before expiry) fail."""
    farm = FakeFarm(lifetime=3600)
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        async with creds.open_access("queue-a", "arn:role", None) as access:
            assert access is not None
            farm.errors["queue-a"] = [TransportError("AssumeQueueRoleForWorker", "down")] * 100
            await access.failed.wait()
            assert trio.current_time() == pytest.approx(3000, abs=61)
        nursery.cancel_scope.cancel()


async def test_no_credentials_at_the_start_fails_the_session_and_none_means_no_profile(
    tmp_path: Path,
) -> None:
    """An error getting the first credentials is a QueueCredentialsError; a queue the
    farm gives no credentials for gets no profile."""
    farm = FakeFarm()
    farm.errors["queue-a"] = [denied("denied")]
    farm.no_role.add("queue-b")
    creds = QueueCredentials(farm.assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        with pytest.raises(QueueCredentialsError, match="denied"):
            async with creds.open_access("queue-a", "arn:a", None):
                pass
        async with creds.open_access("queue-b", "arn:b", None) as none:
            assert none is None
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "queues").exists()


async def test_leftovers_are_removed_at_start_and_everything_at_stop(tmp_path: Path) -> None:
    """Credentials a crashed agent left are removed when the manager starts."""
    stale = tmp_path / "queues" / "queue-old"
    stale.mkdir(parents=True)
    (stale / "aws_credentials.json").write_text("{}")
    creds = QueueCredentials(FakeFarm().assume, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(creds.run)
        assert not stale.exists()
        nursery.cancel_scope.cancel()
