"""``python -m agent install`` / ``uninstall``, for real: as root, on a tree below a
prefix (``useradd --prefix``), and on a whole host inside a container."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent._cli import main
from agent.install import render_unit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer changes users: root")

FARM = "farm-" + "a" * 32
FLEET = "fleet-" + "b" * 32
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tree with this host's account files, for ``useradd --prefix``."""
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), tree / "etc" / name)
    return tree


def install(root: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["install", "--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out + err


def snapshot(tree: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    found = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(tree))] = (st.st_uid, st.st_gid, st.st_mode, content)
    return found


def owner(path: Path) -> tuple[str, str, str]:
    st = path.stat()
    users = {int(f[2]): f[0] for f in _fields(path, "passwd")}
    groups = {int(f[2]): f[0] for f in _fields(path, "group")}
    return users[st.st_uid], groups[st.st_gid], f"{st.st_mode & 0o7777:04o}"


def _fields(path: Path, name: str) -> list[list[str]]:
    tree = next(p for p in path.parents if (p / "etc" / name).exists())
    return [line.split(":") for line in (tree / "etc" / name).read_text().splitlines() if line]


def members(root: Path, group: str) -> list[str]:
    [fields] = [f for f in _fields(root / "etc", "group") if f[0] == group]
    return fields[3].split(",") if fields[3] else []


def test_install_on_a_tree_then_again_changes_nothing(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dry run changes nothing; the install makes the user, group, sudoers rules (visudo
    accepts them), directories with the official owners and modes, worker.toml and a
    unit systemd accepts; a second run has nothing to do."""
    before = snapshot(root)
    code, out = install(
        root, "--farm-id", FARM, "--fleet-id", FLEET, "--region", "us-west-2", "--dry-run",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, out
    assert "would create the agent's user deadline-worker" in out
    assert "would write /etc/sudoers.d/farmhand-worker " in out
    assert snapshot(root) == before

    code, out = install(
        root, "--farm-id", FARM, "--fleet-id", FLEET, "--region", "us-west-2", "--allow-shutdown",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, out
    assert "done: 14 changes" in out
    assert members(root, "deadline-job-users") == ["deadline-worker"]
    assert (root / "home" / "deadline-worker").is_dir()
    expected = {
        "etc/amazon/deadline": ("root", "deadline-worker", "0750"),
        "etc/amazon/deadline/worker.toml": ("root", "deadline-worker", "0640"),
        "etc/sudoers.d/farmhand-worker": ("root", "root", "0440"),
        "etc/sudoers.d/farmhand-worker-shutdown": ("root", "root", "0440"),
        "var/log/amazon": ("root", "root", "0755"),
        "var/log/amazon/deadline": ("deadline-worker", "deadline-worker", "0750"),
        "var/lib/deadline": ("deadline-worker", "deadline-job-users", "0750"),
        "var/lib/deadline/queues": ("deadline-worker", "deadline-job-users", "0750"),
        "var/lib/deadline/credentials": ("deadline-worker", "deadline-worker", "0700"),
        "sessions": ("deadline-worker", "deadline-job-users", "0755"),
        "etc/systemd/system/farmhand-worker.service": ("root", "root", "0644"),
    }
    for relative, want in expected.items():
        assert owner(root / relative) == want, relative
    rules = (root / "etc/sudoers.d/farmhand-worker").read_text()
    assert "deadline-worker ALL = (%deadline-job-users) NOPASSWD: ALL" in rules
    if shutil.which("visudo"):
        for name in ("farmhand-worker", "farmhand-worker-shutdown"):
            subprocess.run(["visudo", "-c", "-f", str(root / "etc/sudoers.d" / name)], check=True)
    config = (root / "etc/amazon/deadline/worker.toml").read_text()
    assert f'farm_id = "{FARM}"' in config and "shutdown_on_stop = true" in config
    unit = root / "etc/systemd/system/farmhand-worker.service"
    text = unit.read_text()
    assert "User=deadline-worker\n" in text and "AWS_DEFAULT_REGION=us-west-2" in text
    assert f"ExecStart={Path(sys.executable).parent / 'farmhand'} --config " in text
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stderr

    settled = snapshot(root)
    code, out = install(root, capsys=capsys)  # no options: everything is kept
    assert code == 0
    assert "nothing to change" in out
    assert snapshot(root) == settled


def test_an_existing_worker_toml_keeps_its_values_and_comments(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only what the options name changes; a mode or owner gone wrong is put back; turning
    shutdown off removes its sudoers rule."""
    config = root / "etc/amazon/deadline/worker.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "# our site's settings\n[worker]\n"
        f'farm_id = "{FARM}"\nfleet_id = "{FLEET}"\n'
        'session_root_dir = "/scratch/sessions"  # the big disk\n'
        "[os]\nshutdown_on_stop = true\n"
        "[logging]\nverbose = true\n"
    )
    code, out = install(root, capsys=capsys)
    assert code == 0, out
    text = config.read_text()
    assert text.startswith("# our site's settings\n[worker]\n")
    assert "# the big disk" in text and "verbose = true" in text
    assert "shutdown_on_stop = true" in text
    assert owner(root / "scratch/sessions") == ("deadline-worker", "deadline-job-users", "0755")
    assert not (root / "sessions").exists()
    assert (root / "etc/sudoers.d/farmhand-worker-shutdown").exists()

    os.chmod(root / "var/lib/deadline/credentials", 0o755)
    code, out = install(root, "--no-allow-shutdown", capsys=capsys)
    assert code == 0, out
    assert "set /var/lib/deadline/credentials to deadline-worker:deadline-worker 0700 " in out
    assert "remove /etc/sudoers.d/farmhand-worker-shutdown" in out
    assert "shutdown_on_stop = false" in config.read_text()
    assert not (root / "etc/sudoers.d/farmhand-worker-shutdown").exists()


def test_uninstall_and_purge(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Uninstall takes the service and the rules; --purge the rest, user and group too."""
    assert install(root, "--farm-id", FARM, "--fleet-id", FLEET, capsys=capsys)[0] == 0
    assert main(["uninstall", "--root", str(root)]) == 0
    assert not (root / "etc/systemd/system/farmhand-worker.service").exists()
    assert not (root / "etc/sudoers.d/farmhand-worker").exists()
    assert (root / "var/lib/deadline").is_dir()  # the worker's identity stays
    capsys.readouterr()
    assert main(["uninstall", "--root", str(root), "--purge", "--dry-run"]) == 0
    assert "would delete the user deadline-worker" in capsys.readouterr().out
    assert main(["uninstall", "--root", str(root), "--purge"]) == 0
    for gone in ("var/lib/deadline", "var/log/amazon/deadline", "sessions", "etc/amazon/deadline"):
        assert not (root / gone).exists(), gone
    assert "deadline-worker:" not in (root / "etc/passwd").read_text()
    assert "deadline-job-users:" not in (root / "etc/group").read_text()
    capsys.readouterr()
    assert main(["uninstall", "--root", str(root), "--purge"]) == 0
    assert "nothing to change" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--farm-id is needed"),
        (("--farm-id", "farm-1", "--fleet-id", FLEET), "is not a valid --farm-id"),
        (("--farm-id", FARM, "--fleet-id", FLEET, "--user", "Root!"), "is not a valid --user"),
        (("--farm-id", FARM, "--fleet-id", FLEET, "--region", "mars"), "is not a valid --region"),
    ],
)
def test_bad_options_exit_2_and_change_nothing(
    root: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    before = snapshot(root)
    code, out = install(root, *args, capsys=capsys)
    assert code == 2 and message in out
    assert snapshot(root) == before


def test_a_job_group_that_is_the_agents_own_is_warned_about(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = install(
        root, "--farm-id", FARM, "--fleet-id", FLEET, "--group", "deadline-worker", capsys=capsys
    )
    assert code == 0, out
    assert "note: the job group (deadline-worker) is deadline-worker's primary group" in out


def test_the_contrib_unit_is_the_installers_with_the_defaults() -> None:
    unit = render_unit(
        user="deadline-worker",
        group="deadline-worker",
        exec_start="/opt/farmhand/bin/farmhand --config /etc/amazon/deadline/worker.toml",
    )
    assert (REPO / "contrib/systemd/farmhand-worker.service").read_text() == unit


CONTAINER_SCRIPT = """
set -e
cd /
{python} -m agent install --farm-id {farm} --fleet-id {fleet} --region us-west-2 --allow-shutdown > /out/first.txt 2>&1
{python} -m agent install > /out/second.txt 2>&1
id deadline-worker > /out/id.txt
visudo -c > /out/visudo.txt 2>&1
sudo -n -l -U deadline-worker > /out/sudo-l.txt 2>&1 || true
stat -c '%n %U:%G %a' /etc/amazon/deadline/worker.toml /var/lib/deadline /var/lib/deadline/credentials /sessions /etc/sudoers.d/farmhand-worker > /out/stat.txt
{python} -m agent uninstall --purge > /out/uninstall.txt 2>&1
id deadline-worker > /out/id-after.txt 2>&1 || echo gone >> /out/id-after.txt
"""


def test_an_install_for_real_inside_a_container(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On a whole host: this machine's filesystem as a container's root under an overlay
    (podman --rootfs /:O, with runc), so the real /etc changes and is thrown away."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no container runtime: {', '.join(missing)} not installed")
    # podman refuses a run root path past 50 characters: a short one, removed after.
    store = Path(tempfile.mkdtemp(prefix="fh-install-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(store, ignore_errors=True))
    (store / "tmp").mkdir(parents=True)
    (store / "containers.conf").write_text("[containers]\ndefault_ulimits = []\n")
    out = tmp_path / "out"
    out.mkdir()
    script = CONTAINER_SCRIPT.format(python=sys.executable, farm=FARM, fleet=FLEET)
    argv = [
        "podman",
        "--root", str(store / "storage"), "--runroot", str(store / "run"),
        "--tmpdir", str(store / "tmp"), "--runtime", "runc", "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        "run", "--rm", "--network", "none", "--volume", f"{out}:/out",
        "--rootfs", "/:O", "/bin/sh", "-c", script,
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "CONTAINERS_CONF": str(store / "containers.conf")},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the container install did not finish in 300 s")
    said = {p.name: p.read_text() for p in out.iterdir()}
    if result.returncode != 0 and "first.txt" not in said:
        pytest.skip(f"podman cannot run a container here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, (result.stderr, said)
    assert "done: " in said["first.txt"], said["first.txt"]
    assert "nothing to change" in said["second.txt"], said["second.txt"]
    assert "deadline-job-users" in said["id.txt"]
    assert "/etc/sudoers.d/farmhand-worker: parsed OK" in said["visudo.txt"]
    stats = said["stat.txt"].splitlines()
    assert stats == [
        "/etc/amazon/deadline/worker.toml root:deadline-worker 640",
        "/var/lib/deadline deadline-worker:deadline-job-users 750",
        "/var/lib/deadline/credentials deadline-worker:deadline-worker 700",
        "/sessions deadline-worker:deadline-job-users 755",
        "/etc/sudoers.d/farmhand-worker root:root 440",
    ]
    assert "(%deadline-job-users) NOPASSWD: ALL" in said["sudo-l.txt"]
    assert "gone" in said["id-after.txt"]
    assert b"deadline-worker" not in Path("/etc/passwd").read_bytes()
