"""The job server beyond loopback: a bearer token or mutual TLS, or it refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from contrib.httpqueue import ClientAuth, ConfigError, ServerTls, open_job_server
from contrib.httpqueue._auth import check_exposure, token_matches
from tests.httpqueue_harness import job_status, make_paths, running_worker, worker_config
from tests.tls_harness import certificates

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "s3cret-token-of-the-queue"


def test_serving_beyond_loopback_needs_a_token_or_mutual_tls(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` with neither refuses to start: exit 2 and one line; a token,
    mutual TLS or --insecure lets it (checked without binding: tests stay on loopback)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "httpqueue",
            "serve",
            "--host",
            "0.0.0.0",
            "--store",
            ":memory:",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("FARMHAND_HTTPQUEUE_")},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: refusing to serve on 0.0.0.0: anyone who reaches it")
    assert result.stderr.count("\n") == 1
    certs = certificates(tmp_path)
    mutual = ServerTls(certs["server"], certs["server_key"], certs["ca"])
    check_exposure("10.0.0.5", token=TOKEN, tls=None, insecure=False)
    check_exposure("10.0.0.5", token=None, tls=mutual, insecure=False)
    check_exposure("10.0.0.5", token=None, tls=None, insecure=True)
    check_exposure("127.0.0.1", token=None, tls=None, insecure=False)
    # TLS alone encrypts; it does not say who may call.
    server_only = ServerTls(certs["server"], certs["server_key"])
    with pytest.raises(ConfigError, match=r"refusing to serve on 10\.0\.0\.5"):
        check_exposure("10.0.0.5", token=None, tls=server_only, insecure=False)


def test_the_token_is_compared_whole() -> None:
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert token_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"):
        assert not token_matches(header, TOKEN), header


async def test_a_token_guards_every_route_but_health() -> None:
    async with open_job_server(token=TOKEN) as server:
        job = await server.submit({"job_name": "j", "config_path": "/x.json"})
        async with httpx.AsyncClient(base_url=server.url) as http:
            for path in ("/api/jobs", f"/api/jobs/{job['job_id']}", f"/status/{job['job_id']}"):
                anonymous = await http.get(path)
                assert anonymous.status_code == 401, path
                assert anonymous.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in anonymous.json()["error"]
                wrong = await http.get(path, headers={"authorization": "Bearer nope"})
                assert wrong.status_code == 401, path
                right = await http.get(path, headers={"authorization": f"Bearer {TOKEN}"})
                assert right.status_code == 200, path
            submit = await http.post("/api/jobs", json={"config_path": "/y.json"})
            assert submit.status_code == 401
            assert (await http.get("/api/health")).status_code == 200
        assert len(server.queue.jobs) == 1  # the anonymous submit made nothing
        assert server.refused == 7


async def test_a_worker_with_the_token_runs_jobs_and_one_without_is_refused(
    tmp_path: Path,
) -> None:
    paths = make_paths(tmp_path)
    async with open_job_server(token=TOKEN) as server:
        job = await server.submit({"job_name": "j", "config_path": paths.config("j", print=["hi"])})
        with capture_logs() as logs:
            async with running_worker(worker_config(paths, server.url)) as worker:
                with trio.fail_after(30):
                    # The second poll starts once the first was answered (refused).
                    await worker.wait_until(lambda s: s.polls >= 2)
        assert server.job(job["job_id"])["status"] == "queued"
        assert server.refused >= 2  # a heartbeat and a poll at least
        for event in ("httpqueue.heartbeat_failed", "httpqueue.next_job_refused"):
            [first, *_] = [e for e in logs if e["event"] == event]
            assert "HTTP 401" in first["error"] and "bearer token" in first["error"], event
        assert TOKEN not in repr(logs)
        config = worker_config(paths, server.url, auth=ClientAuth(token=TOKEN))
        assert TOKEN not in repr(config)
        async with running_worker(config):
            done = await job_status(server, job["job_id"], "finished", "failed")
    assert done["status"] == "finished"
    assert "hi" in paths.log(job["job_id"]).splitlines()


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    certs = certificates(tmp_path)
    paths = make_paths(tmp_path)
    tls = ServerTls(certs["server"], certs["server_key"], certs["ca"])
    async with open_job_server(tls=tls) as server:
        assert server.url.startswith("https://127.0.0.1:")
        without = ClientAuth(ca_file=certs["ca"])
        async with httpx.AsyncClient(**without.httpx_options()) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(f"{server.url}/api/jobs")
        auth = ClientAuth(
            ca_file=certs["ca"], client_cert=certs["client"], client_key=certs["client_key"]
        )
        async with httpx.AsyncClient(**auth.httpx_options()) as http:
            assert (await http.get(f"{server.url}/api/jobs")).status_code == 200
        job = await server.submit({"job_name": "j", "config_path": paths.config("j", print=["hi"])})
        async with running_worker(worker_config(paths, server.url, auth=auth)):
            done = await job_status(server, job["job_id"], "finished", "failed")
    assert done["status"] == "finished"


async def test_the_client_commands_send_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARMHAND_HTTPQUEUE_")}
    async with open_job_server(token=TOKEN) as server:
        await server.submit({"job_name": "listed", "config_path": "/x.json"})
        command = [sys.executable, "-m", "agent", "httpqueue", "status", "--server", server.url]
        refused = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT, env=base
        )
        assert refused.returncode == 1
        assert b"needs its bearer token" in refused.stderr
        for env in ({**base, "FARMHAND_HTTPQUEUE_TOKEN": TOKEN}, base):
            extra = [] if "FARMHAND_HTTPQUEUE_TOKEN" in env else ["--token-file", str(token_file)]
            listed = await trio.run_process(
                command + extra, capture_stdout=True, check=False, cwd=ROOT, env=env
            )
            assert listed.returncode == 0
            assert b"listed" in listed.stdout
