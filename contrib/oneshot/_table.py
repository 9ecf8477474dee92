"""The job table: reading a record and moving its status, each move a conditional write.

Every write names the state it expects, so two tasks can never both run one
record and a task that lost its record cannot overwrite what someone else wrote:

- ``claim``: ``INITIALIZING`` -> ``RUNNING``, stamped with a fresh ``attempt_id``;
- ``heartbeat`` and ``finish``: only while ``RUNNING`` with our ``attempt_id``;
- ``reject``: ``INITIALIZING`` -> ``FAILED`` with the reason, for a record
  that cannot be run as it is.

A write whose answer was lost (the connection dropped after the server
applied it) is retried and then fails its condition; each write then reads
the record back and counts as done if the record shows what it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from agent import ServiceError
from agent.deadline import ServiceClient

from .._aws import from_item, to_attribute
from ._record import FAILED, INITIALIZING, RUNNING, JobRecord

_CONDITION_FAILED = "ConditionalCheckFailedException"


@attrs.frozen
class Claim:
    claimed: bool
    #: The record as it is now when the claim failed (``None``: it is gone).
    record: JobRecord | None = None


@attrs.frozen
class Beat:
    #: Whether the record is still ours (``RUNNING`` with our ``attempt_id``).
    ours: bool
    cancel_requested: bool
    record: JobRecord | None


class JobTable:
    """One DynamoDB table of job records, keyed by the string attribute ``key``."""

    def __init__(self, client: ServiceClient, name: str, *, key: str = "job_id") -> None:
        self._client = client
        self.name = name
        self.key = key

    def _key(self, job_id: str) -> dict[str, Any]:
        return {self.key: {"S": job_id}}

    async def load(self, job_id: str) -> JobRecord | None:
        """The record, read consistently; ``None`` when there is none."""
        answer = await self._client.call(
            "GetItem", {"TableName": self.name, "Key": self._key(job_id), "ConsistentRead": True}
        )
        item = answer.get("Item")
        return JobRecord.from_item(from_item(item), key=self.key) if item else None

    async def claim(
        self,
        job_id: str,
        *,
        attempt_id: str,
        claimed_by: str,
        task: Mapping[str, Any],
        now: str,
    ) -> Claim:
        """Move the record from ``INITIALIZING`` to ``RUNNING`` for ``attempt_id``; on ECS
        the task's ARN goes to ``fargate_task_arn`` too, where plus-worker writes it."""
        set_values: dict[str, Any] = {
            "status": RUNNING,
            "started_at": now,
            "updated_at": now,
            "heartbeat_at": now,
            "attempt_id": attempt_id,
            "claimed_by": claimed_by,
            "task": dict(task),
        }
        task_arn = task.get("task_arn")
        if isinstance(task_arn, str):
            set_values["fargate_task_arn"] = task_arn
        try:
            await self._update(
                job_id,
                expect={"status": INITIALIZING},
                set_values=set_values,
                remove=[
                    "completed_at",
                    "exit_code",
                    "error_message",
                    "outcome",
                    "duration_seconds",
                ],
            )
        except _ConditionFailed as failed:
            current = failed.record or await self.load(job_id)
            if (
                current is not None
                and current.status == RUNNING
                and current.attempt_id == attempt_id
            ):
                return Claim(True)  # an earlier attempt of this call landed
            return Claim(False, current)
        return Claim(True)

    async def reject(self, job_id: str, error: str, *, now: str) -> bool:
        """``INITIALIZING`` -> ``FAILED`` with ``error``; whether the record shows it."""
        try:
            await self._update(
                job_id,
                expect={"status": INITIALIZING},
                set_values={
                    "status": FAILED,
                    "completed_at": now,
                    "updated_at": now,
                    "error_message": error,
                    "outcome": "failed",
                },
            )
        except _ConditionFailed as failed:
            current = failed.record or await self.load(job_id)
            return (
                current is not None
                and current.status == FAILED
                and current.item.get("error_message") == error
            )
        return True

    async def heartbeat(self, job_id: str, attempt_id: str, *, now: str) -> Beat:
        """Stamp ``heartbeat_at``; say whether the record is still ours and wants a cancel."""
        try:
            answer = await self._update(
                job_id,
                expect={"status": RUNNING, "attempt_id": attempt_id},
                set_values={"heartbeat_at": now, "updated_at": now},
                return_new=True,
            )
        except _ConditionFailed as failed:
            current = failed.record or await self.load(job_id)
            return Beat(ours=False, cancel_requested=False, record=current)
        record = JobRecord.from_item(from_item(answer["Attributes"]), key=self.key)
        return Beat(ours=True, cancel_requested=record.cancel_requested, record=record)

    async def finish(
        self,
        job_id: str,
        attempt_id: str,
        *,
        status: str,
        fields: Mapping[str, Any],
    ) -> bool:
        """Write the final ``status`` and ``fields`` (a ``None`` value removes the
        attribute); whether the record shows them (``False``: it is no longer ours)."""
        set_values: dict[str, Any] = {"status": status}
        set_values.update({name: value for name, value in fields.items() if value is not None})
        try:
            await self._update(
                job_id,
                expect={"status": RUNNING, "attempt_id": attempt_id},
                set_values=set_values,
                remove=[name for name, value in fields.items() if value is None],
            )
        except _ConditionFailed as failed:
            current = failed.record or await self.load(job_id)
            return (
                current is not None
                and current.status == status
                and current.attempt_id == attempt_id
                and current.item.get("completed_at") == fields.get("completed_at")
            )
        return True

    async def _update(
        self,
        job_id: str,
        *,
        expect: Mapping[str, Any],
        set_values: Mapping[str, Any],
        remove: Sequence[str] = (),
        return_new: bool = False,
    ) -> dict[str, Any]:
        # Every attribute goes by a placeholder: many plain names (status, task...)
        # are DynamoDB reserved words.
        names = {"#k": self.key}
        values: dict[str, Any] = {}

        def name_of(attribute: str) -> str:
            placeholder = f"#a{len(names)}"
            names[placeholder] = attribute
            return placeholder

        def value_of(value: Any) -> str:
            placeholder = f":v{len(values)}"
            values[placeholder] = to_attribute(value)
            return placeholder

        expression = "SET " + ", ".join(
            f"{name_of(attribute)} = {value_of(value)}" for attribute, value in set_values.items()
        )
        if remove:
            expression += " REMOVE " + ", ".join(name_of(attribute) for attribute in remove)
        # The key must exist too: an update never creates a record.
        condition = " AND ".join(
            ["attribute_exists(#k)"]
            + [f"{name_of(attribute)} = {value_of(value)}" for attribute, value in expect.items()]
        )
        params: dict[str, Any] = {
            "TableName": self.name,
            "Key": self._key(job_id),
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if return_new:
            params["ReturnValues"] = "ALL_NEW"
        try:
            return await self._client.call("UpdateItem", params)
        except ServiceError as exc:
            if exc.code != _CONDITION_FAILED:
                raise
            item = exc.fields.get("Item")
            record = JobRecord.from_item(from_item(item), key=self.key) if item else None
            raise _ConditionFailed(record) from exc


class _ConditionFailed(Exception):
    def __init__(self, record: JobRecord | None) -> None:
        super().__init__("the record is not in the expected state")
        self.record = record
