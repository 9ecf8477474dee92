"""What an install or uninstall changes on a host (see the package docstring)."""

from __future__ import annotations

import grp
import os
import plistlib
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import tomlkit
import tomlkit.items

from .._errors import FarmhandError

DEFAULT_USER = "deadline-worker"
DEFAULT_JOB_GROUP = "deadline-job-users"
CONFIG_DIR = "/etc/amazon/deadline"
CONFIG_FILE = f"{CONFIG_DIR}/worker.toml"
UNIT_NAME = "farmhand-worker.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
LAUNCHD_LABEL = "com.farmhand.worker"
PLIST_FILE = f"/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist"
#: sudoers.d files; sudo skips names with a dot, so the temporary copies never count.
SUDOERS_JOBS = "/etc/sudoers.d/farmhand-worker"
SUDOERS_SHUTDOWN = "/etc/sudoers.d/farmhand-worker-shutdown"
#: The worker's directories unless worker.toml names others (the official agent's).
DEFAULT_DIRS = {
    "worker_persistence_dir": "/var/lib/deadline",
    "worker_logs_dir": "/var/log/amazon/deadline",
    "session_root_dir": "/sessions",
}
_NAME = re.compile(r"[a-z_]([a-z0-9_-]{0,31}|[a-z0-9_-]{0,30}\$)")
_FARM = re.compile(r"farm-[a-z0-9]{32}")
_FLEET = re.compile(r"fleet-[a-z0-9]{32}")
_REGION = re.compile(r"[a-z]+-[a-z]+-([a-z]+-)?[0-9]+")


class InstallError(FarmhandError):
    """The install cannot go on (a bad option, a step that failed); says which and why."""


@attrs.frozen
class InstallOptions:
    """The official installer's options; ``None``: keep what worker.toml has."""

    farm_id: str | None = None
    fleet_id: str | None = None
    region: str | None = None
    user: str = DEFAULT_USER
    group: str = DEFAULT_JOB_GROUP
    allow_shutdown: bool | None = None
    allow_instance_profile: bool | None = None
    install_service: bool = True
    start: bool = False
    #: The command the service runs (default: ``farmhand`` beside this Python, else
    #: this Python with ``-m agent``).
    program: tuple[str, ...] | None = None

    def check(self) -> None:
        for value, pattern, what in (
            (self.farm_id, _FARM, "--farm-id (farm-<32 lower-case letters or digits>)"),
            (self.fleet_id, _FLEET, "--fleet-id (fleet-<32 lower-case letters or digits>)"),
            (self.region, _REGION, "--region (such as us-west-2)"),
            (self.user, _NAME, "--user (a POSIX user name)"),
            (self.group, _NAME, "--group (a POSIX group name)"),
        ):
            if value is not None and not pattern.fullmatch(value):
                raise InstallError(f"{value!r} is not a valid {what}")


@attrs.frozen
class Change:
    """One change to the host: what it does, in words, and the doing."""

    what: str
    do: Callable[[], None] = attrs.field(repr=False, eq=False)


@attrs.frozen
class _Account:
    uid: int
    gid: int
    home: str


@attrs.define
class Host:
    """The machine (or, with ``root``, a tree that will be one) the install changes."""

    root: Path = Path("/")
    platform: str = sys.platform
    #: Messages for the person running it that are not changes (warnings, next steps).
    notes: list[str] = attrs.field(factory=list)

    @property
    def chrooted(self) -> bool:
        return self.root != Path("/")

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def users(self) -> dict[str, _Account]:
        if not self.chrooted:
            return {u.pw_name: _Account(u.pw_uid, u.pw_gid, u.pw_dir) for u in pwd.getpwall()}
        accounts = {}
        for fields in _colon_file(self.path("/etc/passwd")):
            if len(fields) >= 6:
                accounts[fields[0]] = _Account(int(fields[2]), int(fields[3]), fields[5])
        return accounts

    def groups(self) -> dict[str, tuple[int, list[str]]]:
        if not self.chrooted:
            return {g.gr_name: (g.gr_gid, list(g.gr_mem)) for g in grp.getgrall()}
        found = {}
        for fields in _colon_file(self.path("/etc/group")):
            if len(fields) >= 4:
                found[fields[0]] = (int(fields[2]), [m for m in fields[3].split(",") if m])
        return found

    def uid(self, user: str) -> int:
        try:
            return self.users()[user].uid
        except KeyError:
            raise InstallError(f"there is no user {user!r}") from None

    def gid(self, group: str) -> int:
        try:
            return self.groups()[group][0]
        except KeyError:
            raise InstallError(f"there is no group {group!r}") from None

    def user_name(self, uid: int) -> str:
        return next((n for n, a in self.users().items() if a.uid == uid), str(uid))

    def group_name(self, gid: int) -> str:
        return next((n for n, (g, _) in self.groups().items() if g == gid), str(gid))

    def primary_group(self, user: str) -> str:
        """The user's primary group's name (the user's own name if it does not exist yet:
        ``useradd --user-group`` makes that group)."""
        account = self.users().get(user)
        return user if account is None else self.group_name(account.gid)

    def prefix(self) -> list[str]:
        """``useradd``-family options for a tree below ``root``."""
        return ["--prefix", str(self.root)] if self.chrooted else []

    def service_manager(self) -> str | None:
        """``systemd`` or ``launchd`` when one runs this host (never below ``root``)."""
        if self.chrooted:
            return None
        if self.platform == "darwin":
            return "launchd"
        if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
            return "systemd"
        return None

    def run(self, argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise InstallError(f"{argv[0]} could not run: {exc}") from exc
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()
            raise InstallError(f"`{shlex.join(argv)}` failed ({result.returncode}): {said}")
        return result.stdout

    def succeeds(self, argv: list[str]) -> bool:
        try:
            return subprocess.run(argv, capture_output=True, check=False).returncode == 0
        except OSError:
            return False


def _colon_file(path: Path) -> Iterator[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line and not line.startswith("#"):
            yield line.split(":")


# ------------------------------------------------------------------ install


def plan_install(options: InstallOptions, host: Host) -> list[Change]:
    """The changes ``host`` needs for ``options``; ``host.notes`` gets the warnings.
    Raises ``InstallError`` for options it cannot do."""
    options.check()
    user, group = options.user, options.group
    changes: list[Change] = []
    changes += _accounts(options, host)
    agent_group = host.primary_group(user)
    if agent_group == group:
        host.notes.append(
            f"the job group ({group}) is {user}'s primary group: every job can then read "
            "what the agent keeps; install again with a dedicated --group"
        )

    document, _ = _read_config(host)
    _configure(document, options)
    worker = document.get("worker", {})
    for key, flag in (("farm_id", "--farm-id"), ("fleet_id", "--fleet-id")):
        if not worker.get(key):
            raise InstallError(f"{flag} is needed: {CONFIG_FILE} does not name one yet")
    shutdown = bool(document["os"]["shutdown_on_stop"])
    dirs = {key: str(worker.get(key) or default) for key, default in DEFAULT_DIRS.items()}

    changes += _directory(host, CONFIG_DIR, "root", agent_group, 0o750)
    changes += _file(host, CONFIG_FILE, tomlkit.dumps(document), "root", agent_group, 0o640)
    sudo_ok = _sudoers_check(host)
    changes += _file(
        host, SUDOERS_JOBS, _jobs_rule(user, group), "root", _root_group(host), 0o440, sudo_ok
    )
    if shutdown:
        changes += _file(
            host,
            SUDOERS_SHUTDOWN,
            _shutdown_rule(user),
            "root",
            _root_group(host),
            0o440,
            sudo_ok,
        )
    else:
        changes += _absent(host, SUDOERS_SHUTDOWN)

    logs = dirs["worker_logs_dir"]
    persistence = dirs["worker_persistence_dir"]
    changes += _directory(host, str(Path(logs).parent), "root", _root_group(host), 0o755)
    changes += _directory(host, logs, user, agent_group, 0o750)
    changes += _directory(host, persistence, user, group, 0o750)
    changes += _directory(host, f"{persistence}/queues", user, group, 0o750)
    changes += _directory(host, f"{persistence}/credentials", user, agent_group, 0o700)
    if host.path(f"{persistence}/worker.json").exists():
        changes += _owner_and_mode(host, f"{persistence}/worker.json", user, agent_group, 0o600)
    changes += _directory(host, dirs["session_root_dir"], user, group, 0o755)

    if options.install_service:
        changes += _service(options, host, agent_group, document)
    return changes


def _accounts(options: InstallOptions, host: Host) -> list[Change]:
    user, group = options.user, options.group
    users, groups = host.users(), host.groups()
    changes: list[Change] = []
    if user not in users:
        if host.platform == "darwin":
            raise InstallError(
                f"there is no user {user!r}: create it first "
                f"(sudo sysadminctl -addUser {user} -roleAccount), then install again"
            )
        argv = ["useradd", *host.prefix(), "--system", "--create-home", "--user-group", user]
        changes.append(
            Change(f"create the agent's user {user} ({shlex.join(argv)})", _runs(host, argv))
        )
    # (useradd --user-group makes the user's own group.)
    if group not in groups and not (user not in users and group == user):
        if host.platform == "darwin":
            argv = ["dseditgroup", "-o", "create", group]
        else:
            argv = ["groupadd", *host.prefix(), "--system", group]
        changes.append(
            Change(f"create the job users' group {group} ({shlex.join(argv)})", _runs(host, argv))
        )
    members = groups.get(group, (0, []))[1]
    if user not in members and host.primary_group(user) != group:
        if host.platform == "darwin":
            argv = ["dseditgroup", "-o", "edit", "-a", user, "-t", "user", group]
        else:
            argv = ["usermod", *host.prefix(), "--append", "--groups", group, user]
        changes.append(Change(f"add {user} to {group} ({shlex.join(argv)})", _runs(host, argv)))
    return changes


def _runs(host: Host, argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        host.run(argv)

    return run


def _root_group(host: Host) -> str:
    return "wheel" if host.platform == "darwin" else "root"


def _jobs_rule(user: str, group: str) -> str:
    return (
        "# Written by `python -m agent install`. The farmhand worker agent runs each job as\n"
        f"# its job user, who must be in {group} (sudo -n -u USER -i), and signals and\n"
        "# cleans up after it (sudo -n -u USER kill, rm). Never as root: keep root out of\n"
        "# that group.\n"
        f"Defaults:{user} !requiretty\n"
        f"{user} ALL = (%{group}) NOPASSWD: ALL\n"
    )


def _shutdown_rule(user: str) -> str:
    shutdown = (
        shutil.which("shutdown", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/usr/sbin/shutdown"
    )
    return (
        "# Written by `python -m agent install --allow-shutdown`: when the farm stops the\n"
        "# worker, the agent shuts the host down (shutdown_on_stop), as the official agent.\n"
        f"{user} ALL = (root) NOPASSWD: {shutdown} -h now\n"
    )


def _sudoers_check(host: Host) -> Callable[[Path], None] | None:
    """``visudo -cf`` on a sudoers file before it goes in place, where visudo is."""
    visudo = shutil.which("visudo", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if visudo is None:
        host.notes.append("visudo is not installed: the sudoers rules were not checked")
        return None

    def check(path: Path) -> None:
        host.run([visudo, "-c", "-q", "-f", str(path)])

    return check


# --------------------------------------------------------------- worker.toml

_NEW_CONFIG = """\
# The farmhand worker agent's configuration, as the official deadline-worker-agent's
# worker.toml (the same sections and keys). `python -m agent --help` lists them all.
"""


def _read_config(host: Host) -> tuple[tomlkit.TOMLDocument, str | None]:
    path = host.path(CONFIG_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.parse(_NEW_CONFIG), None
    try:
        return tomlkit.parse(text), text
    except tomlkit.exceptions.ParseError as exc:
        raise InstallError(f"{CONFIG_FILE} is not valid TOML ({exc}): fix or remove it") from exc


def _configure(document: tomlkit.TOMLDocument, options: InstallOptions) -> None:
    """Set what the options say; keep every other value (and comment) the file has."""
    worker = _table(document, "worker")
    aws = _table(document, "aws")
    os_table = _table(document, "os")
    if options.farm_id is not None:
        worker["farm_id"] = options.farm_id
    if options.fleet_id is not None:
        worker["fleet_id"] = options.fleet_id
    if options.region is not None:
        aws["region"] = options.region
    if options.allow_instance_profile is not None:
        aws["allow_ec2_instance_profile"] = options.allow_instance_profile
    aws.setdefault("allow_ec2_instance_profile", True)
    if options.allow_shutdown is not None:
        os_table["shutdown_on_stop"] = options.allow_shutdown
    os_table.setdefault("shutdown_on_stop", False)


def _table(document: tomlkit.TOMLDocument, name: str) -> Any:
    table = document.get(name)
    if table is None:
        table = tomlkit.table()
        document[name] = table
    elif not isinstance(table, tomlkit.items.Table | dict):
        raise InstallError(f"[{name}] in {CONFIG_FILE} is not a table")
    return table


# ------------------------------------------------------------------- service


def render_unit(
    *, user: str, group: str, exec_start: str, environment: dict[str, str] | None = None
) -> str:
    """The systemd unit (the template beside this module, filled in)."""
    template = resources.files(__package__).joinpath("farmhand-worker.service.in").read_text()
    env_line = ""
    if environment:
        env_line = "Environment=" + " ".join(f"{k}={v}" for k, v in environment.items()) + "\n"
    return (
        template.replace("@USER@", user)
        .replace("@GROUP@", group)
        .replace("@EXEC_START@", exec_start)
        .replace("@ENVIRONMENT@\n", env_line)
    )


def _program(options: InstallOptions) -> list[str]:
    if options.program:
        return list(options.program)
    beside = Path(sys.executable).parent / "farmhand"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "agent"]


def _service(
    options: InstallOptions, host: Host, agent_group: str, document: tomlkit.TOMLDocument
) -> list[Change]:
    argv = [*_program(options), "--config", CONFIG_FILE]
    region = document["aws"].get("region")
    environment = {"AWS_REGION": str(region), "AWS_DEFAULT_REGION": str(region)} if region else {}
    changes: list[Change] = []
    manager = host.service_manager()
    if host.platform == "darwin":
        plist = _plist(options.user, argv, environment)
        changes += _file(host, PLIST_FILE, plist, "root", "wheel", 0o644)
        if manager == "launchd" and options.start:
            target = f"system/{LAUNCHD_LABEL}"
            if not host.succeeds(["launchctl", "print", target]):
                start = ["launchctl", "bootstrap", "system", PLIST_FILE]
                changes.append(
                    Change(f"start the service ({shlex.join(start)})", _runs(host, start))
                )
        return changes

    unit = render_unit(
        user=options.user, group=agent_group, exec_start=shlex.join(argv), environment=environment
    )
    written = _file(host, UNIT_FILE, unit, "root", "root", 0o644)
    changes += written
    if manager != "systemd":
        where = f"below {host.root}" if host.chrooted else "on this host"
        host.notes.append(
            f"systemd does not run {where}: the unit is in place; once it does, "
            f"`systemctl enable --now {UNIT_NAME}`"
        )
        return changes
    if written:
        reload = ["systemctl", "daemon-reload"]
        changes.append(Change("reload systemd (systemctl daemon-reload)", _runs(host, reload)))
    if written or not host.succeeds(["systemctl", "is-enabled", "--quiet", UNIT_NAME]):
        enable = ["systemctl", "enable", UNIT_NAME]
        changes.append(Change(f"start it on boot ({shlex.join(enable)})", _runs(host, enable)))
    if options.start and not host.succeeds(["systemctl", "is-active", "--quiet", UNIT_NAME]):
        start = ["systemctl", "start", UNIT_NAME]
        changes.append(Change(f"start the service ({shlex.join(start)})", _runs(host, start)))
    return changes


def _plist(user: str, argv: list[str], environment: dict[str, str]) -> str:
    spec: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": argv,
        "UserName": user,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "ProcessType": "Standard",
        "StandardOutPath": "/var/log/amazon/deadline/launchd-stdout.log",
        "StandardErrorPath": "/var/log/amazon/deadline/launchd-stderr.log",
    }
    if environment:
        spec["EnvironmentVariables"] = environment
    return plistlib.dumps(spec).decode()


# ----------------------------------------------------------------- uninstall


def plan_uninstall(
    host: Host, *, user: str = DEFAULT_USER, group: str = DEFAULT_JOB_GROUP, purge: bool = False
) -> list[Change]:
    """Take the service and the sudoers rules away; with ``purge`` also the
    configuration, the worker's directories (its identity too), the user and the group."""
    changes: list[Change] = []
    manager = host.service_manager()
    running = manager == "systemd" and (
        host.succeeds(["systemctl", "is-enabled", "--quiet", UNIT_NAME])
        or host.succeeds(["systemctl", "is-active", "--quiet", UNIT_NAME])
    )
    if running and host.path(UNIT_FILE).exists():
        stop = ["systemctl", "disable", "--now", UNIT_NAME]
        changes.append(
            Change(
                f"stop the service (a drain) and its start on boot ({shlex.join(stop)})",
                _runs(host, stop),
            )
        )
    if manager == "launchd" and host.succeeds(["launchctl", "print", f"system/{LAUNCHD_LABEL}"]):
        stop = ["launchctl", "bootout", f"system/{LAUNCHD_LABEL}"]
        changes.append(
            Change(f"stop the service (a drain) ({shlex.join(stop)})", _runs(host, stop))
        )
    removed_unit = _absent(host, UNIT_FILE) + _absent(host, PLIST_FILE)
    changes += removed_unit
    if manager == "systemd" and any(UNIT_FILE in c.what for c in removed_unit):
        reload = ["systemctl", "daemon-reload"]
        changes.append(Change("reload systemd (systemctl daemon-reload)", _runs(host, reload)))
    changes += _absent(host, SUDOERS_JOBS) + _absent(host, SUDOERS_SHUTDOWN)
    if not purge:
        return changes
    document, _ = _read_config(host)
    worker = document.get("worker", {})
    for key, default in DEFAULT_DIRS.items():
        changes += _absent(host, str(worker.get(key) or default))
    changes += _absent(host, CONFIG_FILE)
    if host.path(CONFIG_DIR).is_dir() and not [
        p for p in host.path(CONFIG_DIR).iterdir() if p.name != "worker.toml"
    ]:
        changes += _absent(host, CONFIG_DIR)
    if user in host.users() and host.platform != "darwin":
        argv = ["userdel", *host.prefix(), "--remove", user]
        changes.append(
            Change(f"delete the user {user} and its home ({shlex.join(argv)})", _runs(host, argv))
        )
    if group in host.groups() and host.platform != "darwin":
        argv = ["groupdel", *host.prefix(), group]
        changes.append(Change(f"delete the group {group} ({shlex.join(argv)})", _runs(host, argv)))
    return changes


# -------------------------------------------------------------- the changes


def apply(changes: list[Change], *, say: Callable[[str], None] = print) -> None:
    """Make the changes in order, saying each one; the first that fails stops the rest."""
    for change in changes:
        say(change.what)
        change.do()


def _mode_owner(host: Host, path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return host.user_name(st.st_uid), host.group_name(st.st_gid), st.st_mode & 0o7777


def _set_owner_and_mode(host: Host, path: Path, owner: str, group: str, mode: int) -> None:
    os.chown(path, host.uid(owner), host.gid(group))
    os.chmod(path, mode)


def _directory(host: Host, absolute: str, owner: str, group: str, mode: int) -> list[Change]:
    path = host.path(absolute)
    want = f"{owner}:{group} {mode:04o}"
    if not path.exists():

        def create() -> None:
            path.mkdir(parents=True, exist_ok=True)
            _set_owner_and_mode(host, path, owner, group, mode)

        return [Change(f"create {absolute} ({want})", create)]
    if not path.is_dir():
        raise InstallError(f"{absolute} is there and is not a directory")
    return _owner_and_mode(host, absolute, owner, group, mode)


def _owner_and_mode(host: Host, absolute: str, owner: str, group: str, mode: int) -> list[Change]:
    path = host.path(absolute)
    have = _mode_owner(host, path)
    if have == (owner, group, mode):
        return []
    return [
        Change(
            f"set {absolute} to {owner}:{group} {mode:04o} (it was {have[0]}:{have[1]} {have[2]:04o})",
            lambda: _set_owner_and_mode(host, path, owner, group, mode),
        )
    ]


def _file(
    host: Host,
    absolute: str,
    content: str,
    owner: str,
    group: str,
    mode: int,
    check: Callable[[Path], None] | None = None,
) -> list[Change]:
    path = host.path(absolute)
    try:
        same = path.read_text(encoding="utf-8") == content
    except FileNotFoundError:
        verb = "write"
    else:
        if same:
            return _owner_and_mode(host, absolute, owner, group, mode)
        verb = "update"

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A dotted name in the same directory: sudo's includedir skips it, and the
        # rename puts the checked file in place whole.
        temporary = path.with_name(f".{path.name}.farmhand-install")
        temporary.write_text(content, encoding="utf-8")
        try:
            _set_owner_and_mode(host, temporary, owner, group, mode)
            if check is not None:
                check(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    return [Change(f"{verb} {absolute} ({owner}:{group} {mode:04o})", write)]


def _absent(host: Host, absolute: str) -> list[Change]:
    path = host.path(absolute)
    if not path.exists() and not path.is_symlink():
        return []

    def remove() -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    return [Change(f"remove {absolute}", remove)]
