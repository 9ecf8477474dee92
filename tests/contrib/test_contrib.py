"""The service files in contrib/: what can be checked without systemd, launchd or Docker."""

from __future__ import annotations

import argparse
import configparser
import plistlib
import re
import shlex
import tomllib
from pathlib import Path

from agent.worker._config import _SETTINGS, DEFAULT_DRAIN_GRACE_SECONDS, configure_parser
from agent.worker._worker import stop_bound
from contrib.grpcagent import AgentConfig

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"


def console_script() -> str:
    [(name, target)] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ].items()
    assert target == "agent._cli:program"
    return str(name)


def parse_worker_flags(argv: list[str]) -> argparse.Namespace:
    """The worker's own parser: every flag a service file passes must exist."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure_parser(parser)
    return parser.parse_args(argv)


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(CONTRIB / "systemd" / "farmhand-worker.service")
    return parser


def test_the_systemd_unit_drains_on_stop_and_restarts_on_failure() -> None:
    """Restart=on-failure; KillMode=process (signals to the agent alone: a stop drains,
    and sessions held through the agent's death are the restarted agent's to take
    over); a stop timeout longer than the longest drain with the default grace."""
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "process"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    timeout = float(service["TimeoutStopSec"])
    assert timeout > stop_bound(DEFAULT_DRAIN_GRACE_SECONDS)
    assert service["Delegate"] == "yes"


def test_the_systemd_unit_runs_the_installed_worker_with_valid_flags() -> None:
    """ExecStart is the package's console script with flags the worker knows."""
    program, *flags = shlex.split(unit()["Service"]["ExecStart"])
    assert Path(program).name == console_script()
    args = parse_worker_flags(flags)
    assert args.config_file == "/etc/amazon/deadline/worker.toml"


def test_the_launchd_plist_drains_on_stop_and_restarts_on_failure() -> None:
    """KeepAlive only after a failed exit; ExitTimeOut longer than the longest drain."""
    with (CONTRIB / "launchd" / "com.farmhand.worker.plist").open("rb") as file:
        plist = plistlib.load(file)
    assert plist["Label"] == "com.farmhand.worker"
    program, *flags = plist["ProgramArguments"]
    assert Path(program).name == console_script()
    parse_worker_flags(flags)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ExitTimeOut"] > stop_bound(DEFAULT_DRAIN_GRACE_SECONDS)
    assert plist.get("AbandonProcessGroup", False) is False


def test_the_dockerfile_copies_what_exists_and_runs_the_worker_under_an_init() -> None:
    """Every COPY source exists; tini forwards SIGTERM to the worker; its variables and
    flags are the worker's own."""
    text = (CONTRIB / "docker" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    instructions = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]
    copies = [line.split()[1:-1] for line in instructions if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    [entrypoint] = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert '"/usr/bin/tini", "--"' in entrypoint and "-g" not in entrypoint
    assert entrypoint.endswith(f'"/opt/farmhand/bin/{console_script()}"]')
    [cmd] = [line for line in instructions if line.startswith("CMD ")]
    parse_worker_flags(re.findall(r'"([^"]+)"', cmd))
    assert "STOPSIGNAL SIGTERM" in instructions
    known = {setting.env for setting in _SETTINGS}
    [env] = [line for line in instructions if line.startswith("ENV ")]
    names = re.findall(r"(DEADLINE_WORKER_\w+)=", env)
    assert names and set(names) <= known
    [port] = re.findall(r"DEADLINE_WORKER_HEALTH_PORT=(\d+)", env)
    [check] = [line for line in instructions if line.startswith("HEALTHCHECK ")]
    assert f"127.0.0.1:{port}/healthz" in check
    dockerignore = (CONTRIB / "docker" / "Dockerfile.dockerignore").read_text()
    for sources in copies:
        for source in sources:
            assert f"!{source}" in dockerignore or f"!{source}/**" in dockerignore, source


# ------------------------------------------------------------------ the gRPC CI agent


def _grpc_agent_config(argv: list[str], environ: dict[str, str]) -> AgentConfig:
    """``argv`` (after the program) through ``python -m agent grpc``'s own parser and loader."""
    from contrib.grpcagent import load_config
    from contrib.grpcagent._cmd_grpc import configure

    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    return load_config(parser.parse_args(argv), environ)


def test_the_grpc_agent_unit_runs_it_as_a_restricted_user_with_valid_flags() -> None:
    """The systemd unit starts `farmhand grpc serve` with flags it knows, as a user that is
    not root, and lets it drain (SIGTERM to the agent alone, a timeout beyond the grace)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(CONTRIB / "systemd" / "farmhand-grpc-agent.service")
    service = parser["Service"]
    program, *argv = shlex.split(service["ExecStart"])
    assert Path(program).name == console_script() and argv[:2] == ["grpc", "serve"]
    config = _grpc_agent_config(argv[1:], {})
    assert service["User"] == "farmhand-ci"  # not root: the sudoers whitelist is all it has
    assert service["KillMode"] == "mixed" and service["Restart"] == "on-failure"
    assert float(service["TimeoutStopSec"]) > config.grace
    assert "NoNewPrivileges" not in service  # it would disable sudo for job users


def test_the_grpc_agent_plist_runs_it_as_a_restricted_user_with_valid_flags() -> None:
    """The launchd plist: `farmhand grpc serve` with known flags and variables, not as root."""
    with (CONTRIB / "launchd" / "com.farmhand.grpc-agent.plist").open("rb") as file:
        plist = plistlib.load(file)
    program, *argv = plist["ProgramArguments"]
    assert Path(program).name == console_script() and argv[:2] == ["grpc", "serve"]
    config = _grpc_agent_config(argv[1:], plist["EnvironmentVariables"])
    assert dict(config.tools) == {"xcode": "/usr/bin/xcodebuild -version"}
    assert plist["UserName"] not in ("root", "") and plist["KeepAlive"] == {"SuccessfulExit": False}


def test_the_sudoers_example_never_grants_root_for_everything() -> None:
    """The whitelist lets the agent's user run jobs as build users, and as root only the
    listed commands."""
    lines = [
        line.split("#", 1)[0].strip()
        for line in (CONTRIB / "sudoers" / "farmhand-ci").read_text().splitlines()
    ]
    rules = [line for line in lines if line.startswith("farmhand-ci ")]
    assert rules, "no rule for farmhand-ci"
    for rule in rules:
        runas, _, commands = rule.partition(")")
        assert not ("root" in runas and commands.split(":")[-1].strip() == "ALL"), rule
        assert "ALL" not in runas.split("(")[1], rule
