"""The farm's administrative records: budgets, limits, storage profiles, members...

Plain mutable records like those of ``_records``, held by ``AdminState`` (the
``admin`` member of ``FarmState``) and changed only by the handlers of
``_adminops``, ``_assocops`` and ``_lifecycleops``. Each is flat (ids, not object
references) so that a store can write it as a row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs


@attrs.define(eq=False)
class Budget:
    budget_id: str
    farm_id: str
    display_name: str
    description: str | None
    #: ``usageTrackingResource.queueId``.
    queue_id: str
    approximate_dollar_limit: float
    #: ``[{"type", "thresholdPercentage", "description"?}]``.
    actions: list[dict[str, Any]]
    #: ``{"fixed": {"startTime", "endTime"}}`` (timestamps as datetimes).
    schedule: dict[str, Any]
    created_at: datetime
    created_by: str
    status: str = "ACTIVE"
    updated_at: datetime | None = None
    updated_by: str | None = None
    #: When a budget action stopped the queue's scheduling (``None``: it did not).
    queue_stopped_at: datetime | None = None


@attrs.define(eq=False)
class Limit:
    limit_id: str
    farm_id: str
    display_name: str
    description: str | None
    amount_requirement_name: str
    #: ``-1``: no maximum.
    max_count: int
    created_at: datetime
    created_by: str
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class StorageProfile:
    storage_profile_id: str
    farm_id: str
    display_name: str
    os_family: str
    #: ``[{"name", "path", "type"}]``.
    file_system_locations: list[dict[str, str]]
    created_at: datetime
    created_by: str
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class Member:
    """A principal's membership of a farm, fleet, queue or job."""

    #: ``farm``, ``fleet``, ``queue`` or ``job``.
    scope: str
    #: The farm id, then the fleet or queue id, then the job id, as the scope needs.
    scope_ids: tuple[str, ...]
    principal_id: str
    principal_type: str
    identity_store_id: str
    membership_level: str


@attrs.define(eq=False)
class QueueFleetAssociation:
    farm_id: str
    queue_id: str
    fleet_id: str
    created_at: datetime
    created_by: str
    #: ``ACTIVE``, ``STOP_SCHEDULING_AND_COMPLETE_TASKS``, ``STOP_SCHEDULING_AND_CANCEL_TASKS``
    #: (``STOPPED`` is shown once no session of the queue is left on the fleet).
    status: str = "ACTIVE"
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class QueueLimitAssociation:
    farm_id: str
    queue_id: str
    limit_id: str
    created_at: datetime
    created_by: str
    status: str = "ACTIVE"
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class LicenseEndpoint:
    license_endpoint_id: str
    vpc_id: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    created_at: datetime
    #: Product ids (``PutMeteredProduct``).
    products: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class Monitor:
    monitor_id: str
    display_name: str
    subdomain: str
    role_arn: str
    identity_center_instance_arn: str
    identity_center_region: str | None
    identity_center_application_arn: str
    created_at: datetime
    created_by: str
    settings: dict[str, str] = attrs.Factory(dict)
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class StatisticsAggregation:
    """A StartSessionsStatisticsAggregation request and its result (computed at once)."""

    aggregation_id: str
    farm_id: str
    #: The request as the codec parsed it.
    request: dict[str, Any]
    created_at: datetime
    #: The ``statistics`` entries, as GetSessionsStatisticsAggregation pages them.
    statistics: list[dict[str, Any]] = attrs.Factory(list)


@attrs.define(eq=False)
class AdminState:
    """The administrative records, by id."""

    budgets: dict[str, Budget] = attrs.Factory(dict)
    limits: dict[str, Limit] = attrs.Factory(dict)
    storage_profiles: dict[str, StorageProfile] = attrs.Factory(dict)
    #: ``(scope, *scope ids, principal id)`` -> membership.
    members: dict[tuple[str, ...], Member] = attrs.Factory(dict)
    #: ``(queue id, fleet id)`` -> association.
    queue_fleets: dict[tuple[str, str], QueueFleetAssociation] = attrs.Factory(dict)
    #: ``(queue id, limit id)`` -> association.
    queue_limits: dict[tuple[str, str], QueueLimitAssociation] = attrs.Factory(dict)
    license_endpoints: dict[str, LicenseEndpoint] = attrs.Factory(dict)
    monitors: dict[str, Monitor] = attrs.Factory(dict)
    aggregations: dict[str, StatisticsAggregation] = attrs.Factory(dict)
    #: Resource ARN -> tags.
    tags: dict[str, dict[str, str]] = attrs.Factory(dict)
