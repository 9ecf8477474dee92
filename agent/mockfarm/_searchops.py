"""Search* (filter and sort expressions, item offsets), BatchGet* and BatchUpdate*.

Search follows the service: ``itemOffset``/``pageSize`` (default and at most
100) with ``nextItemOffset`` and ``totalResults``; ``filterExpressions`` of up to
three filters joined by ``AND``/``OR``, nested through ``groupFilter``:

- ``stringFilter`` (``EQUAL``, ``NOT_EQUAL``) and ``stringListFilter``
  (``ANY_EQUALS``, ``ALL_NOT_EQUALS``) on a field named in upper snake case
  after the summary member (``TASK_RUN_STATUS``, ``NAME``, ``CREATED_BY``...);
- ``dateTimeFilter`` (``EQUAL``, ``GREATER_THAN[_EQUAL_TO]``, ``LESS_THAN[_EQUAL_TO]``)
  on ``CREATED_AT``, ``STARTED_AT``, ``ENDED_AT``, ``UPDATED_AT``;
- ``parameterFilter`` on a job's or task's parameter (numbers compare as numbers);
- ``searchTermFilter``: ``FUZZY_MATCH`` (the default: case-insensitive) or
  ``CONTAINS`` (exact) within the name and ids.

``sortExpressions``: ``fieldSort``, ``parameterSort`` and ``userJobsFirst``, in order.
An unknown field is a ValidationException that names it.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from .._servicemodels import service_model
from ._apierrors import ApiError, not_found, validation
from ._farmbase import FarmBase
from ._records import Job, Step, Task, WorkerRecord

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "EQUAL": op.eq,
    "NOT_EQUAL": op.ne,
    "GREATER_THAN_EQUAL_TO": op.ge,
    "GREATER_THAN": op.gt,
    "LESS_THAN_EQUAL_TO": op.le,
    "LESS_THAN": op.lt,
}
#: Search field names that are not the member's name in upper snake case.
_ALIASES = {"TASK_RUN_STATUS": ("taskRunStatus", "runStatus"), "STATUS": ("status", "runStatus")}
_SEARCH_TEXT = ("name", "jobId", "stepId", "taskId", "workerId", "displayName")


@cache
def _members(shape_name: str) -> frozenset[str]:
    model = service_model("deadline")
    return frozenset(model.shape_for(shape_name).members)


def only(shape_name: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The members of ``item`` that the output shape has."""
    names = _members(shape_name)
    return {key: value for key, value in item.items() if key in names}


def _field(item: Mapping[str, Any], name: str) -> Any:
    for key in _ALIASES.get(name, ()):
        if key in item:
            return item[key]
    head, *rest = name.lower().split("_")
    key = head + "".join(part.title() for part in rest)
    if key not in item:
        raise validation(f"The search field {name!r} is not known for this resource.")
    return item[key]


def _parameter(item: Mapping[str, Any], name: str) -> Any:
    parameters = item.get("jobParameters") or item.get("parameters") or {}
    value = parameters.get(name)
    if not value:
        return None
    [(kind, raw)] = value.items()
    if kind in ("int", "float"):
        return float(raw)
    return raw


def _comparable(value: Any, wanted: str) -> tuple[Any, Any]:
    if isinstance(value, float):
        try:
            return value, float(wanted)
        except ValueError:
            return str(value), wanted
    return value, wanted


def _matches(item: Mapping[str, Any], expression: Mapping[str, Any]) -> bool:
    [(kind, spec)] = expression.items()
    if kind == "groupFilter":
        return _all_match(item, spec)
    if kind == "searchTermFilter":
        term = spec["searchTerm"]
        texts = [str(item[k]) for k in _SEARCH_TEXT if item.get(k)]
        host = item.get("hostProperties") or {}
        texts += [host.get("hostName") or ""]
        if spec.get("matchType") == "CONTAINS":
            return any(term in text for text in texts)
        return any(term.lower() in text.lower() for text in texts)
    if kind == "stringListFilter":
        value = _field(item, spec["name"])
        if spec["operator"] == "ANY_EQUALS":
            return value in spec["values"]
        if spec["operator"] == "ALL_NOT_EQUALS":
            return value not in spec["values"]
        raise validation("stringListFilter supports only ANY_EQUALS and ALL_NOT_EQUALS.")
    compare = _COMPARE.get(spec["operator"])
    if compare is None:
        raise validation(f"{kind} does not support the operator {spec['operator']}.")
    if kind == "stringFilter":
        if spec["operator"] not in ("EQUAL", "NOT_EQUAL"):
            raise validation("stringFilter supports only EQUAL and NOT_EQUAL.")
        return compare(_field(item, spec["name"]), spec["value"])
    if kind == "dateTimeFilter":
        if spec["operator"] == "NOT_EQUAL":
            raise validation("dateTimeFilter does not support NOT_EQUAL.")
        value = _field(item, spec["name"])
        if not isinstance(value, datetime):
            return False
        return compare(value, spec["dateTime"])
    if kind == "parameterFilter":
        value = _parameter(item, spec["name"])
        if value is None:
            return bool(spec["operator"] == "NOT_EQUAL")
        return compare(*_comparable(value, spec["value"]))
    raise validation(f"Unknown filter {kind}.")


def _all_match(item: Mapping[str, Any], expressions: Mapping[str, Any]) -> bool:
    results = (_matches(item, f) for f in expressions["filters"])
    return all(results) if expressions["operator"] == "AND" else any(results)


def _sort(items: list[dict[str, Any]], expressions: Iterable[Mapping[str, Any]]) -> None:
    # Stable sorts, last key first, so the first expression decides first.
    for expression in reversed(list(expressions)):
        [(kind, spec)] = expression.items()
        if kind == "userJobsFirst":
            user = spec["userIdentityId"]
            items.sort(key=lambda i: not str(i.get("createdBy", "")).endswith(user))
            continue
        reverse = spec["sortOrder"] == "DESCENDING"
        get = _parameter if kind == "parameterSort" else _field
        for item in items[:1]:
            get(item, spec["name"])  # an unknown field is an error even when nothing sorts

        def key(
            item: dict[str, Any],
            name: str = spec["name"],
            get: Callable[[Mapping[str, Any], str], Any] = get,
            reverse: bool = reverse,
        ) -> tuple[bool, Any]:
            value = get(item, name)
            present = value is not None
            # Missing values sort last in either order.
            return (present if reverse else not present, value if present else 0)

        items.sort(key=key, reverse=reverse)


class SearchOperations(FarmBase):
    """SearchJobs/Steps/Tasks/Workers, BatchGet*, BatchUpdateJob/Task, UpdateSession."""

    # Provided by the other handler families (``Farm`` joins them).
    _job_summary: Callable[[Job], dict[str, Any]]
    _step_summary: Callable[[Step], dict[str, Any]]
    _task_summary: Callable[[Task], dict[str, Any]]
    _worker_summary: Callable[[WorkerRecord], dict[str, Any]]

    def _search(
        self, p: Mapping[str, Any], items: list[dict[str, Any]], key: str, shape: str
    ) -> Mapping[str, Any]:
        if p.get("filterExpressions"):
            items = [i for i in items if _all_match(i, p["filterExpressions"])]
        _sort(items, p.get("sortExpressions") or ())
        offset, size = p["itemOffset"], p.get("pageSize", 100)
        page = items[offset : offset + size]
        following = offset + size
        return {
            key: [only(shape, i) for i in page],
            "nextItemOffset": following if following < len(items) else None,
            "totalResults": len(items),
        }

    def _searched_jobs(self, p: Mapping[str, Any]) -> list[Job]:
        self.farm(p["farmId"])
        queues = [self.queue(p["farmId"], q) for q in p["queueIds"]]
        jobs = [j for j in self.state.jobs.values() if j.queue in queues]
        if p.get("jobId"):
            jobs = [j for j in jobs if j.job_id == p["jobId"]]
        return jobs

    def SearchJobs(self, p: dict[str, Any]) -> Mapping[str, Any]:
        items = [
            {**self._job_summary(j), "queueId": j.queue_id, "jobParameters": j.parameters}
            for j in self._searched_jobs(p)
        ]
        return self._search(p, items, "jobs", "JobSearchSummary")

    def SearchSteps(self, p: dict[str, Any]) -> Mapping[str, Any]:
        items = [
            {
                **self._step_summary(s),
                "jobId": j.job_id,
                "queueId": j.queue_id,
                "parameterSpace": s.spec.parameter_space,
            }
            for j in self._searched_jobs(p)
            for s in j.steps
        ]
        return self._search(p, items, "steps", "StepSearchSummary")

    def SearchTasks(self, p: dict[str, Any]) -> Mapping[str, Any]:
        items = [
            {**self._task_summary(t), "stepId": s.step_id, "jobId": j.job_id, "queueId": j.queue_id}
            for j in self._searched_jobs(p)
            for s in j.steps
            for t in s.tasks
        ]
        return self._search(p, items, "tasks", "TaskSearchSummary")

    def SearchWorkers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleets = {self.fleet(p["farmId"], f).fleet_id for f in p["fleetIds"]}
        items = [
            self._worker_summary(w) for w in self.state.workers.values() if w.fleet_id in fleets
        ]
        return self._search(p, items, "workers", "WorkerSearchSummary")

    # ------------------------------------------------------------ batches

    def _batch(
        self,
        p: Mapping[str, Any],
        list_key: str,
        get: Callable[[dict[str, Any]], Mapping[str, Any]],
        shape: str,
        error_shape: str,
    ) -> Mapping[str, Any]:
        found: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for identifier in p["identifiers"]:
            try:
                found.append(only(shape, {**get(dict(identifier)), **identifier}))
            except ApiError as error:
                errors.append(
                    only(error_shape, {**identifier, "code": error.code, "message": error.message})
                )
        return {list_key: found, "errors": errors}

    def BatchGetJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p, "jobs", self.handlers["GetJob"], "BatchGetJobItem", "BatchGetJobError"
        )

    def BatchGetStep(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p, "steps", self.handlers["GetStep"], "BatchGetStepItem", "BatchGetStepError"
        )

    def BatchGetTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p, "tasks", self.handlers["GetTask"], "BatchGetTaskItem", "BatchGetTaskError"
        )

    def BatchGetSession(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p,
            "sessions",
            self.handlers["GetSession"],
            "BatchGetSessionItem",
            "BatchGetSessionError",
        )

    def BatchGetSessionAction(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p,
            "sessionActions",
            self.handlers["GetSessionAction"],
            "BatchGetSessionActionItem",
            "BatchGetSessionActionError",
        )

    def BatchGetWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch(
            p, "workers", self.handlers["GetWorker"], "BatchGetWorkerItem", "BatchGetWorkerError"
        )

    def _batch_update(
        self, items: Iterable[Mapping[str, Any]], update: str, error_shape: str
    ) -> Mapping[str, Any]:
        errors = []
        for item in items:
            try:
                self.handlers[update](dict(item))
            except ApiError as error:
                errors.append(
                    only(error_shape, {**item, "code": error.code, "message": error.message})
                )
        return {"errors": errors}

    def BatchUpdateJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch_update(p["jobs"], "UpdateJob", "BatchUpdateJobError")

    def BatchUpdateTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._batch_update(p["tasks"], "UpdateTask", "BatchUpdateTaskError")

    def UpdateSession(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        session = self.state.sessions.get(p["sessionId"])
        if session is None or session.job is not job:
            raise not_found("session", p["sessionId"])
        # ENDED: the session stops taking work, cancels what runs and leaves its environments.
        self.scheduler.cancel_session_work(session)
        return {}
