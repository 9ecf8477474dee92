"""What the worker runs for a job: a command template, or a container image.

The job says which job it is (``job_id``, ``job_name``, ``config_path``); the
worker decides what to run for it. Both modes fill the same fields into their
arguments: ``{job_id}``, ``{job_name}``, ``{config_path}``, ``{shared_dir}``,
``{job_dir}`` (``<shared_dir>/jobs/<job_id>``) and ``{worker_id}``; ``{{`` and
``}}`` are literal braces. The job's process also gets them as ``JOB_ID``,
``JOB_NAME``, ``CONFIG_PATH``, ``SHARED_DIR``, ``JOB_DIR`` and ``WORKER_ID``.

- **Process mode** (``--command``): the command line, split like a shell
  would (``shlex``), runs in ``{job_dir}``.
- **Container mode** (``--image``)::

      docker run --rm --name farmhand-<job_id> --label farmhand.job_id=<job_id>
          -v <shared_dir>:<shared_dir> -w <job_dir> -e JOB_ID=... [--gpus all]
          [--docker-arg ...] IMAGE --job_id <job_id> [container args]

  The shared directory is mounted at the same path, so paths in the job's
  config mean the same inside. GPUs are asked for when the host has them
  (nvidia-smi finds some): ``--gpus all`` from Docker, ``--device
  nvidia.com/gpu=all`` (CDI) from Podman (or its ``docker`` shim); when the
  runtime refuses (no NVIDIA runtime or toolkit: exit status 125 or 126 and
  a GPU error), the job is run again at once without it, and later jobs skip
  it. Stopping the ``docker`` client does not stop a container, so after a
  job that was stopped (canceled, timed out, interrupted) the worker removes
  its container (``docker rm -f``).

  ``check_runtime()`` (at the worker's start) says whether the client can run
  containers at all: ``docker --version`` (which runtime) and ``docker info``
  (its daemon or storage); a worker whose runtime cannot, takes no job.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import attrs
import structlog
import trio

from actors import path_under, safe_id
from agent.jobs import JobOutcome, JobSpec, JobStatus, OutputSink, OutputTail

from ._protocol import JobOffer

log = structlog.get_logger("farmhand.httpqueue.workload")

FIELDS = ("job_id", "job_name", "config_path", "shared_dir", "job_dir", "worker_id")
_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: What Docker prints when it cannot give a container GPUs (no NVIDIA runtime or toolkit).
DOCKER_GPU_ERRORS = (
    "could not select device driver",
    "nvidia-container-cli",
    "unknown or invalid runtime name: nvidia",
    "no known GPU vendor found",
    # Podman without the NVIDIA Container Toolkit's CDI spec:
    "unresolvable CDI devices",
    "nvidia.com/gpu",
)
DOCKER_RUN_FAILED = 125
#: ``docker run``'s own failures (not the container's): 125 the runtime or daemon, 126 the
#: container's command could not be invoked (Podman: a device it cannot set up), 127 not found.
RUNTIME_FAILURES = frozenset({125, 126, 127})
#: How the runtime's own error messages begin (Docker's, Podman's).
_RUNTIME_ERRORS = ("Error", "docker:", "Error response from daemon")
#: Seconds the start-up check of the container runtime may take.
RUNTIME_CHECK_SECONDS = 30.0
#: Seconds ``docker rm -f`` may take after a stopped job.
CLEANUP_SECONDS = 30.0
_CONTAINER_NAME_RE = re.compile(r"[^a-zA-Z0-9_.-]")


class TemplateFieldError(ValueError):
    """A command or argument template names a field that does not exist. One line."""


def check_template(text: str) -> None:
    """Raise ``TemplateFieldError`` unless every ``{field}`` in ``text`` is known."""
    for match in _FIELD_RE.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            raise TemplateFieldError(
                f"{text!r}: a lone {token!r} (write {token * 2} for a literal brace)"
            )
        if name not in FIELDS:
            raise TemplateFieldError(
                f"{text!r}: unknown field {{{name}}} (fields: {', '.join(FIELDS)})"
            )


#: A field as a whole argument (``{config_path}``) or as an option's whole value
#: (``--config={config_path}``): the only places a job's field may stand.
_WHOLE_FIELD_RE = re.compile(r"(?:--?[A-Za-z0-9][A-Za-z0-9_.-]*=)?\{[a-z_]+\}")
#: Programs that run code given on their command line, and the options that give it.
_SHELLS = re.compile(r"busybox|[a-z]*sh|csh|fish")
_INTERPRETERS = re.compile(
    r"python[0-9.]*|pypy[0-9.]*|perl[0-9.]*|ruby[0-9.]*|node|nodejs|deno|bun|php[0-9.]*"
    r"|lua[0-9.]*|tclsh[0-9.]*|pwsh|powershell|osascript"
)
_CODE_LONG_OPTIONS = frozenset({"--command", "--eval", "-command", "-Command", "--exec"})


#: Fields whose values the job's submitter chooses (the job id is checked to be a safe
#: id; the others are free text).
JOB_FIELDS = frozenset({"job_id", "job_name", "config_path"})
FREE_TEXT_FIELDS = frozenset({"job_name", "config_path"})


def _has_field(text: str, fields: frozenset[str]) -> bool:
    return any(match.group(1) in fields for match in _FIELD_RE.finditer(text))


def check_argv_safe(argv: Sequence[str], what: str) -> None:
    """Raise ``TemplateFieldError`` where a job's field could be parsed as code.

    The submitter's free text (``{config_path}``, ``{job_name}``) reaches the job's
    process only as a whole argument (or an option's whole value,
    ``--config={config_path}``), never inside text that a program parses; and no
    field the submitter chooses is ever the code a shell or interpreter runs
    (``sh -c {config_path}``): a job submitted with ``config_path=/x; touch
    /tmp/owned`` must stay a file name. The worker's own fields (``{job_dir}``,
    ``{shared_dir}``, ``{worker_id}``) and the job id, which is checked to be a
    safe id, may be part of a longer argument (``--out {job_dir}/out``)."""
    for arg in argv:
        if _has_field(arg, FREE_TEXT_FIELDS) and not _WHOLE_FIELD_RE.fullmatch(arg):
            raise TemplateFieldError(
                f"{what}: {arg!r} puts a job's free-text field inside a longer argument, where a "
                "program (a shell, above all) could parse it as code; pass each field "
                "as an argument of its own ({config_path}) or read it from the "
                "environment ($CONFIG_PATH)"
            )
    rest = list(argv)
    # ``env [-i] [NAME=VALUE]... PROGRAM``: look at the program env runs.
    while rest and (rest[0].rsplit("/", 1)[-1] == "env" or "=" in rest[0] or rest[0] == "-i"):
        rest.pop(0)
    program = rest[0].rsplit("/", 1)[-1] if rest else ""
    if _SHELLS.fullmatch(program):
        code_letters = frozenset("c")
    elif _INTERPRETERS.fullmatch(program):
        code_letters = frozenset("ceE")
    else:
        return
    for option, code in itertools.pairwise(rest[1:]):
        short = option.startswith("-") and not option.startswith("--")
        if (
            option in _CODE_LONG_OPTIONS
            or (short and option[1:].isalpha() and code_letters & set(option[1:]))
        ) and _has_field(code, JOB_FIELDS):
            raise TemplateFieldError(
                f"{what}: {program} ... {option} {code!r} would run a job's field as code "
                "(a job could run any command on this worker); pass fields as arguments "
                "after the code (sh -c 'cat \"$1\"' sh {config_path}) or read them from "
                "the environment ($CONFIG_PATH)"
            )


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with its ``{field}``s replaced (check it with ``check_template`` first)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return values[match.group(1)]

    return _FIELD_RE.sub(replace, text)


@attrs.frozen(eq=False)
class JobContext:
    """One job on this worker: the offer, where its files go, and its log."""

    offer: JobOffer
    shared_dir: Path
    worker_id: str
    log: OutputSink | None = None

    def note(self, message: str) -> None:
        """A ``[farmhand]`` line in the job's log."""
        if self.log is not None:
            self.log.write([f"[farmhand] {message}"])

    @property
    def job_dir(self) -> Path:
        return path_under(self.shared_dir, "jobs", safe_id(self.offer.job_id, "job_id"))

    @property
    def log_path(self) -> Path:
        return self.job_dir / "logs" / f"{self.offer.job_id}.log"

    def values(self) -> dict[str, str]:
        offer = self.offer
        return {
            "job_id": offer.job_id,
            "job_name": offer.job_name,
            "config_path": offer.config_path,
            "shared_dir": str(self.shared_dir),
            "job_dir": str(self.job_dir),
            "worker_id": self.worker_id,
        }

    def env(self) -> dict[str, str]:
        return {name.upper(): value for name, value in self.values().items()}


#: Runs one spec as the job's current run (the worker wires in logs, cancel and limits).
Execute = Callable[[JobSpec, Sequence[OutputSink]], Awaitable[JobOutcome]]


class ProcessWorkload:
    """Process mode: a command template run on this host."""

    mode = "process"

    def __init__(self, command: Sequence[str]) -> None:
        if not command:
            raise TemplateFieldError("the command is empty")
        for arg in command:
            check_template(arg)
        check_argv_safe(command, "the command")
        self.command = tuple(command)

    @classmethod
    def from_text(cls, text: str) -> ProcessWorkload:
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise TemplateFieldError(f"the command {text!r} cannot be split: {exc}") from exc
        return cls(argv)

    def argv(self, job: JobContext) -> list[str]:
        values = job.values()
        return [fill(arg, values) for arg in self.command]

    async def run(self, job: JobContext, execute: Execute) -> JobOutcome:
        spec = JobSpec.from_command(
            self.argv(job), env=job.env(), cwd=job.job_dir, name=job.offer.job_name
        )
        return await execute(spec, ())


class ContainerWorkload:
    """Container mode: ``docker run`` of an image, GPUs when the host has them."""

    mode = "container"

    def __init__(
        self,
        image: str,
        *,
        docker: str = "docker",
        docker_args: Sequence[str] = (),
        container_args: Sequence[str] = ("--job_id", "{job_id}"),
        gpus: bool = False,
    ) -> None:
        if not image:
            raise TemplateFieldError("the image is empty")
        for arg in (*docker_args, *container_args):
            check_template(arg)
        check_argv_safe(docker_args, "the docker arguments")
        check_argv_safe(container_args, "the container arguments")
        self.image = image
        self.docker = docker
        self.docker_args = tuple(docker_args)
        self.container_args = tuple(container_args)
        #: Whether to ask for GPUs; cleared for good once Docker refuses them.
        self.gpus = gpus
        #: ``docker`` or ``podman``: what ``check_runtime`` found behind the client.
        self.runtime = "docker"

    async def check_runtime(self) -> str | None:
        """Whether this host can run containers: ``None`` when it can, else why not
        (one line). Learns which runtime the client is (Docker or Podman)."""
        with trio.move_on_after(RUNTIME_CHECK_SECONDS):
            try:
                version = await trio.run_process(
                    [self.docker, "--version"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:
                return f"cannot run the container client {self.docker!r}: {exc.strerror or exc}"
            text = (version.stdout + version.stderr).decode(errors="replace").strip()
            if version.returncode != 0:
                return f"{self.docker} --version failed (exit {version.returncode}): {_last_line(text)}"
            self.runtime = "podman" if "podman" in text.lower() else "docker"
            info = await trio.run_process(
                [self.docker, "info"], capture_stdout=True, capture_stderr=True, check=False
            )
            if info.returncode != 0:
                output = info.stderr.decode(errors="replace") or info.stdout.decode(
                    errors="replace"
                )
                return (
                    f"the container runtime cannot run containers ({self.docker} info failed, "
                    f"exit {info.returncode}): {_last_line(output)}"
                )
            return None
        return f"the container runtime did not answer `{self.docker} info` in {RUNTIME_CHECK_SECONDS:g} s"

    def gpu_args(self) -> list[str]:
        """How this runtime is asked for every GPU."""
        if self.runtime == "podman":
            return ["--device", "nvidia.com/gpu=all"]
        return ["--gpus", "all"]

    @staticmethod
    def container_name(job: JobContext) -> str:
        return "farmhand-" + _CONTAINER_NAME_RE.sub("_", job.offer.job_id)

    def argv(self, job: JobContext, *, gpus: bool) -> list[str]:
        values = job.values()
        shared = str(job.shared_dir)
        argv = [
            self.docker,
            "run",
            "--rm",
            "--name",
            self.container_name(job),
            "--label",
            f"farmhand.job_id={job.offer.job_id}",
            "-v",
            f"{shared}:{shared}",
            "-w",
            str(job.job_dir),
        ]
        for name, value in job.env().items():
            argv += ["-e", f"{name}={value}"]
        if gpus:
            argv += self.gpu_args()
        argv += [fill(arg, values) for arg in self.docker_args]
        argv.append(self.image)
        argv += [fill(arg, values) for arg in self.container_args]
        return argv

    async def run(self, job: JobContext, execute: Execute) -> JobOutcome:
        tail = OutputTail(200)
        gpus = self.gpus
        spec = JobSpec.from_command(
            self.argv(job, gpus=gpus), cwd=job.job_dir, name=job.offer.job_name
        )
        outcome = await execute(spec, (tail,))
        if gpus and self._refused_gpus(outcome, tail):
            self.gpus = False
            log.warning(
                "httpqueue.docker_gpus_refused",
                job_id=job.offer.job_id,
                note="running it again without --gpus; later jobs will not ask",
            )
            first = outcome
            spec = JobSpec.from_command(
                self.argv(job, gpus=False), cwd=job.job_dir, name=job.offer.job_name
            )
            job.note(
                f"{self.runtime} refused GPUs ({_matching(tail, DOCKER_GPU_ERRORS)}): "
                f"running the job again without {' '.join(self.gpu_args())}"
            )
            tail = OutputTail(200)
            outcome = await execute(spec, (tail,))
            outcome = attrs.evolve(
                outcome, started_at=first.started_at, duration=first.duration + outcome.duration
            )
        said = _last_line(
            "\n".join(line for line in tail.lines if not line.startswith("[farmhand]"))
        )
        if (
            outcome.status is JobStatus.FAILED
            and outcome.exit_code in RUNTIME_FAILURES
            # 126 and 127 may be the job's own exit status; the runtime's errors say so.
            and (outcome.exit_code == DOCKER_RUN_FAILED or said.startswith(_RUNTIME_ERRORS))
        ):
            # The runtime's own failure (a missing image, a bad option): say what it said.
            outcome = attrs.evolve(
                outcome,
                error=f"{self.runtime} could not run the container (exit {outcome.exit_code}): "
                f"{said}",
            )
        if outcome.status is not JobStatus.SUCCEEDED and outcome.status is not JobStatus.FAILED:
            await self.remove(job)
        return outcome

    @staticmethod
    def _refused_gpus(outcome: JobOutcome, tail: OutputTail) -> bool:
        return (
            outcome.status is JobStatus.FAILED
            and outcome.exit_code in RUNTIME_FAILURES
            and tail.contains(*DOCKER_GPU_ERRORS)
        )

    async def remove(self, job: JobContext) -> None:
        """``docker rm -f`` the job's container: the client was stopped, the container may not be."""
        name = self.container_name(job)
        with trio.move_on_after(CLEANUP_SECONDS) as scope:
            try:
                result = await trio.run_process(
                    [self.docker, "rm", "-f", name],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:
                log.error("httpqueue.container_cleanup_failed", container=name, error=str(exc))
                return
            output = (result.stderr or result.stdout).decode(errors="replace").strip()
            if result.returncode != 0 and "no such container" not in output.lower():
                log.error(
                    "httpqueue.container_cleanup_failed",
                    container=name,
                    status=result.returncode,
                    output=output[:500],
                )
                job.note(f"could not remove container {name}: {output[:500]}")
            else:
                log.info("httpqueue.container_removed", container=name)
                job.note(f"removed container {name}")
        if scope.cancelled_caught:
            log.error(
                "httpqueue.container_cleanup_failed", container=name, error="docker rm -f timed out"
            )
            job.note(f"could not remove container {name}: docker rm -f timed out")


def _matching(tail: OutputTail, needles: Sequence[str]) -> str:
    for line in reversed(tail.lines):
        if any(needle in line for needle in needles):
            return line.strip()[:300]
    return "no NVIDIA runtime?"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


Workload = ProcessWorkload | ContainerWorkload
