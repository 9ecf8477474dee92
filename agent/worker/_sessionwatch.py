"""What the worker learns from its sessions' events.

The worker wraps each session's ``on_event`` (``_run_worker``'s
``make_session``): every event goes to ``SessionWatch.observe`` first, then to
the host's own ``on_event``, unchanged. From the events it keeps:

- what each action cost (``ActionEnded.usage``), by kind and name, in
  ``ActionCosts`` (``_costs``; the histograms of ``/metrics``). The name is the
  one its ``ActionStarted`` gave: a task run's step, an environment's name;
- the failure throttle's count (``_throttle``): task runs that failed or timed
  out, and successes, each with its session's job; when the rule is met it logs
  one warning line and pauses the worker (``Worker.pause``) for the cool-down.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from actors import ActionEnded, ActionKind, ActionStarted, ActionState, SessionEnded, SessionEvent

from ._costs import ActionCosts
from ._pause import FAILURE_THROTTLE, PausePolicy
from ._throttle import FailureThrottle, ThrottleRule

log = structlog.get_logger("farmhand.worker")

#: ``Worker.pause``: (reason, running=, seconds=, detail=).
Pause = Callable[..., None]


class SessionWatch:
    """See the module docstring. ``rule``: the failure throttle's (``None``: off)."""

    def __init__(self, rule: ThrottleRule | None, cooldown: float, pause: Pause) -> None:
        self.costs = ActionCosts()
        self.throttle = FailureThrottle(rule) if rule is not None else None
        self._cooldown = cooldown
        self._pause = pause
        #: Per session: the action it runs now (id, name), for its ActionEnded.
        self._running: dict[str, tuple[str | None, str]] = {}

    @property
    def failed_task_streak(self) -> int:
        return self.throttle.streak if self.throttle is not None else 0

    def observe(self, job_id: str, event: SessionEvent) -> None:
        if isinstance(event, ActionStarted):
            self._running[event.session_id] = (event.action_id, event.name)
        elif isinstance(event, ActionEnded):
            running = self._running.pop(event.session_id, None)
            name = running[1] if running is not None and running[0] == event.action_id else ""
            if event.usage is not None:
                self.costs.record(event.kind.value, name, event.usage)
            if event.kind is ActionKind.TASK_RUN and self.throttle is not None:
                failed = event.state in (ActionState.FAILED, ActionState.TIMEOUT)
                if failed or event.state is ActionState.SUCCESS:
                    self._count(job_id, failed)
        elif isinstance(event, SessionEnded):
            self._running.pop(event.session_id, None)

    def _count(self, job_id: str, failed: bool) -> None:
        assert self.throttle is not None
        tripped = self.throttle.record(job_id, failed=failed, now=trio.current_time())
        if tripped is None:
            return
        log.warning(
            "worker.failure_throttle",
            failures=tripped.failures,
            jobs=list(tripped.jobs),
            within_seconds=round(tripped.seconds, 1),
            rule=str(self.throttle.rule),
            cooldown_seconds=self._cooldown,
            note=f"{tripped.describe()}: taking no work for {self._cooldown:g} s once the "
            "running session has ended, then trying again",
        )
        running: PausePolicy = "finish"
        self._pause(
            FAILURE_THROTTLE, running=running, seconds=self._cooldown, detail=tripped.describe()
        )
