"""``python -m benchmarks.plot`` draws results documents headless (matplotlib's Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is in the bench and test extras")

from benchmarks import plot
from benchmarks._common import RESULTS_DIR, RESULTS_SCHEMA, write_results

PNG = b"\x89PNG\r\n\x1a\n"


def _fixture(
    directory: Path, name: str, parameters: dict[str, Any], results: dict[str, Any]
) -> Path:
    path = directory / f"{name}.json"
    write_results(path, name, parameters=parameters, results=results)
    return path


def test_plot_renders_a_small_fixture(tmp_path: Path) -> None:
    """An overhead, an output and a fleet document each become a PNG; nothing needs a display."""
    results = tmp_path / "results"
    _fixture(
        results,
        "overhead",
        {"tasks": 10, "repeat": 1},
        {
            "runners": {
                "shell": {"seconds": 0.01, "peak_rss_mib": 2.0},
                "farm": {"seconds": 1.0, "peak_rss_mib": 90.0},
                "direct": {"seconds": 0.5, "peak_rss_mib": 60.0},
                "openjd": {"seconds": 0.8, "peak_rss_mib": 70.0},
            },
            "startup_seconds": {"farm": 0.9, "direct": 0.45},
            "target_ms_above_shell": 1.5,
        },
    )
    _fixture(
        results,
        "output",
        {"sizes_mib": [5, 50], "repeat": 1, "output": "human"},
        {
            "runs": [
                {"path": path, "mib": mib, "cat_seconds": 0.01, "seconds": 0.5 + mib / 200,
                 "mib_per_s": mib / (0.5 + mib / 200),
                 "mib_per_s_without_startup": None if mib == 5 else 200.0,
                 "peak_rss_mib": 60.0}
                for path in ("farm", "direct") for mib in (5, 50)
            ],
            "startup": {"farm": {"seconds": 0.5, "peak_rss_mib": 59.0}},
            "openjd": None,
            "target_mib_per_s": 100.0,
            "target_rss_mib": 80.0,
        },
    )  # fmt: skip
    _fixture(
        results,
        "fleet",
        {"workers": [2, 4]},
        {
            "sizes": [
                {"workers": n, "startup_seconds": 1.0, "memory_per_worker_mib": 0.1, "tasks": 4 * n,
                 "status": "SUCCEEDED", "tasks_per_second_running": 10.0,
                 "tasks_per_second_from_submission": 8.0, "idle_cpu_percent": 1.0,
                 "lateness_p99_working": 0.01, "lateness_p99_idle": None,
                 "lateness_max_working": 0.02, "lateness_max_idle": None}
                for n in (2, 4)
            ]
        },
    )  # fmt: skip
    (results / "unknown.json").write_text(
        json.dumps({"benchmark": "unknown", "schema": RESULTS_SCHEMA, "results": {}})
    )
    out = tmp_path / "out"
    assert plot.main(["--results", str(results), "--out", str(out)]) == 0
    for name in ("overhead", "output", "fleet"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
    assert not (out / "unknown.png").exists()


def test_plot_refuses_a_document_of_another_schema(tmp_path: Path) -> None:
    """A JSON that is not a results document is reported, and the exit status says so."""
    (tmp_path / "overhead.json").write_text(json.dumps({"benchmark": "overhead", "schema": 99}))
    assert plot.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 1


@pytest.mark.parametrize("path", sorted(RESULTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_committed_result_draws(path: Path, tmp_path: Path) -> None:
    """Each results document committed under benchmarks/results/ has a picture."""
    figure = plot.render(json.loads(path.read_text()))
    assert figure is not None
    figure.savefig(tmp_path / "picture.png")
    assert (tmp_path / "picture.png").read_bytes().startswith(PNG)
