"""`python -m agent run BUNDLE_DIR`: a job bundle's files go through job attachments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]

# Reads the scene (an input file) and the textures (an input directory) through their
# mapped paths, writes results under the output directory, and says where it read from.
SCRIPT = (
    "import os,sys; scene,tex,out=sys.argv[1:4]; "
    "os.makedirs(os.path.join(out,'ré sults','deep'),exist_ok=True); "
    "open(os.path.join(out,'ré sults','deep','out.txt'),'w').write(open(scene).read()+str(os.path.getsize(os.path.join(tex,'wood.bin')))); "
    "open(os.path.join(out,'empty'),'w').close(); print('read', scene)"
)


def make_bundle(tmp_path: Path, *, outputs_by_reference: bool) -> tuple[Path, Path]:
    project = tmp_path / "project ü"
    (project / "tex").mkdir(parents=True)
    (project / "scene.txt").write_text("scene ")
    (project / "tex" / "wood.bin").write_bytes(os.urandom(200_000))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "bundle",
        "parameterDefinitions": [
            {"name": "Scene", "type": "PATH", "objectType": "FILE"},
            {"name": "Tex", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN"},
            {"name": "Out", "type": "PATH", "objectType": "DIRECTORY"}
            | ({} if outputs_by_reference else {"dataFlow": "OUT"}),
        ],
        "steps": [
            {
                "name": "S",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": sys.executable,
                            "args": [
                                "-c",
                                SCRIPT,
                                "{{Param.Scene}}",
                                "{{Param.Tex}}",
                                "{{Param.Out}}",
                            ],
                        }
                    }
                },
            }
        ],
    }
    (bundle / "template.yaml").write_text(yaml.safe_dump(template, allow_unicode=True))
    values = {
        "parameterValues": [
            {"name": "Scene", "value": str(project / "scene.txt")},
            {"name": "Tex", "value": str(project / "tex")},
            {"name": "Out", "value": str(project / "elsewhere")},  # overridden with -p
            {"name": "deadline:priority", "value": 50},
        ]
    }
    (bundle / "parameter_values.yaml").write_text(yaml.safe_dump(values, allow_unicode=True))
    references: dict[str, Any] = {
        "inputs": {"filenames": [str(project / "scene.txt")], "directories": []},
        "outputs": {"directories": [str(project / "out")] if outputs_by_reference else []},
    }
    (bundle / "asset_references.yaml").write_text(
        yaml.safe_dump({"assetReferences": references}, allow_unicode=True)
    )
    return bundle, project


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bundle_inputs_are_synced_and_outputs_come_back(tmp_path: Path) -> None:
    """Inputs reach the task through the session's copy; outputs land where the bundle says."""
    bundle, project = make_bundle(tmp_path, outputs_by_reference=False)
    result = run(str(bundle), "-p", f"Out={project / 'out'}", "--output", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    [read] = [
        e["line"] for e in lines if e.get("event") == "output" and e["line"].startswith("read ")
    ]
    assert (
        "/assetroot-" in read and str(project) not in read
    )  # the session's copy, not the original
    out = project / "out"
    assert (out / "ré sults" / "deep" / "out.txt").read_text() == "scene 200000"
    assert (out / "empty").read_bytes() == b""
    assert not (project / "elsewhere").exists()
    assert "2 input files" in result.stderr
    assert "2 output files downloaded" in result.stderr


def test_bundle_outputs_named_by_asset_references(tmp_path: Path) -> None:
    """outputs.directories of asset_references.yaml are uploaded and brought back too."""
    bundle, project = make_bundle(tmp_path, outputs_by_reference=True)
    result = run(str(bundle), "-p", f"Out={project / 'out'}")
    assert result.returncode == 0, result.stderr
    assert (project / "out" / "ré sults" / "deep" / "out.txt").read_text() == "scene 200000"


def test_bundle_with_a_missing_input_is_one_line_and_exit_two(tmp_path: Path) -> None:
    """An input the bundle names that does not exist: exit 2, one line, nothing runs."""
    bundle, project = make_bundle(tmp_path, outputs_by_reference=False)
    (project / "scene.txt").unlink()
    result = run(str(bundle), "-p", f"Out={project / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: input file {project / 'scene.txt'} does not exist"
    ]


def test_a_directory_without_a_template_is_refused(tmp_path: Path) -> None:
    """A directory that is not a bundle: exit 2 with the reason."""
    result = run(str(tmp_path))
    assert result.returncode == 2
    assert "holds template.yaml or template.json" in result.stderr


def test_transfers_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """With stderr on a terminal (a pty here), the uploads and downloads show where they
    are on one rewritten line; piped (the tests above), nothing of it appears."""
    import os
    import pty

    bundle, project = make_bundle(tmp_path, outputs_by_reference=False)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", str(bundle), "-p", f"Out={project / 'out'}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other side closed: the run is over
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert process.wait(timeout=120) == 0
    text = seen.decode("utf-8", "replace")
    assert "\r\x1b[K[farmhand] uploading the bundle's inputs: 2 of 2 files, " in text
    assert "[farmhand] downloading the job's outputs: " in text
    assert "2 output files downloaded" in text
