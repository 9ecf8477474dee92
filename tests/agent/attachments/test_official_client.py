"""The official ``deadline`` CLI submits a bundle with attachments; farmhand runs it; the CLI
downloads exactly what the job wrote.

``tests/attachments_official.py`` does the work inside a network namespace with
nothing but loopback (``unshare -rn``): the mock farm with moto's S3, a
farmhand worker, ``deadline bundle submit`` and ``deadline job download-output``
(the ``deadline`` package is a test dependency).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import xxhash

ROOT = Path(__file__).resolve().parents[3]
CLI = Path(sys.executable).parent / "deadline"


def _loopback_namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CLI.is_file(), reason="the deadline CLI is not installed"),
    pytest.mark.skipif(
        not _loopback_namespace_works(),
        reason="cannot create a loopback-only network namespace (unshare -rn)",
    ),
]


def _entry(data: bytes) -> list[object]:
    return [len(data), xxhash.xxh3_128_hexdigest(data)]


async def test_deadline_cli_submit_run_download(tmp_path: Path) -> None:
    """bundle submit -> farmhand worker (two steps, the second reading the first's outputs)
    -> job download-output brings back exactly the files the job wrote."""
    argv = [
        "unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "tests.attachments_official", str(CLI), str(tmp_path),
    ]  # fmt: skip
    with trio.fail_after(300):
        done = await trio.run_process(
            argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report["submit"]["exit"] == 0, report["submit"]["output"]
    assert report["errors"] == []
    assert report["job_status"] == "SUCCEEDED", report.get("session_log")
    # [kind, has stepId, status, message]: each session starts with the sync; the
    # dependent step gets its dependencies' outputs first.
    kinds = [(kind, step) for kind, step, _, _ in report["actions"]]
    assert kinds == [
        ("syncInputJobAttachments", False),
        ("taskRun", False),
        ("syncInputJobAttachments", True),
        ("taskRun", False),
    ]
    assert all(status == "SUCCEEDED" for _, _, status, _ in report["actions"])
    for manifests in report["manifests"]:
        (entry,) = manifests
        assert entry["outputManifestPath"].endswith("_output")

    scene = b"the scene"
    frame = b"rendered " + scene
    big = hashlib.sha256(b"seed").digest() * 32768 * 24
    seen = json.dumps({rel: size for rel, (size, _) in report["inputs"].items()}, sort_keys=True)
    assert report["downloaded"] == {
        "big.exr": _entry(big),
        "comp/final.txt": _entry(f"composite of [{frame.decode()}] and {len(big)} bytes".encode()),
        "empty output": _entry(b""),
        "frames dir/ünïcode ✓/frame 0001.txt": _entry(frame),
        "inputs seen.json": _entry(seen.encode()),
    }
    # Every input reached the task, nested, with spaces and non-ASCII names, empty and big.
    assert set(report["inputs"]) == {
        "cache/sim.bgeo",
        "données/ñandú 木.bin",
        "empty.txt",
        "tex dir/wood grain.png",
    }


OFFICIAL_AGENT = ROOT / ".venv-official" / "bin" / "deadline-worker-agent"


@pytest.mark.skipif(
    not OFFICIAL_AGENT.is_file(),
    reason="the official agent is not installed (.venv-official, as .ci/run makes it)",
)
async def test_the_official_agent_runs_the_same_bundle(tmp_path: Path) -> None:
    """deadline-worker-agent 0.33.6 runs the same bundle against the mock farm and the
    CLI downloads the same outputs: the farm speaks the service's attachment contract."""
    argv = [
        "unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "tests.attachments_official", str(CLI), str(tmp_path),
        str(OFFICIAL_AGENT),
    ]  # fmt: skip
    with trio.fail_after(300):
        done = await trio.run_process(
            argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report["submit"]["exit"] == 0, report["submit"]["output"]
    assert report["job_status"] == "SUCCEEDED", report.get("agent_output_tail")
    kinds = [(kind, step) for kind, step, _, _ in report["actions"]]
    assert kinds == [
        ("syncInputJobAttachments", False),
        ("taskRun", False),
        ("syncInputJobAttachments", True),
        ("taskRun", False),
    ]
    scene = b"the scene"
    frame = b"rendered " + scene
    big = hashlib.sha256(b"seed").digest() * 32768 * 24
    seen = json.dumps({rel: size for rel, (size, _) in report["inputs"].items()}, sort_keys=True)
    expected = {
        "big.exr": _entry(big),
        "comp/final.txt": _entry(f"composite of [{frame.decode()}] and {len(big)} bytes".encode()),
        "empty output": _entry(b""),
        "frames dir/ünïcode ✓/frame 0001.txt": _entry(frame),
        "inputs seen.json": _entry(seen.encode()),
    }
    downloaded = dict(report["downloaded"])
    # The official agent's second step re-uploads the first step's outputs it synced
    # (its snapshot compares with the input manifests only), so download-output writes
    # them twice, the second time as "name (1).ext" copies: the same bytes.
    for name in [n for n in downloaded if " (1)" in n]:
        assert downloaded.pop(name) == expected[name.replace(" (1)", "")]
    assert downloaded == expected
