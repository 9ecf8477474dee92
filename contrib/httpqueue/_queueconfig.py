"""The HTTP queue worker's configuration: flags, else environment variables.

The variables are the OPEVA job worker agent's (a team switching keeps its
environment file as it is); farmhand's older names still work as aliases, and
where both are set the OPEVA name wins.

=========================== ============================== =====================
flag                        variable (alias)               default
=========================== ============================== =====================
``--server``                ``OPEVA_SERVER`` (``SERVER``)  http://localhost:8000
``--worker-id``             ``WORKER_ID``                  the host name
``--shared-dir``            ``OPEVA_SHARED_DIR``           /opt/opeva_shared_data
                            (``SHARED_DIR``)               (must exist)
``--image``                 ``WORKER_IMAGE``               calof/opeva_simulator:latest
``--poll-interval``         ``POLL_INTERVAL``              5 s
``--heartbeat-interval``    ``WORKER_HEARTBEAT_INTERVAL``  30 s
                            (``HEARTBEAT_INTERVAL``)
``--status-poll-interval``  ``STATUS_POLL_INTERVAL``       10 s
``--exit-after-job``        ``WORKER_EXIT_AFTER_JOB``      off (``1/true/yes/on``)
                            (``EXIT_AFTER_JOB``)
``--log-level``             ``LOG_LEVEL``                  info (any case)
``--label``                 ``LABELS`` (commas)            none
=========================== ============================== =====================

The rest are flags only: ``--command`` (process mode, instead of an image),
``--docker``, ``--docker-arg``, ``--container-arg``, ``--tool``, ``--gpus``,
``--slots``, ``--grace``, ``--max-runtime``, ``--state-dir``,
``--max-retry-delay`` and ``--report-timeout``. The server's token and TLS
files: ``--token-file``, ``--ca-file``, ``--client-cert``, ``--client-key``
(see ``_auth.py`` for their variables). A value that cannot be used
is a ``ConfigError`` naming the flag or variable it came from.
"""

from __future__ import annotations

import argparse
import shlex
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from agent.jobs import (
    FlagsAndEnvironment,
    Invalid,
    parse_bool,
    parse_str,
    parse_url,
    seconds,
)

from ._auth import ClientAuth, ConfigError, add_client_arguments
from ._protocol import labels_from
from ._workload import ContainerWorkload, ProcessWorkload, TemplateFieldError, Workload

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Python logging's other names (the OPEVA worker passes LOG_LEVEL to it).
_LOG_LEVEL_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}
#: The OPEVA job worker's defaults.
DEFAULT_SERVER = "http://localhost:8000"
DEFAULT_SHARED_DIR = "/opt/opeva_shared_data"
DEFAULT_IMAGE = "calof/opeva_simulator:latest"


@attrs.frozen
class WorkerConfig:
    shared_dir: Path
    server: str = DEFAULT_SERVER
    worker_id: str = attrs.field(factory=socket.gethostname)
    #: ``--command``, split; or ``None`` for container mode.
    command: tuple[str, ...] | None = None
    image: str | None = None
    docker: str = "docker"
    docker_args: tuple[str, ...] = ()
    container_args: tuple[str, ...] = ("--job_id", "{job_id}")
    poll_interval: float = 5.0
    heartbeat_interval: float = 30.0
    status_poll_interval: float = 10.0
    exit_after_job: bool = False
    log_level: str = "info"
    #: Tool name -> the command that prints its version.
    tools: Mapping[str, str] = attrs.field(factory=dict)
    labels: frozenset[str] = frozenset()
    #: GPUs to advertise; ``None``: as many as nvidia-smi lists.
    gpus: int | None = None
    slots: int = 1
    #: Seconds a stopped job gets between SIGTERM and SIGKILL.
    grace: float = 30.0
    #: The longest any job may run (a job's own ``timeout`` can only be shorter).
    max_runtime: float | None = None
    #: Where the worker keeps its unsent reports; default ``<shared_dir>/workers/<worker_id>``.
    state_dir: Path | None = None
    max_retry_delay: float = 30.0
    #: Seconds to wait, when stopping, for unsent reports (they are kept for the next start).
    report_timeout: float = 30.0
    #: Seconds one HTTP request may take.
    request_timeout: float = 30.0
    #: Where job sessions' scratch directories go; ``None``: the system's temp dir.
    session_root: Path | None = None
    #: The token and TLS files the worker presents to the server.
    auth: ClientAuth = attrs.field(factory=ClientAuth)

    @property
    def state_file(self) -> Path:
        directory = self.state_dir or self.shared_dir / "workers" / self.worker_id
        return directory / "httpqueue-state.json"

    def workload(self, *, gpus: int) -> Workload:
        if self.image is not None:
            return ContainerWorkload(
                self.image,
                docker=self.docker,
                docker_args=self.docker_args,
                container_args=self.container_args,
                gpus=gpus > 0,
            )
        assert self.command is not None
        return ProcessWorkload(self.command)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--server", help=f"the job server's URL (OPEVA_SERVER; {DEFAULT_SERVER})")
    add("--worker-id", help="this worker's name (WORKER_ID; default: the host name)")
    add(
        "--shared-dir",
        help=f"the directory jobs share, the same path on every host; logs go to its jobs/ "
        f"(OPEVA_SHARED_DIR; {DEFAULT_SHARED_DIR})",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--command",
        help="process mode: the command line to run for each job, with {job_id}, "
        "{config_path}, ... filled in",
    )
    what.add_argument(
        "--image",
        help=f"container mode (the default): the image to `docker run` for each job "
        f"(WORKER_IMAGE; {DEFAULT_IMAGE})",
    )
    add("--docker", default=None, help="the docker client (default: docker)")
    add(
        "--docker-arg",
        action="append",
        default=None,
        metavar="ARG",
        help="an extra `docker run` option, before the image (repeatable)",
    )
    add(
        "--container-arg",
        action="append",
        default=None,
        metavar="ARG",
        help="an argument after the image (repeatable; default: --job_id {job_id})",
    )
    add("--poll-interval", help="seconds between polls for work when idle (POLL_INTERVAL; 5)")
    add("--heartbeat-interval", help="seconds between heartbeats (WORKER_HEARTBEAT_INTERVAL; 30)")
    add(
        "--status-poll-interval",
        help="seconds between checks of a running job's status (STATUS_POLL_INTERVAL; 10)",
    )
    add(
        "--exit-after-job",
        action="store_const",
        const="true",
        default=None,
        help="finish one job, then exit (WORKER_EXIT_AFTER_JOB)",
    )
    add("--log-level", help=f"one of {', '.join(LOG_LEVELS)} (LOG_LEVEL; info)")
    add(
        "--tool",
        action="append",
        default=None,
        metavar="NAME[=COMMAND]",
        help="a tool jobs may require; COMMAND prints its version (default: NAME --version)",
    )
    add(
        "--label",
        action="append",
        default=None,
        metavar="LABEL",
        help="a label jobs may require (repeatable; LABELS, comma-separated)",
    )
    add("--gpus", help="GPUs to advertise: a number, or auto (default: what nvidia-smi lists)")
    add("--slots", help="jobs run at the same time (default 1)")
    add("--grace", help="seconds a stopped job gets between SIGTERM and SIGKILL (default 30)")
    add("--max-runtime", help="seconds any job may run at most (default: no limit)")
    add("--state-dir", help="where unsent reports are kept (default: SHARED_DIR/workers/WORKER_ID)")
    add("--max-retry-delay", help="longest wait between retries to the server (default 30 s)")
    add(
        "--report-timeout",
        help="seconds to wait for unsent reports when stopping (default 30; they are kept)",
    )
    add_client_arguments(parser)


#: The variables of each setting that has them: the OPEVA name first, then farmhand's
#: alias (see the module docstring). Any other setting is a flag only.
VARIABLES: dict[str, tuple[str, ...]] = {
    "server": ("OPEVA_SERVER", "SERVER"),
    "worker_id": ("WORKER_ID",),
    "shared_dir": ("OPEVA_SHARED_DIR", "SHARED_DIR"),
    "image": ("WORKER_IMAGE",),
    "poll_interval": ("POLL_INTERVAL",),
    "heartbeat_interval": ("WORKER_HEARTBEAT_INTERVAL", "HEARTBEAT_INTERVAL"),
    "status_poll_interval": ("STATUS_POLL_INTERVAL",),
    "exit_after_job": ("WORKER_EXIT_AFTER_JOB", "EXIT_AFTER_JOB"),
    "log_level": ("LOG_LEVEL",),
}


def _log_level(value: object) -> str:
    level = parse_str(value).strip().lower()
    level = _LOG_LEVEL_ALIASES.get(level, level)
    if level not in LOG_LEVELS:
        raise Invalid(f"must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    return level


def _slots(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise Invalid(f"must be a whole number, 1 or more, not {value!r}")
    return int(text)


def _gpus(value: object) -> int | None:
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit():
        raise Invalid(f"must be a number of GPUs or auto, not {value!r}")
    return int(text)


def _image(value: object) -> str:
    image = parse_str(value).strip()
    if not image:
        raise Invalid("empty; give the image jobs run in")
    return image


def _worker_id(value: object) -> str:
    text = parse_str(value)
    if not text or "/" in text or text in (".", ".."):
        raise Invalid(f"{text!r} cannot be a worker id (no '/', not empty)")
    return text


def load_config(args: argparse.Namespace, *, environ: Mapping[str, str]) -> WorkerConfig:
    """The configuration from parsed flags and the environment. Raises ``ConfigError``."""

    settings = FlagsAndEnvironment(args, environ, variables=VARIABLES)
    server = settings.get("server", parse_url, DEFAULT_SERVER)
    given = settings.raw("shared_dir")
    shared, where = (
        (str(given[1]), given[0])
        if given
        else (
            DEFAULT_SHARED_DIR,
            "the default shared directory",
        )
    )
    shared_dir = Path(shared).expanduser()
    if not shared_dir.is_dir():
        raise ConfigError(
            f"{where}: {shared_dir} is not a directory (mount the shared directory there first)"
        )
    worker_id = settings.get("worker_id", _worker_id, "") or _worker_id(socket.gethostname())

    command: tuple[str, ...] | None = None
    image: str | None = None
    text = getattr(args, "command", None)
    try:
        if text is not None:
            command = ProcessWorkload.from_text(text).command
        else:
            image = settings.get("image", _image, DEFAULT_IMAGE)
            ContainerWorkload(
                image,
                docker_args=args.docker_arg or (),
                container_args=args.container_arg or ("--job_id", "{job_id}"),
            )
    except TemplateFieldError as exc:
        raise ConfigError(f"{'--command' if text is not None else '--image'}: {exc}") from exc

    exit_after_job = settings.get("exit_after_job", parse_bool, False)
    level = settings.get("log_level", _log_level, "info")

    tools: dict[str, str] = {}
    for item in args.tool or ():
        name, sep, tool_command = item.partition("=")
        name = name.strip()
        if not name:
            raise ConfigError(f"--tool: {item!r} must be NAME or NAME=COMMAND")
        tool_command = tool_command.strip() if sep else f"{name} --version"
        try:
            if not shlex.split(tool_command):
                raise ValueError("no command")
        except ValueError as exc:
            raise ConfigError(f"--tool {name}: {tool_command!r} is not a command: {exc}") from exc
        tools[name] = tool_command
    label_values = list(args.label or ())
    if not label_values and "LABELS" in environ:
        label_values = [environ["LABELS"]]
    labels = labels_from(label_values)

    gpus = settings.optional("gpus", _gpus)
    slots = settings.get("slots", _slots, 1)

    def seconds_of(name: str, default: float | None, *, zero: bool = False) -> Any:
        return settings.get(name, seconds(zero=zero), default)

    state_dir = getattr(args, "state_dir", None)
    return WorkerConfig(
        server=server.rstrip("/"),
        shared_dir=shared_dir.resolve(),
        worker_id=worker_id,
        command=command,
        image=image,
        docker=getattr(args, "docker", None) or "docker",
        docker_args=tuple(args.docker_arg or ()),
        container_args=tuple(args.container_arg or ("--job_id", "{job_id}")),
        poll_interval=seconds_of("poll_interval", 5.0),
        heartbeat_interval=seconds_of("heartbeat_interval", 30.0),
        status_poll_interval=seconds_of("status_poll_interval", 10.0),
        exit_after_job=exit_after_job,
        log_level=level,
        tools=tools,
        labels=labels,
        gpus=gpus,
        slots=slots,
        grace=seconds_of("grace", 30.0, zero=True),
        max_runtime=seconds_of("max_runtime", None),
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        max_retry_delay=seconds_of("max_retry_delay", 30.0),
        report_timeout=seconds_of("report_timeout", 30.0, zero=True),
        auth=ClientAuth.from_args(args, environ),
    )


def parse_worker_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse worker flags alone (for tests and embedding)."""
    parser = argparse.ArgumentParser(prog="python -m agent httpqueue worker")
    configure_parser(parser)
    return parser.parse_args(list(argv))
