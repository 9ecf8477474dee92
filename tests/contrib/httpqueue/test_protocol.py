"""HTTP queue wire shapes: requirements, capabilities, job offers and submissions."""

from __future__ import annotations

from typing import Any

import pytest

from contrib.httpqueue import Capabilities, JobOffer, ProtocolError, Requirements
from contrib.httpqueue._protocol import extract_version, job_submission, labels_from

WORKER = Capabilities(
    tools={"python": "3.11.4", "blender": "4.1.1", "ffmpeg": None},
    gpus=2,
    labels=frozenset({"linux", "cuda"}),
)


@pytest.mark.parametrize(
    ("requirements", "reasons"),
    [
        (None, []),
        ({}, []),
        ({"tools": {"python": ">=3.10"}}, []),
        ({"tools": {"python": "3.11"}}, []),  # a bare version is ==3.11.*
        ({"tools": {"python": "3.12"}}, ["tool python is version 3.11.4, the job needs 3.12"]),
        ({"tools": {"blender": "~=4.1", "python": ""}}, []),
        (
            {"tools": {"blender": ">=4.2,<5"}},
            ["tool blender is version 4.1.1, the job needs >=4.2,<5"],
        ),
        ({"tools": {"ffmpeg": "*"}}, ["tool ffmpeg is not available on this worker"]),
        ({"tools": {"houdini": ""}}, ["tool houdini is not configured on this worker"]),
        ({"gpus": 2}, []),
        ({"gpus": True}, []),
        ({"gpus": 4}, ["the job needs 4 GPU(s), this worker has 2"]),
        ({"labels": ["cuda"]}, []),
        ({"labels": ["cuda", "big-mem", "arm"]}, ["this worker lacks the label(s) arm, big-mem"]),
        (
            {"tools": {"python": ">=4"}, "gpus": 8, "labels": ["x"]},
            [
                "tool python is version 3.11.4, the job needs >=4",
                "the job needs 8 GPU(s), this worker has 2",
                "this worker lacks the label(s) x",
            ],
        ),
    ],
)
def test_requirements_against_capabilities(requirements: Any, reasons: list[str]) -> None:
    """Each unmet requirement is one readable reason; none means the worker can run it."""
    assert WORKER.unmet(Requirements.from_api(requirements)) == reasons


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ([], "requirements must be an object"),
        ({"memory": 4}, "unknown requirement 'memory'"),
        ({"tools": ["python"]}, "requirements.tools must map tool names to versions"),
        ({"tools": {"python": 3}}, "must map tool names to version strings"),
        ({"tools": {"python": ">=three"}}, "requirements.tools.python: '>=three' is not a version"),
        ({"gpus": -1}, "requirements.gpus must be a whole number"),
        ({"gpus": 1.5}, "requirements.gpus must be a whole number"),
        ({"labels": "linux"}, "requirements.labels must be a list of non-empty strings"),
        ({"labels": [""]}, "requirements.labels must be a list of non-empty strings"),
    ],
)
def test_malformed_requirements_are_protocol_errors(requirements: Any, message: str) -> None:
    """A requirement that cannot be read is an error, never a guess."""
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Requirements.from_api(requirements)


def test_requirements_round_trip() -> None:
    """to_api writes back what from_api read (empty parts left out)."""
    api = {"tools": {"python": ">=3.10"}, "gpus": 1, "labels": ["a", "b"]}
    assert Requirements.from_api(api).to_api() == api
    assert Requirements.from_api({"gpus": 0}).to_api() == {}


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("Python 3.11.4\n", "3.11.4"),
        ("Docker version 24.0.7, build afdd53b", "24.0.7"),
        ("Blender 4.1.1 (hash e1743a0317bc built 2024-04-15)", "4.1.1"),
        ("git version 2.41.0.windows.1", "2.41.0"),
        ("tool v12", "12"),
        ("ffmpeg version n6.1-static", "6.1"),
        ("no digits here", None),
    ],
)
def test_versions_from_tool_output(output: str, version: str | None) -> None:
    """The first dotted number a tool prints is its version (else a plain number)."""
    assert extract_version(output) == version


def test_a_job_offer_reads_the_fields_and_keeps_requirements_raw() -> None:
    """next-job's answer becomes a JobOffer; the job name defaults to its id."""
    offer = JobOffer.from_api(
        {"job_id": "j1", "config_path": "/s/c.yaml", "requirements": {"gpus": "lots"}, "x": 1}
    )
    assert (offer.job_id, offer.job_name, offer.config_path, offer.timeout) == (
        "j1",
        "j1",
        "/s/c.yaml",
        None,
    )
    with pytest.raises(ProtocolError):
        offer.requirements()  # read late, so the worker can reject it


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "a job must be an object"),
        ({"config_path": "/c"}, "job_id must be a non-empty string"),
        ({"job_id": "j1"}, "job j1: config_path must be a non-empty string"),
        (
            {"job_id": "j1", "config_path": "/c", "timeout": -1},
            "job j1: timeout must be a positive",
        ),
    ],
)
def test_a_malformed_offer_names_the_job(payload: Any, message: str) -> None:
    """What cannot be read is a ProtocolError that names the job when it can."""
    with pytest.raises(ProtocolError, match=message):
        JobOffer.from_api(payload)


def test_submissions_are_checked() -> None:
    """What a person submits gets defaults, or a clear refusal."""
    assert job_submission({"config_path": "/c"}) == {
        "job_name": "",
        "config_path": "/c",
        "requirements": {},
        "timeout": None,
        "priority": 50,
    }
    for payload, message in [
        ({"config_path": "/c", "colour": "red"}, "unknown field"),
        ({"config_path": "/c", "priority": 101}, "priority must be"),
        ({"config_path": "/c", "requirements": {"gpu": 1}}, "unknown requirement"),
        ({}, "config_path must be"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            job_submission(payload)


def test_labels_from_flags_and_comma_lists() -> None:
    """Labels come from repeated flags or a comma-separated LABELS, without blanks."""
    assert labels_from(["a, b", "c", " ,"]) == {"a", "b", "c"}
