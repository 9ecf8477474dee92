"""The entity fetcher: batching, sharing, per-session caches and errors."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors._entities import EntityError, environment_details_id, job_details_id, step_details_id
from actors._fetcher import EntityFetcher, FetcherCommand, Forget, fetch

JOB = "job-" + "a" * 32


def step_entity(step_id: str) -> dict[str, Any]:
    return {
        "stepDetails": {
            "jobId": JOB,
            "stepId": step_id,
            "schemaVersion": "jobtemplate-2023-09",
            "template": {"name": step_id, "script": {"actions": {"onRun": {"command": "true"}}}},
            "dependencies": [],
        }
    }


class FakeService:
    """Answers BatchGetJobEntity from a table; records the calls; can be held."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.errors: dict[str, str] = {}  # stepId -> error code
        self.too_big_in_batches: set[str] = set()
        self.fail_whole_call: Exception | None = None
        self.gate: trio.Event | None = None

    async def __call__(self, identifiers: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(identifiers)
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.fail_whole_call is not None:
            raise self.fail_whole_call
        entities, errors = [], []
        for identifier in identifiers:
            step_id = identifier["stepDetails"]["stepId"]
            if step_id in self.errors:
                errors.append(
                    {
                        "stepDetails": {
                            "jobId": JOB,
                            "stepId": step_id,
                            "code": self.errors[step_id],
                            "message": "nope",
                        }
                    }
                )
            elif step_id in self.too_big_in_batches and len(identifiers) > 1:
                errors.append(
                    {
                        "stepDetails": {
                            "jobId": JOB,
                            "stepId": step_id,
                            "code": "MaxPayloadSizeExceeded",
                            "message": "big",
                        }
                    }
                )
            else:
                entities.append(step_entity(step_id))
        return {"entities": entities, "errors": errors}


async def start(
    nursery: trio.Nursery, service: FakeService
) -> tuple[EntityFetcher, trio.MemorySendChannel[FetcherCommand]]:
    fetcher = EntityFetcher(service)
    inbox = await nursery.start(fetcher.run)
    return fetcher, inbox


async def test_batches_of_ten_without_duplicates() -> None:
    """25 identifiers with 4 duplicates cost 3 calls of at most 10 distinct entities."""
    service = FakeService()
    ids = [step_details_id(JOB, f"step-{i}") for i in range(21)] + [
        step_details_id(JOB, "step-3")
    ] * 4
    async with trio.open_nursery() as nursery:
        _, inbox = await start(nursery, service)
        replies = await fetch(inbox, "session-1", ids)
        nursery.cancel_scope.cancel()
    assert sorted(len(call) for call in service.calls) == [1, 10, 10]
    assert len({str(i) for call in service.calls for i in call}) == 21
    assert [r.unwrap()["stepId"] for r in replies] == [f"step-{i}" for i in range(21)] + [
        "step-3"
    ] * 4


async def test_concurrent_requests_share_one_fetch() -> None:
    """Two askers of one entity while it is in flight cause one call."""
    service = FakeService()
    service.gate = trio.Event()
    results: list[str] = []
    async with trio.open_nursery() as nursery:
        fetcher, inbox = await start(nursery, service)

        async def ask() -> None:
            [reply] = await fetch(inbox, "session-1", [step_details_id(JOB, "step-a")])
            results.append(reply.unwrap()["stepId"])

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        service.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        stats = fetcher.statistics()
        nursery.cancel_scope.cancel()
    assert results == ["step-a", "step-a"]
    assert len(service.calls) == 1
    assert stats.shared_waits == 1


async def test_cache_is_per_session_and_forgotten() -> None:
    """A session's second request is a cache hit; another session fetches its own; Forget drops it."""
    service = FakeService()
    ident = [step_details_id(JOB, "step-a")]
    async with trio.open_nursery() as nursery:
        fetcher, inbox = await start(nursery, service)
        await fetch(inbox, "s1", ident)
        await fetch(inbox, "s1", ident)
        await fetch(inbox, "s2", ident)
        assert len(service.calls) == 2
        assert fetcher.statistics().cache_hits == 1
        await inbox.send(Forget("s1"))
        await fetch(inbox, "s1", ident)
        nursery.cancel_scope.cancel()
    assert len(service.calls) == 3


async def test_max_payload_entities_are_asked_for_alone() -> None:
    """An entity too big for a batch is re-requested on its own and then succeeds."""
    service = FakeService()
    service.too_big_in_batches = {"big"}
    async with trio.open_nursery() as nursery:
        _, inbox = await start(nursery, service)
        replies = await fetch(
            inbox, "s", [step_details_id(JOB, "small"), step_details_id(JOB, "big")]
        )
        nursery.cancel_scope.cancel()
    assert [r.unwrap()["stepId"] for r in replies] == ["small", "big"]
    assert [len(call) for call in service.calls] == [2, 1]


async def test_entity_errors_fail_only_that_entity_and_are_not_cached() -> None:
    """A per-entity error is returned for that identifier only, and asked again next time."""
    service = FakeService()
    service.errors = {"bad": "ResourceNotFoundException"}
    async with trio.open_nursery() as nursery:
        _, inbox = await start(nursery, service)
        good, bad = await fetch(
            inbox, "s", [step_details_id(JOB, "good"), step_details_id(JOB, "bad")]
        )
        assert good.unwrap()["stepId"] == "good"
        with pytest.raises(EntityError, match="ResourceNotFoundException"):
            bad.unwrap()
        del service.errors["bad"]
        [again] = await fetch(inbox, "s", [step_details_id(JOB, "bad")])
        nursery.cancel_scope.cancel()
    assert again.unwrap()["stepId"] == "bad"


async def test_a_failed_call_fails_its_requests_without_caching() -> None:
    """When the whole call fails, each identifier in it reports the failure."""
    service = FakeService()
    service.fail_whole_call = RuntimeError("InternalServerError after retries")
    async with trio.open_nursery() as nursery:
        _, inbox = await start(nursery, service)
        [reply] = await fetch(inbox, "s", [step_details_id(JOB, "x")])
        with pytest.raises(EntityError, match="InternalServerError"):
            reply.unwrap()
        service.fail_whole_call = None
        [reply] = await fetch(inbox, "s", [step_details_id(JOB, "x")])
        nursery.cancel_scope.cancel()
    assert reply.unwrap()["stepId"] == "x"


async def test_invalid_entities_are_rejected_with_the_field_named() -> None:
    """An entity with an unknown field or a wrong type is a clear validation error."""

    async def service(identifiers: list[dict[str, Any]]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {
            "entities": [
                {
                    "jobDetails": {
                        "jobId": JOB,
                        "logGroupName": "g",
                        "schemaVersion": "jobtemplate-2023-09",
                        "surprise": 1,
                    }
                },
                {
                    "environmentDetails": {
                        "jobId": JOB,
                        "environmentId": "env-1",
                        "schemaVersion": "jobtemplate-2023-09",
                        "template": "not an object",
                    }
                },
            ]
        }

    async with trio.open_nursery() as nursery:
        inbox = await nursery.start(EntityFetcher(service).run)
        job, environment, missing = await fetch(
            inbox,
            "s",
            [
                job_details_id(JOB),
                environment_details_id(JOB, "env-1"),
                step_details_id(JOB, "nope"),
            ],
        )
        nursery.cancel_scope.cancel()
    with pytest.raises(EntityError, match=r"unexpected field\(s\) surprise"):
        job.unwrap()
    with pytest.raises(EntityError, match=r"environmentDetails.template: expected object"):
        environment.unwrap()
    with pytest.raises(EntityError, match="MissingFromResponse"):
        missing.unwrap()
