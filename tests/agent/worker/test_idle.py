"""agent.worker._idle: logind's IdleHint over D-Bus, from a fake logind on a private bus."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from jeepney import MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.trio import open_dbus_connection

from agent.worker._idle import LOGIN1, IdleUnknown, LogindIdle, idle_hint
from tests.worker_harness import farm_and_worker, py, simple_job, wait_job

needs_dbus = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed"
)


def test_the_idle_hint_is_a_boolean_in_a_variant() -> None:
    """The reply body of Properties.Get is one variant; anything else is IdleUnknown."""
    assert idle_hint((("b", True),)) is True
    assert idle_hint((("b", False),)) is False
    with pytest.raises(IdleUnknown, match="a 's' value"):
        idle_hint((("s", "yes"),))
    with pytest.raises(IdleUnknown, match="answered IdleHint with"):
        idle_hint(())


async def test_no_bus_is_unknown_not_idle(tmp_path: Path) -> None:
    """A bus that is not there: IdleUnknown, saying which."""
    source = LogindIdle(f"unix:path={tmp_path}/no-bus")
    with pytest.raises(IdleUnknown, match="cannot reach the D-Bus system bus"):
        await source.user_idle()


@asynccontextmanager
async def private_bus(tmp_path: Path) -> AsyncIterator[str]:
    """A dbus-daemon of our own on a socket in ``tmp_path``; yields its address."""
    socket = tmp_path / "bus"
    process = await trio.lowlevel.open_process(
        [
            "dbus-daemon",
            "--session",
            "--nofork",
            "--print-address=1",
            f"--address=unix:path={socket}",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        printed = b""
        with trio.fail_after(10):
            while not printed.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "dbus-daemon exited"
                printed += chunk
        yield printed.decode().strip()
    finally:
        process.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


@attrs.define
class FakeLogind:
    """Answers ``Properties.Get(org.freedesktop.login1.Manager, IdleHint)`` with ``hint``."""

    hint: Any = True
    asked: int = 0

    async def serve(self, address: str, *, task_status: trio.TaskStatus[None]) -> None:
        conn = await open_dbus_connection(address)
        async with conn:
            await conn.send(message_bus.RequestName(LOGIN1))
            while (await conn.receive()).header.message_type is not MessageType.method_return:
                pass  # NameAcquired, before the answer
            task_status.started()
            while True:
                message = await conn.receive()
                if message.header.message_type is not MessageType.method_call:
                    continue
                self.asked += 1
                if message.body == ("org.freedesktop.login1.Manager", "IdleHint"):
                    value = ("b", self.hint) if isinstance(self.hint, bool) else ("s", self.hint)
                    await conn.send(new_method_return(message, "v", (value,)))
                else:
                    await conn.send(
                        new_error(message, "org.freedesktop.DBus.Error.UnknownProperty")
                    )


@needs_dbus
async def test_logind_idle_reads_the_managers_idle_hint(tmp_path: Path) -> None:
    """Against a fake logind on a private bus: the hint as it changes; a bad answer and a
    bus without logind are IdleUnknown."""
    logind = FakeLogind()
    async with private_bus(tmp_path) as address, trio.open_nursery() as nursery:
        source = LogindIdle(address)
        with pytest.raises(IdleUnknown, match="logind did not answer IdleHint"):
            await source.user_idle()  # nobody owns org.freedesktop.login1 yet
        await nursery.start(logind.serve, address)
        assert await source.user_idle() is True
        logind.hint = False
        assert await source.user_idle() is False
        logind.hint = "maybe"
        with pytest.raises(IdleUnknown, match="a 's' value"):
            await source.user_idle()
        nursery.cancel_scope.cancel()
    assert logind.asked == 3


@needs_dbus
@pytest.mark.slow
async def test_a_worker_follows_logind(tmp_path: Path) -> None:
    """The whole worker with the default source on a private bus: paused while logind says
    a user is active, working once the user is idle (one poll, 5 s of real time)."""
    logind = FakeLogind(hint=False)
    async with private_bus(tmp_path) as address, trio.open_nursery() as nursery:
        await nursery.start(logind.serve, address)
        async with farm_and_worker(
            tmp_path, only_when_user_idle=True, idle_source=LogindIdle(address)
        ) as (farm, worker, _events):
            at_start = worker.statistics()
            job_id = farm.create_job(simple_job(py("print('x')"), frames="1"))
            logind.hint = True
            assert await wait_job(farm, job_id) == "SUCCEEDED"
        nursery.cancel_scope.cancel()
    assert (at_start.state, at_start.paused_for) == ("paused", ("user_active",))
