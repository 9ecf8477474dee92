"""The farm: its records and one handler per Deadline operation.

A handler takes the validated input of its operation (a dict, as the codec
parsed it) and returns the output as a dict of Python values; the codec
serializes it. Handlers are synchronous: everything lives in memory and Trio
runs one handler at a time, so a request sees and leaves a consistent farm.

``Farm`` also offers the same actions in Python (``create_job``,
``request_worker_stop``...) for tests and embedding programs. Its parts:
``_farmbase`` (records, lookups, actions), ``_workerops`` (the worker API),
``_manageops`` (farms, fleets, queues, jobs, steps, tasks, sessions),
``_assocops`` (updates, deletes, associations, step links, statistics, with
``_policy``: compatibility, budgets, limits), ``_adminops`` (budgets, limits,
storage profiles, license endpoints, monitors, members, tags) and
``_searchops`` (Search*, BatchGet*, BatchUpdate*).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._adminops import AdminOperations
from ._assocops import AssociationOperations
from ._farmbase import FarmConfig as FarmConfig
from ._farmbase import Handler as Handler
from ._manageops import ManagementOperations
from ._searchops import SearchOperations
from ._workerops import WorkerOperations

if TYPE_CHECKING:
    from ._store import FarmStore


class Farm(
    WorkerOperations,
    ManagementOperations,
    AssociationOperations,
    AdminOperations,
    SearchOperations,
):
    """The farm's state and the Deadline handlers that read and change it."""

    def __init__(self, config: FarmConfig | None = None, *, store: FarmStore | None = None) -> None:
        super().__init__(config, store=store)
        self.install_policy(associate_defaults=not self.restored)
