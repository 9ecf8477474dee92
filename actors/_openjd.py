"""OpenJD 2023-09 session semantics: what an action runs, and with what.

``SessionContext`` holds the state of one OpenJD session that outlives single
actions: the working directory, the job parameters, path mapping, the stack of
entered environments with the variables each one defines, and the secrets to
redact. For each action it builds a ``PreparedAction``: the resolved command
line, the process environment, the timeout and the cancelation method, with the
embedded files written to disk. Templates, format strings, let bindings and
path-mapping rules all come from openjd-model; nothing here re-implements them.

Environment variables of an action's process, later entries winning:

1. the agent's own environment;
2. the session's variables (``session_env``, e.g. ``DEADLINE_*``) and
   ``OPENJD_SESSION_WORKING_DIR``;
3. the action's own extra variables;
4. each entered environment's ``variables`` and the ``openjd_env`` /
   ``openjd_unset_env`` changes its onEnter printed, outermost first.

An environment's changes disappear when it exits, so an outer value set under an
inner one comes back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import attrs
from openjd.expr import PathFormat, PathMappingRule
from openjd.model import (
    FormatStringError,
    JobParameterValues,
    ParameterValue,
    ParameterValueType,
    SymbolTable,
    TaskParameterSet,
    evaluate_let_bindings,
)
from openjd.model.v2023_09 import (
    Action,
    CancelationMethodNotifyThenTerminate,
    EmbeddedFileText,
    Environment,
    EnvironmentScript,
    StepScript,
)

from ._jobuser import ResolvedJobUser, launcher_script, share_with_group, sudo_argv
from ._messages import EnterEnvironment, ExitEnvironment, RunTask
from ._output import Redactor
from ._process import CancelMethod, CancelMode

#: Extensions whose semantics this runner implements.
SUPPORTED_EXTENSIONS = frozenset({"TASK_CHUNKING", "REDACTED_ENV_VARS", "FEATURE_BUNDLE_1", "EXPR"})

#: Template Schemas 5.3.2: the notify period when a NOTIFY_THEN_TERMINATE
#: cancelation does not give one.
TASK_RUN_DEFAULT_NOTIFY_SECONDS = 120
ENV_ACTION_DEFAULT_NOTIFY_SECONDS = 30
#: An environment's onExit without a timeout of its own gets this long.
ENV_EXIT_DEFAULT_TIMEOUT_SECONDS = 300

_STRICT_INT_RE = re.compile(r"[+-]?[0-9]+")


class ActionSetupError(Exception):
    """The action cannot be run (a format string, a file, a bad value); it FAILS."""


@attrs.frozen
class PreparedAction:
    #: The command line; ``None`` when the action has nothing to run.
    argv: tuple[str, ...] | None
    env: Mapping[str, str]
    timeout: float | None
    method: CancelMethod


@attrs.define(eq=False)
class _EnteredEnvironment:
    identifier: str
    environment: Environment
    step_name: str | None
    resolved_symtab: Any
    #: Variable changes in the order they were made; ``None`` unsets.
    changes: dict[str, str | None]


def sort_path_mapping_rules(rules: Iterable[PathMappingRule]) -> list[PathMappingRule]:
    """Most specific (most source components) first, as the rules are applied."""

    def components(rule: PathMappingRule) -> int:
        source = str(rule.source_path)
        if rule.source_path_format == PathFormat.WINDOWS:
            return len(PureWindowsPath(source).parts)
        if rule.source_path_format == PathFormat.POSIX:
            return len(PurePosixPath(source).parts)
        _scheme, _, rest = source.partition("://")
        return 1 + len([part for part in rest.split("/")[1:] if part])

    return sorted(rules, key=components, reverse=True)


class SessionContext:
    """The per-session state every action of one OpenJD session shares."""

    def __init__(
        self,
        *,
        session_id: str,
        working_directory: Path,
        job_parameter_values: JobParameterValues | None = None,
        job_name: str | None = None,
        path_mapping_rules: Sequence[PathMappingRule] = (),
        session_env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        extensions: Iterable[str] = (),
        redactor: Redactor | None = None,
        job_user: ResolvedJobUser | None = None,
    ) -> None:
        self.session_id = session_id
        self.working_directory = working_directory
        self.files_directory = working_directory / "embedded_files"
        self.files_directory.mkdir(mode=0o700, exist_ok=True)
        #: Run actions as this user (``None``: as the agent's own user).
        self.job_user = job_user if job_user is not None and not job_user.is_agent_user else None
        if self.job_user is not None:
            share_with_group(working_directory, self.job_user, 0o770)
            share_with_group(self.files_directory, self.job_user, 0o770)
        self._launchers = 0
        self.job_parameter_values: JobParameterValues = dict(job_parameter_values or {})
        self.job_name = job_name
        self.path_mapping_rules = sort_path_mapping_rules(path_mapping_rules)
        self.extensions = frozenset(extensions)
        self.redactor = redactor if redactor is not None else Redactor()
        self._agent_env = dict(os.environ if base_env is None else base_env)
        #: Variables of the session itself (not inherited from the agent).
        self._session_env = {
            **(session_env or {}),
            "OPENJD_SESSION_WORKING_DIR": str(working_directory),
        }
        self._entered: list[_EnteredEnvironment] = []
        self._path_mapping_file: str | None = None
        self._resolved_bases: dict[int, dict[str, Any]] = {}
        #: The environment whose onEnter is running, which ``openjd_env`` changes.
        self.entering: str | None = None
        #: Notes for the session log from preparing actions (taken by the runner).
        self.notes: list[str] = []
        #: Counts the variable changes onEnter actions made (for the restart state).
        self.changes_made = 0

    # ---------------------------------------------------------------- queries

    @property
    def entered(self) -> tuple[str, ...]:
        """Identifiers of the entered environments, outermost first."""
        return tuple(entry.identifier for entry in self._entered)

    def is_entered(self, identifier: str) -> bool:
        return any(entry.identifier == identifier for entry in self._entered)

    def environment_name(self, identifier: str) -> str:
        for entry in self._entered:
            if entry.identifier == identifier:
                return str(entry.environment.name)
        return identifier

    @property
    def redacted_env_allowed(self) -> bool:
        return "REDACTED_ENV_VARS" in self.extensions

    # ---------------------------------------------------------------- variables

    def set_variable(self, name: str, value: str | None) -> bool:
        """Record an ``openjd_env``/``openjd_unset_env`` change from the running onEnter.

        Returns ``False`` (nothing changed) when no onEnter is running.
        """
        if self.entering is None:
            return False
        for entry in self._entered:
            if entry.identifier == self.entering:
                entry.changes.pop(name, None)  # keep the order of the latest change
                entry.changes[name] = value
                self.changes_made += 1
                return True
        return False

    def entered_changes(self) -> tuple[tuple[str, dict[str, str | None]], ...]:
        """Each entered environment's variable changes, outermost first."""
        return tuple((entry.identifier, dict(entry.changes)) for entry in self._entered)

    def restore_entered(self, action: EnterEnvironment, changes: Mapping[str, str | None]) -> None:
        """An environment an earlier agent entered, with the changes its variables and
        its onEnter made: entered again without running anything."""
        self._entered.append(
            _EnteredEnvironment(
                action.environment_id,
                action.environment,
                action.step_name,
                action.resolved_symtab,
                dict(changes),
            )
        )

    def process_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """An action's environment: the agent's, then the session's, the action's
        own and the entered environments' changes."""
        env = dict(self._agent_env)
        for name, value in self.session_changes(extra).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def session_changes(self, extra: Mapping[str, str]) -> dict[str, str | None]:
        """What the session sets (a value) or unsets (``None``) on top of a base environment."""
        changes: dict[str, str | None] = {**self._session_env, **extra}
        for entry in self._entered:
            changes.update(entry.changes)
        return changes

    # ---------------------------------------------------------------- actions

    def prepare_enter(self, action: EnterEnvironment) -> PreparedAction:
        """Push the environment and prepare its onEnter.

        The environment counts as entered even if this fails or onEnter fails,
        so that its onExit still runs.
        """
        if self.is_entered(action.environment_id):
            raise ActionSetupError(f"environment {action.environment_id!r} is already entered")
        environment = action.environment
        entry = _EnteredEnvironment(
            action.environment_id, environment, action.step_name, action.resolved_symtab, {}
        )
        self._entered.append(entry)
        symtab = self._symbol_table(action.resolved_symtab, step_name=action.step_name)
        if environment.variables:
            try:
                for name, value in environment.variables.items():
                    entry.changes[str(name)] = value.resolve(symtab=symtab)
            except ValueError as exc:
                raise ActionSetupError(
                    f"cannot resolve the variables of environment {environment.name!r}: {exc}"
                ) from exc
        script = environment.script
        on_enter = script.actions.onEnter if script is not None else None
        if script is None or on_enter is None:
            return PreparedAction(None, {}, None, CancelMethod())
        return self._prepare_script_action(
            on_enter,
            script,
            symtab,
            file_prefix="Env.File",
            extra_env=action.env,
            default_timeout=None,
            default_notify=ENV_ACTION_DEFAULT_NOTIFY_SECONDS,
        )

    def prepare_exit(self, action: ExitEnvironment) -> PreparedAction:
        if not self._entered or self._entered[-1].identifier != action.environment_id:
            innermost = self._entered[-1].identifier if self._entered else None
            raise ActionSetupError(
                f"cannot exit environment {action.environment_id!r}: the innermost "
                f"entered environment is {innermost!r}"
            )
        entry = self._entered[-1]
        script = entry.environment.script
        on_exit = script.actions.onExit if script is not None else None
        if script is None or on_exit is None:
            return PreparedAction(None, {}, None, CancelMethod())
        symtab = self._symbol_table(entry.resolved_symtab, step_name=entry.step_name)
        return self._prepare_script_action(
            on_exit,
            script,
            symtab,
            file_prefix="Env.File",
            extra_env=action.env,
            default_timeout=ENV_EXIT_DEFAULT_TIMEOUT_SECONDS,
            default_notify=ENV_ACTION_DEFAULT_NOTIFY_SECONDS,
        )

    def finish_exit(self, identifier: str) -> None:
        """Pop the environment: its variables no longer apply."""
        if self._entered and self._entered[-1].identifier == identifier:
            self._entered.pop()

    def prepare_task(self, action: RunTask) -> PreparedAction:
        symtab = self._symbol_table(
            action.resolved_symtab, step_name=action.step_name, task=action.parameters
        )
        script: StepScript = action.script
        return self._prepare_script_action(
            script.actions.onRun,
            script,
            symtab,
            file_prefix="Task.File",
            extra_env=action.env,
            default_timeout=None,
            default_notify=TASK_RUN_DEFAULT_NOTIFY_SECONDS,
        )

    # ---------------------------------------------------------------- internals

    def _symbol_table(
        self, resolved_symtab: Any, *, step_name: str | None, task: TaskParameterSet | None = None
    ) -> SymbolTable:
        symtab = SymbolTable()
        symtab.expr_host_rules = list(self.path_mapping_rules)
        if resolved_symtab is not None:
            for name, value in self._resolved_base(resolved_symtab).items():
                symtab[name] = value
        working_dir = str(self.working_directory)
        symtab["Session.WorkingDirectory"] = working_dir
        symtab.expr_types["Session.WorkingDirectory"] = "PATH"
        if self.job_name is not None and "Job.Name" not in symtab:
            symtab["Job.Name"] = self.job_name
        if step_name is not None:
            symtab["Step.Name"] = step_name
        self._add_parameters(symtab, "Param", "RawParam", self.job_parameter_values)
        if task:
            self._add_parameters(symtab, "Task.Param", "Task.RawParam", task)
        symtab["Session.HasPathMappingRules"] = "true" if self.path_mapping_rules else "false"
        symtab.expr_types["Session.HasPathMappingRules"] = "BOOL"
        symtab["Session.PathMappingRulesFile"] = self._path_mapping_rules_file()
        symtab.expr_types["Session.PathMappingRulesFile"] = "PATH"
        return symtab

    def _add_parameters(
        self,
        symtab: SymbolTable,
        prefix: str,
        raw_prefix: str,
        values: Mapping[str, ParameterValue],
    ) -> None:
        for name, param in values.items():
            key, raw_key = f"{prefix}.{name}", f"{raw_prefix}.{name}"
            symtab[raw_key] = param.value
            symtab[key] = self._processed_value(param)
            type_name = param.type.value
            if param.type is ParameterValueType.CHUNK_INT:
                continue
            symtab.expr_types[key] = type_name
            if param.type is ParameterValueType.LIST_PATH:
                symtab.expr_types[raw_key] = ParameterValueType.LIST_STRING.value
            elif param.type is not ParameterValueType.PATH:
                symtab.expr_types[raw_key] = type_name

    def _processed_value(self, param: ParameterValue) -> Any:
        if param.type is ParameterValueType.PATH:
            return self.map_path(str(param.value))
        if param.type is ParameterValueType.LIST_PATH and isinstance(param.value, list):
            return [self.map_path(str(p)) for p in param.value]
        return param.value

    def map_path(self, path: str) -> str:
        for rule in self.path_mapping_rules:
            changed, result = rule.apply(path=path)
            if changed:
                return str(result)
        return path

    def _resolved_base(self, resolved_symtab: Any) -> dict[str, Any]:
        key = id(resolved_symtab)
        base = self._resolved_bases.get(key)
        if base is None:
            host_format = PathFormat.WINDOWS if os.name == "nt" else PathFormat.POSIX
            try:
                table = resolved_symtab.to_symtab(path_format=host_format)
                base = {name: table[name] for name in table.symbols}
            except ValueError as exc:
                raise ActionSetupError(f"cannot read the resolved symbol table: {exc}") from exc
            self._resolved_bases[key] = base
        return base

    def add_path_mapping_rules(self, rules: Iterable[PathMappingRule]) -> None:
        """Add rules for later actions (job attachments map their roots after the session
        has started); ``Session.PathMappingRulesFile`` is written anew for them."""
        self.path_mapping_rules = sort_path_mapping_rules([*self.path_mapping_rules, *rules])
        self._path_mapping_file = None

    def _path_mapping_rules_file(self) -> str:
        """Write ``Session.PathMappingRulesFile`` once for each set of rules."""
        if self._path_mapping_file is None:
            document: dict[str, Any] = {}
            if self.path_mapping_rules:
                document = {
                    "version": "pathmapping-1.0",
                    "path_mapping_rules": [rule.to_dict() for rule in self.path_mapping_rules],
                }
            fd, name = tempfile.mkstemp(
                dir=self.working_directory, prefix="path_mapping_", suffix=".json"
            )
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file)
            if self.job_user is not None:
                share_with_group(Path(name), self.job_user, 0o640)
            self._path_mapping_file = name
        return self._path_mapping_file

    def _prepare_script_action(
        self,
        action: Action,
        script: EnvironmentScript | StepScript,
        symtab: SymbolTable,
        *,
        file_prefix: str,
        extra_env: Mapping[str, str],
        default_timeout: float | None,
        default_notify: int,
    ) -> PreparedAction:
        records = self._allocate_files(script.embeddedFiles or (), symtab, file_prefix)
        let_bindings = getattr(script, "let", None)
        try:
            if let_bindings:
                evaluate_let_bindings(symtab=symtab, let_bindings=let_bindings)
            for path, file in records:
                self._write_file(path, file, symtab, self.job_user)
            argv = [action.command.resolve(symtab=symtab), *_resolve_args(action.args, symtab)]
            timeout = _resolve_int(action.timeout, symtab, "timeout", minimum=1)
            method = _resolve_cancelation(action, symtab, default_notify)
            if self.job_user is not None:
                argv, env = self._as_job_user(argv, self.session_changes(extra_env))
            else:
                env = self.process_env(extra_env)
        except (ValueError, OSError) as exc:
            # FormatStringError and openjd.expr's errors are ValueErrors.
            raise ActionSetupError(str(exc)) from exc
        return PreparedAction(
            tuple(argv),
            env,
            float(timeout) if timeout is not None else default_timeout,
            method,
        )

    def _as_job_user(
        self, argv: list[str], env: Mapping[str, str | None]
    ) -> tuple[list[str], dict[str, str]]:
        """Wrap the command: sudo runs a script that sets the session's variables (on the
        job user's login environment, as openjd-sessions does) and execs it."""
        assert self.job_user is not None
        text, skipped = launcher_script(argv, env, self.working_directory)
        if skipped:
            self.notes.append(f"not passed to the job user (not shell names): {', '.join(skipped)}")
        self._launchers += 1
        path = self.working_directory / f".farmhand-action-{self._launchers}.sh"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
        share_with_group(path, self.job_user, 0o750)
        # sudo itself runs with ours; it gives the job a clean login environment.
        return sudo_argv(self.job_user, path), dict(self._agent_env)

    def _allocate_files(
        self, files: Iterable[Any], symtab: SymbolTable, prefix: str
    ) -> list[tuple[Path, EmbeddedFileText]]:
        records: list[tuple[Path, EmbeddedFileText]] = []
        for file in files:
            if not isinstance(file, EmbeddedFileText):
                raise ActionSetupError(f"unsupported embedded file type {type(file).__name__}")
            if file.filename:
                name = str(file.filename)
                if name in (".", "..") or Path(name).name != name:
                    raise ActionSetupError(
                        f"embedded file {file.name!r}: filename {name!r} must be a plain file name"
                    )
                path = self.files_directory / name
            else:
                fd, generated = tempfile.mkstemp(dir=self.files_directory)
                os.close(fd)
                path = Path(generated)
            symbol = f"{prefix}.{file.name}"
            symtab[symbol] = str(path)
            symtab.expr_types[symbol] = "PATH"
            records.append((path, file))
        return records

    @staticmethod
    def _write_file(
        path: Path, file: EmbeddedFileText, symtab: SymbolTable, job_user: ResolvedJobUser | None
    ) -> None:
        data = file.data.resolve(symtab=symtab)
        end_of_line = file.endOfLine.value if file.endOfLine is not None else None
        if end_of_line == "CRLF":
            data = re.sub(r"(?<!\r)\n", "\r\n", data)
        else:  # LF, AUTO or unset on a POSIX host
            data = data.replace("\r\n", "\n")
        mode = stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if file.runnable else 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(path, flags, mode)
        try:
            os.write(fd, data.encode("utf-8"))
            if job_user is not None:
                os.fchown(fd, -1, job_user.gid)
                mode |= stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP if file.runnable else 0)
            os.fchmod(fd, mode)  # the file may have existed with other bits
        finally:
            os.close(fd)


def describe_command(argv: Sequence[str]) -> str:
    """A loggable command line that does not reveal ``openjd_redacted_env`` values."""
    text = shlex.join(argv)
    token = "openjd_redacted_env:"
    pos = text.find(token)
    return text if pos < 0 else text[: pos + len(token)] + " ********"


# ------------------------------------------------------------------ resolution


def _is_null(value: Any) -> bool:
    return bool(getattr(value, "is_null", False))


def _resolve_args(args: Sequence[Any] | None, symtab: SymbolTable) -> list[str]:
    """EXPR argument semantics: a null argument is skipped, a list flattens."""
    resolved: list[str] = []
    for arg in args or ():
        try:
            value = arg.resolve_value(symtab=symtab)
        except FormatStringError:
            resolved.append(arg.resolve(symtab=symtab))
            continue
        if isinstance(value, str):
            resolved.append(value)
        elif _is_null(value):
            continue
        elif _is_list(value):
            resolved.extend(str(element) for element in value)
        else:
            resolved.append(str(value))
    return resolved


def _is_list(value: Any) -> bool:
    value_type = getattr(value, "type", None)
    code = getattr(value_type, "type_code", None)
    return code is not None and getattr(code, "name", "") == "LIST"


def _resolve_int(value: Any, symtab: SymbolTable, what: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    resolved = value.resolve_value(symtab=symtab)
    if _is_null(resolved):
        return None
    text = str(resolved)
    if _STRICT_INT_RE.fullmatch(text) is None or int(text) < minimum:
        raise ValueError(f"{what} must be an integer of at least {minimum}, got {text!r}")
    return int(text)


def _resolve_cancelation(action: Action, symtab: SymbolTable, default_notify: int) -> CancelMethod:
    cancelation = action.cancelation
    if isinstance(cancelation, CancelationMethodNotifyThenTerminate):
        period = _resolve_int(
            cancelation.notifyPeriodInSeconds, symtab, "notifyPeriodInSeconds", minimum=1
        )
        return CancelMethod(
            CancelMode.NOTIFY_THEN_TERMINATE,
            float(period if period is not None else default_notify),
        )
    return CancelMethod(CancelMode.TERMINATE)


def step_memory_ceiling(step: Any) -> int | None:
    """A step's own memory ceiling in bytes: its ``amount.worker.memory`` host
    requirement (MiB), its ``max`` when it gives one, else its ``min`` (what the job
    said it needs is what it may use); ``None`` when it names none."""
    requirements = getattr(step, "hostRequirements", None)
    for amount in getattr(requirements, "amounts", None) or ():
        if str(amount.name) == "amount.worker.memory":
            value = amount.max if amount.max is not None else amount.min
            if value is not None and float(value) > 0:
                return int(float(value) * 2**20)
    return None
