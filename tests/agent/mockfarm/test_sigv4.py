"""A mock farm given keys verifies every request's SigV4 signature; ``serve`` refuses to
open a farm beyond loopback without them (issue 19: servers anyone can drive)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest
import trio

from agent.mockfarm import FarmConfig, _cmd_mockfarm, open_mock_farm
from tests.agent_process import PY, agent_process

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"AKIDFARMHANDTEST01": "the-farm-secret"}


def error_code(call: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


async def test_only_requests_signed_with_a_known_key_are_served(tmp_path: Path) -> None:
    """The farm's key works; a wrong secret, an unknown key and an unsigned request are
    refused with the service's codes, and the unsigned PATCH cancels nothing."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1), keys=KEYS) as farm:
        job_id = farm.create_job(
            {
                "specificationVersion": "jobtemplate-2023-09",
                "name": "held",
                "steps": [{"name": "S", "script": {"actions": {"onRun": {"command": PY}}}}],
            }
        )

        def calls() -> list[str]:
            good = farm.boto3_client("deadline")
            good.get_farm(farmId=farm.farm_id)
            wrong = farm.boto3_client("deadline", aws_secret_access_key="not-the-secret")
            unknown = farm.boto3_client("logs", aws_access_key_id="AKIDSOMEONEELSE")
            return [
                error_code(lambda: wrong.get_farm(farmId=farm.farm_id)),
                error_code(lambda: unknown.describe_log_groups()),
            ]

        codes = await trio.to_thread.run_sync(calls)
        url = f"{farm.endpoint_url}/2023-10-12/farms/{farm.farm_id}/queues/{farm.queue_id}/jobs/{job_id}"
        async with httpx.AsyncClient() as client:
            unsigned = await client.patch(url, json={"targetTaskRunStatus": "CANCELED"})
    assert codes == ["InvalidSignatureException", "UnrecognizedClientException"]
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"].startswith("MissingAuthenticationToken")
    assert farm.job(job_id).status != "CANCELED"


async def test_a_worker_signs_with_its_key_then_with_the_keys_the_farm_issued(
    tmp_path: Path,
) -> None:
    """A real worker process bootstraps with the given key, then works (schedules, ships
    logs) with the fleet-role keys the farm handed out, every call verified."""
    config = FarmConfig(update_interval_seconds=1)
    async with open_mock_farm(config=config, keys=KEYS) as farm, agent_process(farm, tmp_path):
        job_id = farm.create_job(
            {
                "specificationVersion": "jobtemplate-2023-09",
                "name": "signed",
                "steps": [
                    {
                        "name": "S",
                        "script": {
                            "actions": {"onRun": {"command": PY, "args": ["-c", "print('hi')"]}}
                        },
                    }
                ],
            }
        )
        with trio.fail_after(60):
            await farm.wait_for_job(job_id)
    assert farm.job(job_id).status == "SUCCEEDED"
    refused = [call for call in farm.calls if call.status == 403]
    assert refused == []
    assert {"CreateWorker", "AssumeFleetRoleForWorker", "UpdateWorkerSchedule"} <= set(
        farm.calls.counts
    )


async def test_admin_changes_come_from_this_host_only_when_verifying() -> None:
    """PUT /_mockfarm/faults from another address is refused; GET info is not."""
    async with open_mock_farm(keys=KEYS) as farm:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(dict(message))

        for method in ("PUT", "GET"):
            scope: dict[str, Any] = {
                "type": "http",
                "method": method,
                "raw_path": b"/_mockfarm/faults",
                "client": ("192.0.2.7", 40000),  # as the app would see a remote client
                "headers": [],
                "query_string": b"",
            }
            await farm.app(scope, receive, send)
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [403, 200]


def test_serve_beyond_loopback_without_keys_refuses_to_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is bound: one line naming the way out, exit 2."""
    monkeypatch.delenv(_cmd_mockfarm.KEY_ID_ENV, raising=False)
    parser = __import__("argparse").ArgumentParser()
    _cmd_mockfarm.configure(parser)
    assert _cmd_mockfarm.main(parser.parse_args(["serve", "--host", "0.0.0.0"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to serve on 0.0.0.0 with no signature checks")
    assert "--insecure" in err and err.count("\n") == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.8.9.10"])
def test_loopback_addresses_are_recognised(host: str) -> None:
    assert _cmd_mockfarm.is_loopback(host)
    assert not _cmd_mockfarm.is_loopback("0.0.0.0") and not _cmd_mockfarm.is_loopback("192.0.2.1")


async def test_serve_verify_signatures_prints_the_key_it_made(tmp_path: Path) -> None:
    """--verify-signatures on loopback: the printed key works, the usual fake one does not."""
    argv = [
        sys.executable,
        "-m",
        "agent",
        "mockfarm",
        "serve",
        "--port",
        "0",
        "--verify-signatures",
    ]
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"\nready: " not in output:  # the last line serve prints
                output += await process.stdout.receive_some()
        text = output.decode()
        exports = dict(
            line.split("export ", 1)[1].split("=", 1)
            for line in text.splitlines()
            if line.strip().startswith("export ")
        )
        endpoint = exports["FARMHAND_MOCKFARM_ENDPOINT"]

        def calls() -> tuple[str, str]:
            from agent.mockfarm import make_client

            signed = make_client(
                "deadline",
                endpoint,
                aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            )
            fake = make_client("deadline", endpoint)
            farms = signed.list_farms()["farms"]
            return json.dumps(len(farms)), error_code(fake.list_farms)

        count, code = await trio.to_thread.run_sync(calls)
    finally:
        process.terminate()
        await process.wait()
    assert count == "1" and code == "UnrecognizedClientException"
