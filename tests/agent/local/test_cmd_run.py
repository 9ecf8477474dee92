"""`python -m agent run` and `python -m agent check` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.session_harness import env, job, py, step

ROOT = Path(__file__).resolve().parents[3]

#: Extra arguments for ``run``: none (through the embedded farm and worker) or ``--direct``.
_RUN_EXTRA: list[str] = []


@pytest.fixture(params=["farm", "direct"])
def run_path(request: pytest.FixtureRequest) -> Any:
    """Run the test through the whole tree (the default) and through the direct runner."""
    _RUN_EXTRA[:] = ["--direct"] if request.param == "direct" else []
    yield request.param
    _RUN_EXTRA.clear()


def agent_argv(*args: str) -> list[str]:
    if args and args[0] == "run":
        args = (*args, *_RUN_EXTRA)
    return [sys.executable, "-m", "agent", *args]


def agent(*args: str, cwd: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_argv(*args),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def write(tmp_path: Path, template: dict[str, Any], name: str = "job.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(template))
    return path


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_example_job_runs_in_human_output(run_path: str) -> None:
    """The README's example job runs and succeeds."""
    result = agent("run", "agent/examples/hello.yaml", "-p", "Greeting=Hi")
    assert result.returncode == 0, result.stderr
    assert "Hi from farmhand-demo: frame 2, camera right" in result.stdout
    assert "session succeeded: 8 actions ran (6 tasks)" in result.stdout
    # The job's openjd_progress/openjd_status lines drive the status line (issue 17).
    assert "openjd_progress" not in result.stdout and "openjd_status" not in result.stdout


def test_jsonl_events(tmp_path: Path, run_path: str) -> None:
    """--output jsonl prints the documented events, in order, one per line."""
    template = job(
        step(
            "Render",
            py("print('frame {{Task.Param.F}}'); print('openjd_progress: 100')"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-2"}]
            },
        ),
        jobEnvironments=[env("Env", py("print('hello')"))],
    )
    result = agent("run", str(write(tmp_path, template)), "--output", "jsonl")
    assert result.returncode == 0, result.stderr
    got = events(result.stdout)
    shape = [
        (e["event"], e.get("index"), e.get("kind"), e.get("line"), e.get("state")) for e in got
    ]
    assert shape == [
        ("action_started", 0, "env_enter", None, None),
        ("output", 0, None, "hello", None),
        ("action_ended", 0, None, None, "SUCCESS"),
        ("action_started", 1, "task_run", None, None),
        ("output", 1, None, "frame 1", None),
        ("output", 1, None, "openjd_progress: 100", None),
        ("action_ended", 1, None, None, "SUCCESS"),
        ("action_started", 2, "task_run", None, None),
        ("output", 2, None, "frame 2", None),
        ("output", 2, None, "openjd_progress: 100", None),
        ("action_ended", 2, None, None, "SUCCESS"),
        ("action_started", 3, "env_exit", None, None),
        ("action_ended", 3, None, None, "SUCCESS"),
        ("session_ended", None, None, None, None),
    ]
    assert got[0]["name"] == "Env" and got[0]["parameters"] == {}
    assert got[3]["name"] == "Render" and got[3]["parameters"] == {"F": "1"}
    assert got[0]["time"].endswith("Z")
    ended = got[6]
    assert (
        ended["exit_code"],
        ended["progress"],
        ended["status_message"],
        ended["fail_message"],
    ) == (0, 100.0, None, None)
    assert got[-1] == {"event": "session_ended", "status": "success", "actions": {"SUCCESS": 4}}


def test_failure_exits_one_with_the_failure_reported(tmp_path: Path, run_path: str) -> None:
    """A failing action makes the run exit 1; the rest is counted as never attempted."""
    template = job(
        step(
            "S",
            py("import sys; print('openjd_fail: bad frame'); sys.exit(5)"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-3"}]
            },
        )
    )
    result = agent("run", str(write(tmp_path, template)), "--output", "jsonl")
    assert result.returncode == 1
    got = events(result.stdout)
    [ended] = [e for e in got if e["event"] == "action_ended"]
    assert (ended["state"], ended["exit_code"], ended["fail_message"]) == ("FAILED", 5, "bad frame")
    assert got[-1] == {
        "event": "session_ended",
        "status": "error",
        "actions": {"FAILED": 1, "NEVER_ATTEMPTED": 2},
    }
    human = agent("run", str(write(tmp_path, template)))
    assert human.returncode == 1
    assert "FAILED (exit 5" in human.stdout and "bad frame" in human.stdout
    assert "session FAILED" in human.stdout


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("specificationVersion: jobtemplate-2023-09\nname: [unclosed", [], "not valid"),
        (json.dumps(job(step("S", py("pass")), bogusField=1)), [], "bogusField"),
        (json.dumps(job(step("S", py("pass")))), ["-p", "Nope=1"], "Nope"),
        (json.dumps(job(step("S", py("pass")))), ["--step", "Missing"], "Missing"),
        (json.dumps(job(step("S", py("pass")), extensions=["WRAP_ACTIONS"])), [], "WRAP_ACTIONS"),
        (
            json.dumps(job(step("S", py("pass")))),
            ["--path-mapping-rules", '{"version": "x"}'],
            "pathmapping-1.0",
        ),
        (json.dumps(job(step("S", py("pass")))), ["--maximum-tasks", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(
    tmp_path: Path, content: str, args: list[str], message: str, run_path: str
) -> None:
    """A bad template, parameter or option is a one-line error and exit status 2."""
    path = tmp_path / "job.yaml"
    path.write_text(content)
    result = agent("run", str(path), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_missing_template_file(tmp_path: Path, run_path: str) -> None:
    """A template path that does not exist is reported, exit 2."""
    result = agent("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_monitor_needs_the_farm(tmp_path: Path) -> None:
    """--monitor with --direct, or --monitor-actions alone, is one line and exit 2."""
    path = write(tmp_path, job(step("S", py("print('never')"))))
    for args, message in (
        (["--monitor", "--direct"], "--monitor shows the embedded farm"),
        (["--monitor-actions"], "--monitor-actions needs --monitor"),
    ):
        result = agent("run", str(path), *args)
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: {message}" or message in result.stderr
        assert "never" not in result.stdout


def test_step_selection_and_dependencies(tmp_path: Path, run_path: str) -> None:
    """--step runs one step; --run-dependencies runs what it depends on first."""
    template = job(
        step("A", py("print('A')")),
        step("B", py("print('B')"), dependencies=[{"dependsOn": "A"}]),
        step("C", py("print('C')"), dependencies=[{"dependsOn": "B"}]),
    )
    path = write(tmp_path, template)
    only = agent("run", str(path), "--step", "C", "--output", "jsonl")
    with_deps = agent("run", str(path), "--step", "C", "--run-dependencies", "--output", "jsonl")
    everything = agent("run", str(path), "--output", "jsonl")

    def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
        return [e["line"] for e in events(result.stdout) if e["event"] == "output"]

    assert lines(only) == ["C"]
    assert lines(with_deps) == ["A", "B", "C"]
    assert lines(everything) == ["A", "B", "C"]


def test_external_environments_are_outermost(tmp_path: Path, run_path: str) -> None:
    """--environment templates are entered first, in order, and exited last."""
    outer = {
        "specificationVersion": "environment-2023-09",
        "environment": env("Ext1", py("print('in ext1')"), py("print('out ext1')")),
    }
    inner = {
        "specificationVersion": "environment-2023-09",
        "environment": env("Ext2", variables={"FROM_EXT2": "yes"}),
    }
    template = job(
        step("S", py("import os; print('task', os.environ['FROM_EXT2'])")),
        jobEnvironments=[env("J", py("print('in job')"))],
    )
    result = agent(
        "run",
        str(write(tmp_path, template)),
        "--environment",
        str(write(tmp_path, outer, "ext1.json")),
        "--environment",
        str(write(tmp_path, inner, "ext2.json")),
        "--output",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert [e["line"] for e in events(result.stdout) if e["event"] == "output"] == [
        "in ext1",
        "in job",
        "task yes",
        "out ext1",
    ]


def test_job_parameters_from_arguments_json_and_files(tmp_path: Path, run_path: str) -> None:
    """-p takes NAME=VALUE, inline JSON and file:// documents, later ones winning."""
    template = job(
        step("S", py("print('{{Param.A}} {{Param.B}} {{Param.C}}')")),
        parameterDefinitions=[
            {"name": "A", "type": "STRING"},
            {"name": "B", "type": "INT"},
            {"name": "C", "type": "STRING", "default": "dflt"},
        ],
    )
    params = tmp_path / "params.yaml"
    params.write_text("A: from-file\nB: 1\n")
    result = agent(
        "run",
        str(write(tmp_path, template)),
        "-p",
        f"file://{params}",
        "-p",
        '{"B": 7}',
        "--output",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert [e["line"] for e in events(result.stdout) if e["event"] == "output"] == [
        "from-file 7 dflt"
    ]


def test_choosing_tasks(tmp_path: Path, run_path: str) -> None:
    """--task-param, --tasks and --maximum-tasks choose which tasks run."""
    template = job(
        step(
            "S",
            py("print('{{Task.Param.F}}')"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-10"}]
            },
        )
    )
    path = str(write(tmp_path, template))

    def ran(*args: str) -> list[str]:
        result = agent("run", path, "--output", "jsonl", *args)
        assert result.returncode == 0, result.stderr
        return [e["line"] for e in events(result.stdout) if e["event"] == "output"]

    assert ran("--task-param", "F=4") == ["4"]
    assert ran("--tasks", '[{"F": 9}, {"F": 2}]') == ["9", "2"]
    assert ran("--maximum-tasks", "3") == ["1", "2", "3"]
    outside = agent("run", path, "--task-param", "F=11")
    assert outside.returncode == 2 and "task 0" in outside.stderr


def test_preserve_keeps_the_working_directory(tmp_path: Path, run_path: str) -> None:
    """--preserve keeps the session directory and says where it is."""
    template = job(step("S", py("open('marker.txt', 'w').write('x')")))
    result = agent("run", str(write(tmp_path, template)), "--preserve")
    assert result.returncode == 0
    [line] = [line for line in result.stdout.splitlines() if "working directory kept at" in line]
    kept = Path(line.rsplit(" ", 1)[1])
    assert (kept / "marker.txt").read_text() == "x"
    shutil.rmtree(kept)


def test_sigint_cancels_the_action_runs_exits_and_exits_130(tmp_path: Path, run_path: str) -> None:
    """SIGINT cancels the running action with its method, runs the environment exits,
    and the run ends canceled with exit status 130, as a shell's ^C."""
    task = {
        **py(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n"
        ),
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 60},
    }
    template = job(
        step("S", task), jobEnvironments=[env("E", py("print('enter')"), py("print('exit ran')"))]
    )
    process = subprocess.Popen(
        agent_argv("run", str(write(tmp_path, template)), "--output", "jsonl"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("line") == "ready":
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=60)
    seen.extend(events(rest))
    assert process.returncode == 130
    lines = [e["line"] for e in seen if e["event"] == "output"]
    assert lines == ["enter", "ready", "got SIGTERM", "exit ran"]
    states = [e["state"] for e in seen if e["event"] == "action_ended"]
    assert states == ["SUCCESS", "CANCELED", "SUCCESS"]
    assert seen[-1] == {
        "event": "session_ended",
        "status": "canceled",
        "actions": {"CANCELED": 1, "SUCCESS": 2},
        "signal": "SIGINT",
    }


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_is_summarised_as_canceled(
    tmp_path: Path, run_path: str, signum: signal.Signals, status: int
) -> None:
    """A user's ^C (or a SIGTERM) is summarised as canceled, not FAILED (issue 17),
    and the run exits 128+N."""
    task = py("import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
    template = job(
        step(
            "S",
            task,
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-2"}]
            },
        )
    )
    process = subprocess.Popen(
        agent_argv("run", str(write(tmp_path, template))),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line == "ready\n":
            process.send_signal(signum)
            break
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    [summary] = [line for line in rest.splitlines() if line.startswith("[farmhand] session ")]
    assert summary.startswith(
        f"[farmhand] session canceled by {signum.name}: 1 action ran (1 task) in "
    )
    # What the canceled action cost comes last (it ran contained).
    assert re.search(
        r" s: 1 canceled, 1 never attempted; CPU [0-9.]+ s, peak memory [0-9.]+ MiB$", summary
    ), summary


def test_a_closed_output_cancels_the_run_without_a_traceback(tmp_path: Path, run_path: str) -> None:
    """`run ... | head -1`: when the reader goes away, the running action is cancelled
    with its method, the environment exits still run, and the run exits 1 quietly."""
    marker = tmp_path / "exit-ran"
    task = {
        **py(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "for i in range(600):\n"
            "    print('line', i, flush=True)\n"
            "    time.sleep(0.05)\n"
        ),
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 60},
    }
    exit_action = py(f"open({str(marker)!r}, 'w').write('ran')")
    template = job(step("S", task), jobEnvironments=[env("E", py("print('enter')"), exit_action)])
    process = subprocess.Popen(
        agent_argv("run", str(write(tmp_path, template)), "--output", "jsonl"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:
        if json.loads(line).get("line") == "line 0":
            break
    process.stdout.close()  # the reader goes away, as head does
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr, stderr
    assert marker.read_text() == "ran"


def test_path_mapping_rules_map_path_parameters(tmp_path: Path, run_path: str) -> None:
    """--path-mapping-rules maps PATH parameters and is offered as Session.PathMappingRulesFile."""
    template = job(
        step(
            "S",
            {
                "command": sys.executable,
                "args": [
                    "-c",
                    "import json, sys; print('{{Param.In}}'); "
                    "print(json.load(open(sys.argv[1]))['path_mapping_rules'][0]['destination_path'])",
                    "{{Session.PathMappingRulesFile}}",
                ],
            },
        ),
        parameterDefinitions=[{"name": "In", "type": "PATH"}],
    )
    rules = {
        "version": "pathmapping-1.0",
        "path_mapping_rules": [
            {"source_path_format": "POSIX", "source_path": "/studio", "destination_path": "/mnt/x"}
        ],
    }
    result = agent(
        "run",
        str(write(tmp_path, template)),
        "-p",
        "In=/studio/shot1",
        "--path-mapping-rules",
        json.dumps(rules),
        "--output",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    lines = [e["line"] for e in events(result.stdout) if e["event"] == "output"]
    assert lines == ["/mnt/x/shot1", "/mnt/x"]


def test_host_requirements_do_not_keep_a_step_from_running(tmp_path: Path, run_path: str) -> None:
    """As with `openjd run`, a step runs on this host whatever its hostRequirements say."""
    template = job(
        step(
            "S",
            py("print('ran')"),
            hostRequirements={"amounts": [{"name": "amount.worker.gpu", "min": 64}]},
        )
    )
    result = agent("run", str(write(tmp_path, template)), "--output", "jsonl")
    assert result.returncode == 0, result.stderr
    assert [e["line"] for e in events(result.stdout) if e["event"] == "output"] == ["ran"]


def test_a_second_sigint_kills_the_running_action_and_exits_still_run(
    tmp_path: Path, run_path: str
) -> None:
    """The second SIGINT kills an action that ignores the first; environment exits still run."""
    task = {
        **py(
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM', flush=True))\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n"
        ),
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 300},
    }
    template = job(
        step("S", task), jobEnvironments=[env("E", py("print('enter')"), py("print('exit ran')"))]
    )
    process = subprocess.Popen(
        agent_argv("run", str(write(tmp_path, template)), "--output", "jsonl"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("line") == "ready":
            process.send_signal(signal.SIGINT)
        elif seen[-1].get("line") == "ignoring SIGTERM":
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=60)
    seen.extend(events(rest))
    assert process.returncode == 130
    lines = [e["line"] for e in seen if e["event"] == "output"]
    assert lines == ["enter", "ready", "ignoring SIGTERM", "exit ran"]
    assert [e["state"] for e in seen if e["event"] == "action_ended"] == [
        "SUCCESS",
        "CANCELED",
        "SUCCESS",
    ]


def test_a_plan_the_farm_cannot_carry_runs_directly(tmp_path: Path) -> None:
    """Two --environment templates with one name cannot be queue environments: the run
    says so on stderr and goes to the direct runner, with the same output."""
    environment = {
        "specificationVersion": "environment-2023-09",
        "environment": env("Same", py("print('in')")),
    }
    first = write(tmp_path, environment, "a.json")
    second = write(tmp_path, environment, "b.json")
    template = write(tmp_path, job(step("S", py("print('task')"))))
    result = agent("run", str(template), "--environment", str(first), "--environment", str(second))
    assert result.returncode == 0, result.stderr
    assert "running the session directly" in result.stderr
    assert result.stdout.count("in\n") == 2 and "task" in result.stdout


def test_json_output_is_one_document_at_the_end(tmp_path: Path, run_path: str) -> None:
    """--output json (openjd-cli's value) prints one document in `openjd run --output
    json`'s shape, with every line of the job; exit statuses as for the other outputs."""
    template = job(
        step(
            "Render",
            py("print('frame {{Task.Param.F}}'); print('openjd_progress: 100')"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-2"}]
            },
        ),
        name="JsonJob",
    )
    result = agent("run", str(write(tmp_path, template)), "--output", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # one document, nothing else
    assert (document["status"], document["message"], document["job_name"]) == (
        "success",
        "Session ended successfully",
        "JsonJob",
    )
    assert (document["tasks_run"], document["actions"]) == (2, {"SUCCESS": 2})
    assert isinstance(document["duration"], float)
    messages = [entry["message"] for entry in document["logs"]]
    assert messages == [
        "== Task 'Render' F=1",
        "frame 1",
        "openjd_progress: 100",
        messages[3],
        "== Task 'Render' F=2",
        "frame 2",
        "openjd_progress: 100",
        messages[7],
    ]
    assert messages[3].startswith("== Task 'Render' F=1: SUCCESS (exit 0")

    failing = job(step("S", py("import sys; sys.exit(3)")))
    failed = agent("run", str(write(tmp_path, failing, "failing.json")), "--output", "json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "error"

    bad = agent("run", str(tmp_path / "missing.yaml"), "--output", "json")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    refused = json.loads(bad.stdout)
    assert refused["status"] == "error" and "missing.yaml" in refused["message"]


def _bundle(tmp_path: Path, values: dict[str, Any] | None, suffix: str = ".yaml") -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    template = job(
        step("S", py("print('{{Param.Greeting}} x{{Param.Count}}')")),
        parameterDefinitions=[
            {"name": "Greeting", "type": "STRING"},
            {"name": "Count", "type": "INT", "default": 1},
        ],
    )
    (bundle / f"template{suffix}").write_text(json.dumps(template))
    if values is not None:
        document = {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}
        (bundle / f"parameter_values{suffix}").write_text(json.dumps(document))
    return bundle


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_job_bundle_directory_runs_with_its_parameter_values(
    tmp_path: Path, run_path: str, suffix: str
) -> None:
    """A job bundle directory (as `deadline` writes it) runs: its template, its saved
    parameter values (typed), -p over them; values no template defines (a queue
    environment's, the submitter's `deadline:` settings) are left out with a note."""
    values = {
        "Greeting": "Saved",
        "Count": 3,
        "CondaPackages": "blender",
        "deadline:priority": 50,
    }
    bundle = _bundle(tmp_path, values, suffix)
    saved = agent("run", str(bundle), "--output", "jsonl")
    assert saved.returncode == 0, saved.stderr
    assert [e["line"] for e in events(saved.stdout) if e["event"] == "output"] == ["Saved x3"]
    assert "CondaPackages" in saved.stderr and "deadline:priority" not in saved.stderr
    overridden = agent("run", str(bundle), "-p", "Greeting=Given", "--output", "jsonl")
    assert overridden.returncode == 0, overridden.stderr
    assert [e["line"] for e in events(overridden.stdout) if e["event"] == "output"] == ["Given x3"]


def test_a_directory_without_a_template_is_one_line_and_exit_two(tmp_path: Path) -> None:
    """`run` and `check` name what a bundle directory lacks."""
    (tmp_path / "empty").mkdir()
    for command in ("run", "check"):
        result = agent(command, str(tmp_path / "empty"))
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("error: ") and "template.yaml or template.json" in line


def test_check_takes_a_job_bundle_directory(tmp_path: Path) -> None:
    """`check BUNDLE_DIR` checks the bundle's template and reads its parameter values."""
    bundle = _bundle(tmp_path, {"Greeting": "Hi", "deadline:priority": 50})
    result = agent("check", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{bundle / 'template.yaml'}: a valid jobtemplate-2023-09 job template in a job "
        "bundle, with 1 saved parameter value\n"
    )
    (bundle / "parameter_values.yaml").write_text("parameterValues: {Greeting: Hi}\n")
    malformed = agent("check", str(bundle))
    assert malformed.returncode == 2 and "parameterValues must be a list" in malformed.stderr


def test_check_output_json(tmp_path: Path) -> None:
    """`check --output json` prints `openjd check --output json`'s document."""
    good = agent("check", "agent/examples/hello.yaml", "--output", "json")
    assert good.returncode == 0
    assert json.loads(good.stdout) == {
        "status": "success",
        "message": "agent/examples/hello.yaml: a valid jobtemplate-2023-09 job template",
    }
    bad = agent("check", str(write(tmp_path, job(step("S", {"command": ""})))), "--output", "json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["status"] == "error"


def test_check_validates_job_and_environment_templates(tmp_path: Path) -> None:
    """`check` accepts valid job and environment templates and rejects bad ones."""
    environment = {
        "specificationVersion": "environment-2023-09",
        "environment": env("E", variables={"A": "1"}),
    }
    good_job = agent("check", "agent/examples/hello.yaml")
    good_env = agent("check", str(write(tmp_path, environment, "env.json")))
    bad = agent("check", str(write(tmp_path, job(step("S", {"command": ""})), "bad.json")))
    assert good_job.returncode == 0 and "valid jobtemplate-2023-09 job template" in good_job.stdout
    assert good_env.returncode == 0 and "environment template" in good_env.stdout
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_a_plain_run_through_the_farm_imports_what_it_uses(tmp_path: Path) -> None:
    # Job attachments (a bundle's, or a queue's with jobAttachmentSettings) are imported
    # when a run needs them, and httpx's own command-line client (click, pygments) never
    # is: issue 16's start-up and memory. The output is the same (other tests here).
    template = write(tmp_path, job(step("A", {"command": "echo", "args": ["hi"]})))
    probe = (
        "import atexit, runpy, sys\n"
        "names = ('agent.attachments', 'agent.local._bundle', 'xxhash', 'httpx._main', 'click')\n"
        "atexit.register(lambda: print('imported:', [n for n in names if sys.modules.get(n)],"
        " file=sys.stderr))\n"
        f"sys.argv = ['agent', 'run', {str(template)!r}]\n"
        "runpy.run_module('agent', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "hi" in result.stdout
    assert "imported: []" in result.stderr
