"""Hostile input (issue 19): documents that would take the host down are refused
in one line, and whoever reads them (``check``, ``run``, the mock farm) goes on."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import io
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest
import trio

from agent._documents import (
    ALIAS_BUDGET,
    DocumentError,
    _find_job_template,
    _job_template_max_from_file,
    load_document,
    template_max_chars,
)
from agent._servicemodels import service_model
from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm

ROOT = Path(__file__).resolve().parents[2]

#: The classic "billion laughs": 9 levels of 9 aliases, 9**9 strings once expanded.
BILLION_LAUGHS = (
    "specificationVersion: jobtemplate-2023-09\n"
    "name: laughs\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "steps: *i\n"
)


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------- billion laughs


def test_the_billion_laughs_is_refused_before_it_expands() -> None:
    assert len(BILLION_LAUGHS) < 700
    with pytest.raises(DocumentError, match="expands through YAML aliases"):
        load_document(BILLION_LAUGHS, what="job template")


def test_aliases_within_the_budget_are_fine() -> None:
    text = "a: &a [1, 2, 3]\nb: *a\nc: [*a, *a]\n"
    assert load_document(text) == {"a": [1, 2, 3], "b": [1, 2, 3], "c": [[1, 2, 3]] * 2}
    wide = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 99) + "]\n"
    assert len(load_document(wide)["b"]) == 99  # about ALIAS_BUDGET nodes: still allowed
    too_wide = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 102) + "]\n"
    assert ALIAS_BUDGET < 102 * 1001
    with pytest.raises(DocumentError, match="aliases"):
        load_document(too_wide)


@pytest.mark.parametrize(
    ("text", "json_only", "message"),
    [
        ("a: &a [1, *a]", False, "refers to itself"),
        ("[" * 100_000 + "]" * 100_000, True, "nested"),
        ("[" * 100_000 + "]" * 100_000, False, "nest"),
        ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 300)), False, "nested more than"),
        ("[" * 150 + "]" * 150, True, "nested more than 100"),
    ],
)
def test_deep_and_self_referring_documents_are_refused(
    text: str, json_only: bool, message: str
) -> None:
    with pytest.raises(DocumentError, match=message):
        load_document(text, json_only=json_only)


def test_the_template_size_is_the_services_limit(tmp_path: Path) -> None:
    assert template_max_chars() == 1_000_000  # JobTemplate's max in botocore's deadline model
    path = tmp_path / "big.yaml"
    path.write_text("specificationVersion: jobtemplate-2023-09\n#" + "x" * 1_000_000 + "\n")
    line = one_error_line(agent("check", str(path)))
    assert "the limit is 1,000,000" in line


def test_the_size_read_from_the_model_file_is_botocores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The limit read from the model file's JobTemplate shape alone (issue 16: no
    whole-model parse for a template's size) is what botocore's parsed model says, and
    with AWS_DATA_PATH set the parsed model is what decides."""
    parsed = service_model("deadline").shape_for("JobTemplate").metadata["max"]
    assert _job_template_max_from_file() == parsed
    monkeypatch.setenv("AWS_DATA_PATH", "/nonexistent")
    template_max_chars.cache_clear()
    try:
        assert template_max_chars() == parsed
    finally:
        template_max_chars.cache_clear()


def test_the_model_file_is_the_one_botocore_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both ``service-2.json`` and ``service-2.json.gz`` in the latest version's
    directory, the limit comes from the ``.json``, as botocore's loader reads it."""
    version = tmp_path / "data" / "deadline" / "2023-10-12"
    version.mkdir(parents=True)

    def model(limit: int) -> bytes:
        return json.dumps({"shapes": {"JobTemplate": {"type": "string", "max": limit}}}).encode()

    (version / "service-2.json").write_bytes(model(2_000))
    (version / "service-2.json.gz").write_bytes(gzip.compress(model(3_000)))
    found = importlib.machinery.ModuleSpec("botocore", None, is_package=True)
    found.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: found)
    assert _job_template_max_from_file() == 2_000


@pytest.mark.parametrize("read_size", [1, 7, 13, 1 << 16])
def test_the_job_template_shape_is_found_whatever_the_reads(read_size: int) -> None:
    # The model file is read only as far as the shape: found across read boundaries,
    # past mentions of the name that are not its definition, and not from a cut-off one.
    text = (
        b'{"shapes":{"A":{"members":{"t":{"shape":"JobTemplate"}}},'
        b'"JobTemplate" : {"type":"string","max":1000000,"min":1},"Z":{}}}'
    )

    def reads(data: bytes) -> Callable[[int], bytes]:
        file = io.BytesIO(data)
        return lambda _size: file.read(read_size)

    found = _find_job_template(reads(text))
    assert found is not None and json.loads(found)["max"] == 1_000_000
    assert _find_job_template(reads(text[: text.index(b'"max"')])) is None


def test_check_refuses_the_billion_laughs_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    line = one_error_line(agent("check", str(path)))
    assert "expands through YAML aliases" in line and str(path) in line


@pytest.fixture
async def farm() -> AsyncIterator[MockFarm]:
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        yield farm


async def test_the_farm_refuses_the_billion_laughs_and_keeps_answering(farm: MockFarm) -> None:
    """A CreateJob with the billion laughs is a ValidationException, and a call made
    while it is being refused is answered."""
    deadline = farm.boto3_client("deadline")
    results: dict[str, object] = {}

    def create() -> None:
        try:
            deadline.create_job(
                farmId=farm.farm_id,
                queueId=farm.queue_id,
                template=BILLION_LAUGHS,
                templateType="YAML",
                priority=1,
            )
        except botocore.exceptions.ClientError as exc:
            results["create"] = exc.response
        else:
            results["create"] = "created"

    def other() -> None:
        results["queues"] = deadline.list_queues(farmId=farm.farm_id)["queues"]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, create)
            nursery.start_soon(trio.to_thread.run_sync, other)
    create_error = results["create"]
    assert isinstance(create_error, dict), create_error
    assert create_error["Error"]["Code"] == "ValidationException"
    assert "aliases" in create_error["Error"]["Message"]
    assert [queue["queueId"] for queue in results["queues"]] == [farm.queue_id]  # type: ignore[attr-defined]

    # ... and a JSON template nested too deep is refused the same way.
    def deep() -> dict[str, object]:
        try:
            deadline.create_job(
                farmId=farm.farm_id,
                queueId=farm.queue_id,
                template=json.dumps({"name": "x"})[:-1] + ', "a": ' + "[" * 5000 + "]" * 5000 + "}",
                templateType="JSON",
                priority=1,
            )
        except botocore.exceptions.ClientError as exc:
            return dict(exc.response)
        raise AssertionError("created")

    response = await trio.to_thread.run_sync(deep)
    assert response["Error"]["Code"] == "ValidationException"  # type: ignore[index]
    assert "nested" in response["Error"]["Message"]  # type: ignore[index]


@pytest.mark.parametrize("depth", [100_000, 200])
async def test_the_farm_refuses_deeply_nested_bodies(farm: MockFarm, depth: int) -> None:
    """A 400 ValidationException saying why, not a 500 and a logged traceback."""
    body = b'{"displayName": "q", "x": ' + b"[" * depth + b"]" * depth + b"}"
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{farm.endpoint_url}/2023-10-12/farms/{farm.farm_id}/queues",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert response.headers["x-amzn-errortype"].startswith("ValidationException")
        assert "nested" in response.json()["message"]
        faults = await http.put(f"{farm.endpoint_url}/_mockfarm/faults", content=body)
        assert faults.status_code == 400 and "nested" in faults.json()["message"]


async def test_a_template_is_parsed_off_the_farms_loop(
    farm: MockFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateJob parses its template in a worker thread: while one parse is held, the
    farm answers other calls, and the job is created once the parse finishes."""
    from agent.mockfarm import _jobs

    started, release = threading.Event(), threading.Event()
    original = _jobs.PREPARERS["CreateJob"]

    def held(params: Mapping[str, Any]) -> Any:
        started.set()
        release.wait(30)
        return original(params)

    monkeypatch.setitem(_jobs.PREPARERS, "CreateJob", held)
    deadline = farm.boto3_client("deadline")
    template = json.dumps(
        {
            "specificationVersion": "jobtemplate-2023-09",
            "name": "held",
            "steps": [{"name": "S", "script": {"actions": {"onRun": {"command": "true"}}}}],
        }
    )
    created: list[str] = []

    def create() -> None:
        created.append(
            deadline.create_job(
                farmId=farm.farm_id,
                queueId=farm.queue_id,
                template=template,
                templateType="JSON",
                priority=1,
            )["jobId"]
        )

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, create)
            await trio.to_thread.run_sync(started.wait, 30)
            # The parse is under way and held: the farm still answers.
            queues = await trio.to_thread.run_sync(
                lambda: deadline.list_queues(farmId=farm.farm_id)["queues"]
            )
            assert [queue["queueId"] for queue in queues] == [farm.queue_id]
            assert created == []
            release.set()
    [job_id] = created
    job = await trio.to_thread.run_sync(
        lambda: deadline.get_job(farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id)
    )
    assert job["name"] == "held"
