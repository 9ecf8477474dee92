"""The session runner's host actions and task hooks (what job attachments run on).

A ``HostAction`` is work the agent does itself (the attachment sync); a
``TaskHook`` wraps a task run (the output upload). Real tiny subprocesses, a
real runner; the hooks here are small fakes that record what they saw.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from openjd.expr import PathMappingRule

from actors import ActionKind, ActionState
from actors._messages import HostAction, HostContext, RunTask
from agent.local._localrun import session_config
from tests.session_harness import job, open_session, plan, py, step

OK, FAILED = ActionState.SUCCESS, ActionState.FAILED


def _template() -> dict[str, Any]:
    # Prints the mapped PATH parameter and the rules file, as a render job would read them.
    code = (
        "import json,sys; rules=json.load(open(sys.argv[2])); "
        "print('scene=' + sys.argv[1]); print('rules=' + json.dumps(rules))"
    )
    return job(
        step(
            "Render",
            {
                "command": py(code)["command"],
                "args": [*py(code)["args"], "{{Param.Scene}}", "{{Session.PathMappingRulesFile}}"],
            },
        ),
        parameterDefinitions=[{"name": "Scene", "type": "PATH"}],
    )


class Hook:
    """A TaskHook that records its calls and returns fixed manifests (or raises)."""

    def __init__(self, manifests: Sequence[Mapping[str, str]], fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.manifests = manifests
        self.fail = fail

    async def before(self, context: HostContext) -> None:
        self.calls.append("before")

    async def after(self, context: HostContext) -> Sequence[Mapping[str, str]]:
        self.calls.append("after")
        await context.status("uploading")
        if self.fail:
            raise RuntimeError(self.fail)
        return self.manifests


async def _run(tmp_path: Path, first: HostAction, hook: Hook | None) -> Any:
    lp = plan(tmp_path, _template(), parameters=["Scene=/projects/show/scene.ma"])
    config = attrs.evolve(session_config(lp, preserve=False), root_directory=tmp_path / "s")
    [task] = [a for a in lp.actions if isinstance(a, RunTask)]
    task = attrs.evolve(task, action_id="task-1", hook=hook)
    async with open_session(config) as harness:
        await harness.enqueue([first, task])
    return harness.recorder


async def test_host_action_maps_paths_for_later_tasks(tmp_path: Path) -> None:
    """Rules a host action adds reach later tasks: PATH parameters and the rules file."""
    local: list[Path] = []

    async def sync(context: HostContext) -> None:
        target = context.working_directory / "assetroot-abc"
        target.mkdir()
        local.append(target)
        await context.progress(50.0)
        await context.log("synced 1 file")
        context.add_path_mapping_rules(
            [
                PathMappingRule.from_dict(
                    {
                        "source_path_format": "POSIX",
                        "source_path": "/projects/show",
                        "destination_path": str(target),
                    }
                )
            ]
        )

    hook = Hook([{"outputManifestPath": "p", "outputManifestHash": "h"}])
    recorder = await _run(tmp_path, HostAction("sync-1", "job attachments", sync), hook)
    assert recorder.ended() == [
        (ActionKind.SYNC_ATTACHMENTS, "sync-1", OK),
        (ActionKind.TASK_RUN, "task-1", OK),
    ]
    lines = recorder.output("task-1")
    assert f"scene={local[0]}/scene.ma" in lines
    [rules_line] = [line for line in lines if line.startswith("rules=")]
    rules = json.loads(rules_line.removeprefix("rules="))["path_mapping_rules"]
    assert rules == [
        {
            "destination_path": str(local[0]),
            "source_path": "/projects/show",
            "source_path_format": "POSIX",
        }
    ]
    assert "synced 1 file" in recorder.logs()
    assert hook.calls == ["before", "after"]
    assert recorder.end_of("task-1").manifests == (
        {"outputManifestPath": "p", "outputManifestHash": "h"},
    )


async def test_failing_host_action_fails_and_later_work_is_never_attempted(tmp_path: Path) -> None:
    """A host action that raises is FAILED with its message; the task is NEVER_ATTEMPTED."""

    async def sync(context: HostContext) -> None:
        raise ValueError("s3://bucket/key does not exist")

    hook = Hook([])
    recorder = await _run(tmp_path, HostAction("sync-1", "job attachments", sync), hook)
    assert recorder.states() == [FAILED, ActionState.NEVER_ATTEMPTED]
    assert recorder.end_of("sync-1").fail_message == "s3://bucket/key does not exist"
    assert hook.calls == []


async def test_task_is_failed_when_its_upload_fails(tmp_path: Path) -> None:
    """A task whose process succeeded is FAILED when the hook's after raises, with its message."""

    async def sync(context: HostContext) -> None:
        pass

    hook = Hook([], fail="uploading the task's outputs failed: access denied")
    recorder = await _run(tmp_path, HostAction("sync-1", "job attachments", sync), hook)
    end = recorder.end_of("task-1")
    assert (end.state, end.exit_code) == (FAILED, 0)
    assert end.fail_message == "uploading the task's outputs failed: access denied"
    assert end.manifests is None


async def test_host_action_is_cancelled_like_a_process(tmp_path: Path) -> None:
    """Cancel stops a host action that is waiting (on S3, say) and reports it CANCELED."""
    from actors import Cancel

    started = trio.Event()

    async def sync(context: HostContext) -> None:
        started.set()
        await trio.sleep_forever()

    lp = plan(tmp_path, _template(), parameters=["Scene=/x"])
    config = attrs.evolve(session_config(lp, preserve=False), root_directory=tmp_path / "s")
    async with open_session(config) as harness:
        await harness.enqueue([HostAction("sync-1", "job attachments", sync)])
        await started.wait()
        await harness.send(Cancel(frozenset({"sync-1"})))
    assert harness.recorder.states() == [ActionState.CANCELED]
