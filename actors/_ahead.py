"""A session's next task, started while the last one is reported.

Per task the runner reports the last action's end (its notes, ``ActionEnded``),
then resolves, prepares and reports the next one (``ActionStarted``, ``running:
...``) and only then asks its launcher to start the process: on a machine of
two cores, main, launcher and task each waited on the other. Once a task's
outcome is decided as a success (its process exited 0, its output read to the
end and nothing in it failed it, no stop, cancel or finish pending, no hook to
run after it), the runner resolves and prepares the next queued task, sends
its spawn, and only then reports: the launcher starts the next process while
the runner reports the last one and the next one's start, in the same order
and with the same events as before (the last one's end time taken before the
next one's start).

The next task is not the runner's running action until its turn: a ``Stop``,
a ``Cancel`` naming it, a ``Replace`` without it or a failure before its turn
report it as ever (NEVER_ATTEMPTED) and its process is killed before it is run
(``StartedAhead.discard``), never reported started. Only tasks go ahead, and
only in sessions without a job user or a restart hold (whose spawns carry
state of the last action), with a launcher.
"""

from __future__ import annotations

import attrs

from ._hostwork import RunningAction
from ._messages import QueuedAction, Runnable
from ._openjd import ActionSetupError, PreparedAction
from ._process import ProcessResult, StartedAhead
from ._spawn import SpawnRequest


@attrs.define(eq=False)
class Begun:
    """An action resolved and prepared, nothing of it reported yet
    (``SessionRunner._begin``); ``SessionRunner._proceed`` reports and runs it."""

    item: QueuedAction
    running: RunningAction
    #: What the resolver made of it (with the action's tag in its environment).
    runnable: Runnable | None = None
    #: The resolver's failure (the action fails with it).
    error: Exception | None = None
    #: The tag variable of its processes, and its number in the session.
    tag: dict[str, str] = attrs.Factory(dict)
    number: int = 0
    prepared: PreparedAction | None = None
    #: Why it could not be prepared (the action fails with it).
    setup_error: ActionSetupError | None = None
    #: Its spawn request, made ready ahead of its turn.
    request: SpawnRequest | None = None
    #: Its process, when started ahead of its turn.
    ahead: StartedAhead | None = None

    def matches(self, item: QueuedAction) -> bool:
        """Whether ``item`` is this action (a ``Replace`` queues new objects)."""
        return item is self.item or (
            item.action_id is not None
            and item.action_id == self.item.action_id
            and item.kind is self.item.kind
        )


def succeeded(result: ProcessResult, running: RunningAction) -> bool:
    """Whether a process's end makes its action a success, as far as the process
    goes (the runner checks its own state besides)."""
    return (
        result.spawn_error is None
        and result.exit_code == 0
        and not result.canceled
        and not result.mark_failed
        and not running.mark_failed
        and not running.reported
        and not isinstance((result.usage or {}).get("memory_limit"), dict)
    )
