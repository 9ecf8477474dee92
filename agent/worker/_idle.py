"""Whether the people at a workstation are away: systemd-logind's idle hint.

``--only-when-user-idle`` makes the worker take work only while the host's
users are idle. The answer comes from an ``IdleSource``; the worker asks it
every ``IDLE_POLL_SECONDS`` and pauses (``Worker.pause``, reason
``user_active``) while it says someone is at the machine, and also while it
cannot say (reason ``user_idle_unknown``: no answer is not a yes).

``LogindIdle``, the default source, reads ``IdleHint`` of
``org.freedesktop.login1.Manager`` on the system bus over D-Bus (jeepney, pure
Python, imported only when idle detection is on). logind sets it when *every*
session is idle: a graphical session reports itself idle after the desktop's
idle delay (GNOME's ``idle-delay``, 5 minutes by default; the same moment the
screen dims), a text or SSH session after its terminal has seen no input for
a while. So someone logged in over SSH and typing counts as present too, and
how long "away" has to last is the desktop's setting, not farmhand's. No X11
or input-device polling: nothing here needs a display or reads keystrokes.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

#: How often the worker asks its idle source.
IDLE_POLL_SECONDS = 5.0

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
LOGIN1_MANAGER = "org.freedesktop.login1.Manager"


class IdleUnknown(Exception):
    """The source cannot tell whether the users are idle (its message says why)."""


class IdleSource(Protocol):
    """Says whether the host's users are idle (the worker may take work)."""

    async def user_idle(self) -> bool:
        """``True`` when nobody is using the host; raises ``IdleUnknown``."""
        ...


def idle_hint(body: Any) -> bool:
    """The value of a ``Properties.Get(Manager, "IdleHint")`` reply's body: one
    variant holding a boolean, ``(("b", True),)``."""
    try:
        [(signature, value)] = body
    except (TypeError, ValueError):
        raise IdleUnknown(f"logind answered IdleHint with {body!r}") from None
    if signature != "b" or not isinstance(value, bool):
        raise IdleUnknown(f"logind answered IdleHint with a {signature!r} value, {value!r}")
    return value


class LogindIdle:
    """``IdleHint`` of logind's manager, asked on ``bus`` (``"SYSTEM"``, or a D-Bus
    address such as ``unix:path=/run/dbus/system_bus_socket``) with one short
    connection per question, so a restarted bus costs nothing."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self.bus = bus

    async def user_idle(self) -> bool:
        try:
            from jeepney import DBusAddress, Properties
            from jeepney.io.common import RouterClosed
            from jeepney.io.trio import open_dbus_router
            from jeepney.wrappers import DBusErrorResponse, unwrap_msg
        except ImportError as exc:  # pragma: no cover - a dependency; kept for a clear line
            raise IdleUnknown(f"jeepney is not installed ({exc})") from None
        manager = DBusAddress(LOGIN1_PATH, bus_name=LOGIN1, interface=LOGIN1_MANAGER)
        try:
            async with open_dbus_router(self.bus) as router:
                reply = await router.send_and_get_reply(Properties(manager).get("IdleHint"))
            return idle_hint(unwrap_msg(reply))
        except DBusErrorResponse as exc:
            raise IdleUnknown(f"logind did not answer IdleHint: {exc}") from None
        except (
            OSError,
            KeyError,
            ValueError,
            RouterClosed,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            # KeyError/ValueError: no bus address to connect to, one jeepney cannot read,
            # or the bus refused us (jeepney's AuthenticationError is a ValueError).
            raise IdleUnknown(f"cannot reach the D-Bus system bus ({self.bus}): {exc}") from None
