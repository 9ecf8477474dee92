"""`run` through the embedded farm and worker gives what the direct session runner gives.

Each scenario runs in this process twice, through ``run_through_farm`` (mock
farm on loopback, one ``open_agent`` worker) and through ``run_local_session``,
and both renderings are compared: every jsonl event (times removed) and the
human output (durations removed).
"""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from actors import ActionOutput
from agent.local._farmrun import FarmRunSettings, run_through_farm
from agent.local._localrun import LocalPlan, run_local_session, session_config
from agent.local._render import HumanRenderer, JsonlRenderer
from agent.mockfarm import MonitorConfig
from tests.mockfarm_helpers import open_events
from tests.session_harness import Recorder, env, job, plan, py, step


def int_range(name: str, spec: str) -> dict[str, Any]:
    return {"taskParameterDefinitions": [{"name": name, "type": "INT", "range": spec}]}


def environment_file(tmp_path: Path, name: str, *args: Any, **fields: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "specificationVersion": "environment-2023-09",
                "environment": env(name, *args, **fields),
            }
        )
    )
    return path


def scenarios(tmp_path: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """name -> (template, plan options)."""
    counting = step(
        "Render", py("print('frame {{Task.Param.F}}')"), parameterSpace=int_range("F", "1-3")
    )
    return {
        "environments, steps and dependencies": (
            job(
                counting,
                step(
                    "Encode",
                    py("import os; print('encode', os.environ['FROM_STEP_ENV'])"),
                    dependencies=[{"dependsOn": "Render"}],
                    stepEnvironments=[env("StepEnv", variables={"FROM_STEP_ENV": "yes"})],
                ),
                jobEnvironments=[env("Outer", py("print('in')"), py("print('out')"))],
            ),
            {},
        ),
        "a failed task: the rest skipped, exits run": (
            job(
                step(
                    "S",
                    py(
                        "import sys; n = {{Task.Param.F}}; print('task', n); "
                        "print('openjd_fail: bad frame') if n == 2 else None; sys.exit(3 if n == 2 else 0)"
                    ),
                    parameterSpace=int_range("F", "1-4"),
                ),
                jobEnvironments=[env("E", py("print('enter')"), py("print('exit')"))],
            ),
            {},
        ),
        "an environment whose enter fails is still exited": (
            job(
                step("S", py("print('never')")),
                jobEnvironments=[env("E", py("import sys; sys.exit(1)"), py("print('exit ran')"))],
            ),
            {},
        ),
        "variables, openjd_env and messages": (
            job(
                step(
                    "S",
                    py(
                        "import os; print(os.environ['SET_BY_ENTER'], os.environ['STATIC']); "
                        "print('openjd_progress: 40'); print('openjd_status: half way'); "
                        "print('openjd_env: IGNORED=1')"
                    ),
                ),
                jobEnvironments=[
                    env(
                        "E",
                        py("print('openjd_env: SET_BY_ENTER=from enter')"),
                        variables={"STATIC": "static"},
                    )
                ],
            ),
            {},
        ),
        "a timeout": (
            job(
                step(
                    "S",
                    {**py("import time; print('start', flush=True); time.sleep(30)"), "timeout": 1},
                )
            ),
            {},
        ),
        "embedded files": (
            job(
                step(
                    "S",
                    py("print(open('{{Task.File.Data}}').read())"),
                    parameterSpace=int_range("N", "1-2"),
                    script={
                        "embeddedFiles": [
                            {"name": "Data", "type": "TEXT", "data": "frame {{Task.Param.N}}"}
                        ]
                    },
                )
            ),
            {},
        ),
        "external environments, a step and chosen tasks": (
            job(
                step("A", py("print('A')")),
                counting | {"dependencies": [{"dependsOn": "A"}]},
                jobEnvironments=[env("J", py("print('job env')"))],
            ),
            {
                "environments": [
                    environment_file(
                        tmp_path, "Ext1", py("print('ext1 in')"), py("print('ext1 out')")
                    ),
                    environment_file(tmp_path, "Ext2", variables={"X": "2"}),
                ],
                "step": "Render",
                "tasks": '[{"F": 3}, {"F": 1}, {"F": 3}]',
            },
        ),
        "maximum tasks of a chunked step": (
            job(
                step(
                    "S",
                    py("print('chunk {{Task.Param.F}}')"),
                    parameterSpace={
                        "taskParameterDefinitions": [
                            {
                                "name": "F",
                                "type": "CHUNK[INT]",
                                "range": "1-10",
                                "chunks": {"defaultTaskCount": 3, "rangeConstraint": "CONTIGUOUS"},
                            }
                        ]
                    },
                ),
                extensions=["TASK_CHUNKING"],
            ),
            {"maximum_tasks": 2},
        ),
    }


#: What differs from run to run: durations and what the actions cost (their presence
#: is compared: each figure leaves its name behind).
_DURATION = re.compile(
    r"(?<=\(exit )-?\d+, [0-9.]+ s|(?<=\()[0-9.]+ s(?=[,)])| in [0-9.]+ s(?=: |$)"
    r"|(?<=CPU )[0-9.]+(?= s)|(?<=peak memory )[0-9.]+(?= MiB)",
    re.MULTILINE,
)


async def render(lp: LocalPlan, *, farm: bool) -> tuple[list[dict[str, Any]], str]:
    jsonl, out, err = io.BytesIO(), io.BytesIO(), io.BytesIO()
    renderers: list[JsonlRenderer | HumanRenderer] = [JsonlRenderer(jsonl), HumanRenderer(out, err)]

    def both(event: Any) -> None:
        for renderer in renderers:
            renderer(event)

    succeeded: bool | None = None
    with trio.fail_after(60):
        if farm:
            status = await run_through_farm(
                lp, both, handle_signals=False, settings=FarmRunSettings(pipeline_depth=2)
            )
            succeeded = status == "SUCCEEDED"
        else:
            await run_local_session(
                lp, session_config(lp, preserve=False), both, handle_signals=False
            )
    for renderer in renderers:
        renderer.finish(planned=len(lp.actions), succeeded=succeeded)
    events = [json.loads(line) for line in jsonl.getvalue().decode().splitlines()]
    for event in events:
        event.pop("time", None)
        if "usage" in event:  # its figures vary; which ones there are does not
            event["usage"] = sorted(event["usage"])
    return events, _DURATION.sub("", out.getvalue().decode())


NAMES = [
    "environments, steps and dependencies",
    "a failed task: the rest skipped, exits run",
    "an environment whose enter fails is still exited",
    "variables, openjd_env and messages",
    "a timeout",
    "embedded files",
    "external environments, a step and chosen tasks",
    "maximum tasks of a chunked step",
]


def test_the_scenarios_are_the_ones_named(tmp_path: Path) -> None:
    """Every scenario is run (the parametrization below lists them by name)."""
    assert list(scenarios(tmp_path)) == NAMES


@pytest.mark.parametrize("name", NAMES)
async def test_the_farm_path_renders_what_the_direct_path_renders(
    tmp_path: Path, name: str
) -> None:
    """Same events, same states, same exit codes and messages, same human output."""
    template, options = scenarios(tmp_path)[name]
    lp = plan(tmp_path, template, **options)
    direct_events, direct_human = await render(lp, farm=False)
    farm_events, farm_human = await render(lp, farm=True)
    assert farm_events == direct_events
    assert farm_human == direct_human
    assert direct_events[-1]["event"] == "session_ended"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_run_with_a_monitor_serves_the_page_and_keeps_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --monitor: the embedded farm serves /monitor while the job runs (its address on
    stderr), and the session's log reaches it as the task prints."""
    go = tmp_path / "go"
    code = (
        "import os, time; print('waiting', 'here', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "print('went', 'on')"
    )
    lp = plan(tmp_path, job(step("S", py(code))))
    recorder = Recorder()
    port = _free_port()
    base = f"http://127.0.0.1:{port}/monitor"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            result: list[str] = []

            async def run() -> None:
                result.append(
                    await run_through_farm(
                        lp,
                        recorder.append,
                        handle_signals=False,
                        monitor=MonitorConfig(),
                        monitor_port=port,
                    )
                )

            nursery.start_soon(run)
            await recorder.wait_for(
                lambda e: isinstance(e, ActionOutput) and "waiting here" in e.lines
            )
            assert f"[farmhand] monitor: {base} (read-only)" in capsys.readouterr().err
            (listed,) = (await client.get(f"{base}/api/jobs")).json()["items"]
            sessions = (await client.get(f"{base}/api/jobs/{listed['jobId']}/sessions")).json()
            stream = f"/monitor/api/sessions/{sessions['items'][0]['sessionId']}/log/stream"
            # The worker ships the line; the farm keeps it and streams it to the page.
            async with open_events(f"http://127.0.0.1:{port}", stream) as events:
                assert (await events.next())[0] == "start"
                seen: list[str] = []
                while "waiting here" not in seen:
                    _, lines = await events.next()
                    seen += [line["message"] for line in lines]
                go.touch()
                while "went on" not in seen:
                    _, lines = await events.next()
                    seen += [line["message"] for line in lines]
    assert result == ["SUCCEEDED"]
