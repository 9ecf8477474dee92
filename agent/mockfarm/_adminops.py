"""Administrative handlers: budgets, limits, storage profiles, license endpoints, monitors,
members, tags, volumes.

They keep their records in ``FarmState.admin`` (``_adminrecords``) with the
service's simple semantics: ids in the service's formats, ``ResourceNotFound``
for unknown ids, ``ConflictException`` for duplicates, paginated lists. What
acts on scheduling (a budget that runs out stops its queue; a limit caps the
tasks that need its amount) is in ``_assocops``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._adminrecords import (
    Budget,
    LicenseEndpoint,
    Limit,
    Member,
    Monitor,
    StorageProfile,
)
from ._apierrors import conflict, not_found, validation
from ._farmbase import CREATED_BY, _paginate
from ._farmscheduler import utcnow
from ._policy import SchedulingPolicy
from ._records import new_hex

#: What ``ListAvailableMeteredProducts`` offers: (product id, family, vendor, port).
METERED_PRODUCTS = (
    ("3dsmax-2025", "3dsmax", "Autodesk", 2705),
    ("arnold-7", "arnold", "Autodesk", 2705),
    ("cinema4d-2025", "cinema4d", "Maxon", 7057),
    ("houdini-20", "houdini", "SideFX", 1715),
    ("katana-7", "katana", "Foundry", 4101),
    ("keyshot-2024", "keyshot", "Luxion", 2703),
    ("maya-2025", "maya", "Autodesk", 2705),
    ("nuke-15", "nuke", "Foundry", 6101),
    ("redshift-3", "redshift", "Maxon", 7054),
    ("vray-6", "vray", "ChaosGroup", 30305),
)
_PRODUCTS = {product[0]: product for product in METERED_PRODUCTS}


def _product(product_id: str) -> dict[str, Any]:
    pid, family, vendor, port = _PRODUCTS[product_id]
    return {"productId": pid, "family": family, "vendor": vendor, "port": port}


class AdminOperations(SchedulingPolicy):
    """Budgets, limits, storage profiles, license endpoints, monitors, members, tags."""

    # ------------------------------------------------------------ budgets

    def CreateBudget(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        queue_id = p["usageTrackingResource"].get("queueId")
        if not queue_id:
            raise validation("usageTrackingResource needs a queueId.")
        self.queue(farm.farm_id, queue_id)
        budget = Budget(
            budget_id=f"budget-{new_hex()}",
            farm_id=farm.farm_id,
            display_name=p["displayName"],
            description=p.get("description"),
            queue_id=queue_id,
            approximate_dollar_limit=p["approximateDollarLimit"],
            actions=[dict(a) for a in p["actions"]],
            schedule=dict(p["schedule"]),
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        self.state.admin.budgets[budget.budget_id] = budget
        self._tag(self.arn("budget", farm.farm_id, budget.budget_id), p.get("tags"))
        return {"budgetId": budget.budget_id}

    def _budget(self, p: Mapping[str, Any]) -> Budget:
        self.farm(p["farmId"])
        found = self.state.admin.budgets.get(p["budgetId"])
        if found is None or found.farm_id != p["farmId"]:
            raise not_found("budget", p["budgetId"])
        return found

    def _budget_summary(self, budget: Budget) -> dict[str, Any]:
        return {
            "budgetId": budget.budget_id,
            "usageTrackingResource": {"queueId": budget.queue_id},
            "status": budget.status,
            "displayName": budget.display_name,
            "approximateDollarLimit": budget.approximate_dollar_limit,
            "usages": {"approximateDollarUsage": self.budget_usage(budget)},
            "createdBy": budget.created_by,
            "createdAt": budget.created_at,
            "updatedBy": budget.updated_by,
            "updatedAt": budget.updated_at,
            "description": budget.description,
        }

    def GetBudget(self, p: dict[str, Any]) -> Mapping[str, Any]:
        budget = self._budget(p)
        return {
            **self._budget_summary(budget),
            "actions": budget.actions,
            "schedule": budget.schedule,
            "queueStoppedAt": budget.queue_stopped_at,
        }

    def ListBudgets(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        budgets = [
            b
            for b in self.state.admin.budgets.values()
            if b.farm_id == p["farmId"] and p.get("status") in (None, b.status)
        ]
        page, token = _paginate(budgets, p)
        return {"budgets": [self._budget_summary(b) for b in page], "nextToken": token}

    def UpdateBudget(self, p: dict[str, Any]) -> Mapping[str, Any]:
        budget = self._budget(p)
        for key, attribute in (
            ("displayName", "display_name"),
            ("description", "description"),
            ("status", "status"),
            ("approximateDollarLimit", "approximate_dollar_limit"),
            ("schedule", "schedule"),
        ):
            if key in p:
                setattr(budget, attribute, p[key])
        removed = {(a["type"], a["thresholdPercentage"]) for a in p.get("actionsToRemove", ())}
        budget.actions = [
            a for a in budget.actions if (a["type"], a["thresholdPercentage"]) not in removed
        ] + [dict(a) for a in p.get("actionsToAdd", ())]
        budget.updated_at, budget.updated_by = utcnow(), CREATED_BY
        if budget.status != "ACTIVE" or self.budget_usage(budget) < budget.approximate_dollar_limit:
            budget.queue_stopped_at = None
        return {}

    def DeleteBudget(self, p: dict[str, Any]) -> Mapping[str, Any]:
        budget = self._budget(p)
        del self.state.admin.budgets[budget.budget_id]
        return {}

    # ------------------------------------------------------------ limits

    def CreateLimit(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        name = p["amountRequirementName"]
        if any(
            limit.farm_id == farm.farm_id and limit.amount_requirement_name == name
            for limit in self.state.admin.limits.values()
        ):
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "limit",
                name,
                f"The farm already has a limit for the amount {name!r}.",
            )
        limit = Limit(
            limit_id=f"limit-{new_hex()}",
            farm_id=farm.farm_id,
            display_name=p["displayName"],
            description=p.get("description"),
            amount_requirement_name=name,
            max_count=p["maxCount"],
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        self.state.admin.limits[limit.limit_id] = limit
        return {"limitId": limit.limit_id}

    def limit(self, farm_id: str, limit_id: str) -> Limit:
        self.farm(farm_id)
        found = self.state.admin.limits.get(limit_id)
        if found is None or found.farm_id != farm_id:
            raise not_found("limit", limit_id)
        return found

    def _limit_summary(self, limit: Limit) -> dict[str, Any]:
        return {
            "farmId": limit.farm_id,
            "limitId": limit.limit_id,
            "currentCount": self.limit_usage(limit),
            "createdAt": limit.created_at,
            "createdBy": limit.created_by,
            "updatedAt": limit.updated_at,
            "updatedBy": limit.updated_by,
            "displayName": limit.display_name,
            "amountRequirementName": limit.amount_requirement_name,
            "maxCount": limit.max_count,
        }

    def GetLimit(self, p: dict[str, Any]) -> Mapping[str, Any]:
        limit = self.limit(p["farmId"], p["limitId"])
        return {**self._limit_summary(limit), "description": limit.description}

    def ListLimits(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        limits = [lim for lim in self.state.admin.limits.values() if lim.farm_id == p["farmId"]]
        page, token = _paginate(limits, p)
        return {"limits": [self._limit_summary(lim) for lim in page], "nextToken": token}

    def UpdateLimit(self, p: dict[str, Any]) -> Mapping[str, Any]:
        limit = self.limit(p["farmId"], p["limitId"])
        for key, attribute in (
            ("displayName", "display_name"),
            ("description", "description"),
            ("maxCount", "max_count"),
        ):
            if key in p:
                setattr(limit, attribute, p[key])
        limit.updated_at, limit.updated_by = utcnow(), CREATED_BY
        return {}

    def DeleteLimit(self, p: dict[str, Any]) -> Mapping[str, Any]:
        limit = self.limit(p["farmId"], p["limitId"])
        for key in [k for k in self.state.admin.queue_limits if k[1] == limit.limit_id]:
            del self.state.admin.queue_limits[key]
        del self.state.admin.limits[limit.limit_id]
        return {}

    # ------------------------------------------------------------ storage profiles

    def CreateStorageProfile(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        profile = StorageProfile(
            storage_profile_id=f"sp-{new_hex()}",
            farm_id=farm.farm_id,
            display_name=p["displayName"],
            os_family=p["osFamily"],
            file_system_locations=[dict(loc) for loc in p.get("fileSystemLocations", ())],
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        self.state.admin.storage_profiles[profile.storage_profile_id] = profile
        return {"storageProfileId": profile.storage_profile_id}

    def storage_profile(self, farm_id: str, profile_id: str) -> StorageProfile:
        self.farm(farm_id)
        found = self.state.admin.storage_profiles.get(profile_id)
        if found is None or found.farm_id != farm_id:
            raise not_found("storage-profile", profile_id)
        return found

    @staticmethod
    def _profile_summary(profile: StorageProfile) -> dict[str, Any]:
        return {
            "storageProfileId": profile.storage_profile_id,
            "displayName": profile.display_name,
            "osFamily": profile.os_family,
        }

    def GetStorageProfile(self, p: dict[str, Any]) -> Mapping[str, Any]:
        profile = self.storage_profile(p["farmId"], p["storageProfileId"])
        return {
            **self._profile_summary(profile),
            "createdAt": profile.created_at,
            "createdBy": profile.created_by,
            "updatedAt": profile.updated_at,
            "updatedBy": profile.updated_by,
            "fileSystemLocations": profile.file_system_locations,
        }

    def ListStorageProfiles(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        profiles = [
            sp for sp in self.state.admin.storage_profiles.values() if sp.farm_id == p["farmId"]
        ]
        page, token = _paginate(profiles, p)
        return {"storageProfiles": [self._profile_summary(sp) for sp in page], "nextToken": token}

    def UpdateStorageProfile(self, p: dict[str, Any]) -> Mapping[str, Any]:
        profile = self.storage_profile(p["farmId"], p["storageProfileId"])
        if "displayName" in p:
            profile.display_name = p["displayName"]
        if "osFamily" in p:
            profile.os_family = p["osFamily"]
        removed = [dict(loc) for loc in p.get("fileSystemLocationsToRemove", ())]
        profile.file_system_locations = [
            loc for loc in profile.file_system_locations if loc not in removed
        ] + [dict(loc) for loc in p.get("fileSystemLocationsToAdd", ())]
        profile.updated_at, profile.updated_by = utcnow(), CREATED_BY
        return {}

    def DeleteStorageProfile(self, p: dict[str, Any]) -> Mapping[str, Any]:
        profile = self.storage_profile(p["farmId"], p["storageProfileId"])
        for queue in self.state.queues.values():
            if profile.storage_profile_id in queue.allowed_storage_profile_ids:
                queue.allowed_storage_profile_ids.remove(profile.storage_profile_id)
        del self.state.admin.storage_profiles[profile.storage_profile_id]
        return {}

    def _queue_profile(self, p: Mapping[str, Any]) -> StorageProfile:
        queue = self.queue(p["farmId"], p["queueId"])
        profile = self.storage_profile(p["farmId"], p["storageProfileId"])
        if profile.storage_profile_id not in queue.allowed_storage_profile_ids:
            raise not_found(
                "storage-profile",
                profile.storage_profile_id,
                f"The storage profile {profile.storage_profile_id!r} is not allowed in "
                f"queue {queue.queue_id!r}.",
            )
        return profile

    def GetStorageProfileForQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        profile = self._queue_profile(p)
        return {
            **self._profile_summary(profile),
            "fileSystemLocations": profile.file_system_locations,
        }

    def ListStorageProfilesForQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        profiles = [
            self.state.admin.storage_profiles[sp_id]
            for sp_id in queue.allowed_storage_profile_ids
            if sp_id in self.state.admin.storage_profiles
        ]
        page, token = _paginate(profiles, p)
        return {"storageProfiles": [self._profile_summary(sp) for sp in page], "nextToken": token}

    # ------------------------------------------------------------ license endpoints

    def CreateLicenseEndpoint(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = LicenseEndpoint(
            license_endpoint_id=f"le-{new_hex()}",
            vpc_id=p["vpcId"],
            subnet_ids=list(p["subnetIds"]),
            security_group_ids=list(p["securityGroupIds"]),
            created_at=utcnow(),
        )
        self.state.admin.license_endpoints[endpoint.license_endpoint_id] = endpoint
        self._tag(self.arn("license-endpoint", endpoint.license_endpoint_id), p.get("tags"))
        return {"licenseEndpointId": endpoint.license_endpoint_id}

    def _license_endpoint(self, endpoint_id: str) -> LicenseEndpoint:
        found = self.state.admin.license_endpoints.get(endpoint_id)
        if found is None:
            raise not_found("license-endpoint", endpoint_id)
        return found

    def GetLicenseEndpoint(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = self._license_endpoint(p["licenseEndpointId"])
        return {
            "licenseEndpointId": endpoint.license_endpoint_id,
            "status": "READY",
            "statusMessage": "The license endpoint is ready.",
            "vpcId": endpoint.vpc_id,
            "dnsName": f"{endpoint.license_endpoint_id}.vpce.{self.config.region}.vpce.amazonaws.com",
            "subnetIds": endpoint.subnet_ids,
            "securityGroupIds": endpoint.security_group_ids,
        }

    def ListLicenseEndpoints(self, p: dict[str, Any]) -> Mapping[str, Any]:
        page, token = _paginate(list(self.state.admin.license_endpoints.values()), p)
        return {
            "licenseEndpoints": [
                {
                    "licenseEndpointId": e.license_endpoint_id,
                    "status": "READY",
                    "statusMessage": "The license endpoint is ready.",
                    "vpcId": e.vpc_id,
                }
                for e in page
            ],
            "nextToken": token,
        }

    def DeleteLicenseEndpoint(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = self._license_endpoint(p["licenseEndpointId"])
        del self.state.admin.license_endpoints[endpoint.license_endpoint_id]
        return {}

    def ListAvailableMeteredProducts(self, p: dict[str, Any]) -> Mapping[str, Any]:
        page, token = _paginate(list(_PRODUCTS), p)
        return {"meteredProducts": [_product(pid) for pid in page], "nextToken": token}

    def ListMeteredProducts(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = self._license_endpoint(p["licenseEndpointId"])
        page, token = _paginate(endpoint.products, p)
        return {"meteredProducts": [_product(pid) for pid in page], "nextToken": token}

    def PutMeteredProduct(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = self._license_endpoint(p["licenseEndpointId"])
        if p["productId"] not in _PRODUCTS:
            raise not_found("metered-product", p["productId"])
        if p["productId"] not in endpoint.products:
            endpoint.products.append(p["productId"])
        return {}

    def DeleteMeteredProduct(self, p: dict[str, Any]) -> Mapping[str, Any]:
        endpoint = self._license_endpoint(p["licenseEndpointId"])
        if p["productId"] not in endpoint.products:
            raise not_found("metered-product", p["productId"])
        endpoint.products.remove(p["productId"])
        return {}

    # ------------------------------------------------------------ monitors

    def CreateMonitor(self, p: dict[str, Any]) -> Mapping[str, Any]:
        subdomain = p["subdomain"]
        if any(m.subdomain == subdomain for m in self.state.admin.monitors.values()):
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "monitor",
                subdomain,
                f"The subdomain {subdomain!r} is taken.",
            )
        monitor = Monitor(
            monitor_id=f"monitor-{new_hex()}",
            display_name=p["displayName"],
            subdomain=subdomain,
            role_arn=p["roleArn"],
            identity_center_instance_arn=p["identityCenterInstanceArn"],
            identity_center_region=p.get("identityCenterRegion"),
            identity_center_application_arn=(
                f"arn:aws:sso::{self.config.account_id}:application/"
                f"ssoins-{new_hex()[:16]}/apl-{new_hex()[:16]}"
            ),
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        self.state.admin.monitors[monitor.monitor_id] = monitor
        self._tag(self.arn("monitor", monitor.monitor_id), p.get("tags"))
        return {
            "monitorId": monitor.monitor_id,
            "identityCenterApplicationArn": monitor.identity_center_application_arn,
        }

    def _monitor(self, monitor_id: str) -> Monitor:
        found = self.state.admin.monitors.get(monitor_id)
        if found is None:
            raise not_found("monitor", monitor_id)
        return found

    def _monitor_summary(self, m: Monitor) -> dict[str, Any]:
        return {
            "monitorId": m.monitor_id,
            "displayName": m.display_name,
            "subdomain": m.subdomain,
            "url": f"https://{m.subdomain}.{self.config.region}.deadlinecloud.amazonaws.com",
            "roleArn": m.role_arn,
            "identityCenterInstanceArn": m.identity_center_instance_arn,
            "identityCenterRegion": m.identity_center_region,
            "identityCenterApplicationArn": m.identity_center_application_arn,
            "createdAt": m.created_at,
            "createdBy": m.created_by,
            "updatedAt": m.updated_at,
            "updatedBy": m.updated_by,
        }

    def GetMonitor(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._monitor_summary(self._monitor(p["monitorId"]))

    def ListMonitors(self, p: dict[str, Any]) -> Mapping[str, Any]:
        page, token = _paginate(list(self.state.admin.monitors.values()), p)
        return {"monitors": [self._monitor_summary(m) for m in page], "nextToken": token}

    def UpdateMonitor(self, p: dict[str, Any]) -> Mapping[str, Any]:
        monitor = self._monitor(p["monitorId"])
        for key, attribute in (
            ("subdomain", "subdomain"),
            ("displayName", "display_name"),
            ("roleArn", "role_arn"),
        ):
            if key in p:
                setattr(monitor, attribute, p[key])
        monitor.updated_at, monitor.updated_by = utcnow(), CREATED_BY
        return {}

    def DeleteMonitor(self, p: dict[str, Any]) -> Mapping[str, Any]:
        monitor = self._monitor(p["monitorId"])
        del self.state.admin.monitors[monitor.monitor_id]
        return {}

    def GetMonitorSettings(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return {"settings": self._monitor(p["monitorId"]).settings}

    def UpdateMonitorSettings(self, p: dict[str, Any]) -> Mapping[str, Any]:
        monitor = self._monitor(p["monitorId"])
        for key, value in p["settings"].items():
            if value == "":
                monitor.settings.pop(key, None)  # an empty value removes the setting
            else:
                monitor.settings[key] = value
        return {}

    # ------------------------------------------------------------ members

    def _scope(self, scope: str, p: Mapping[str, Any]) -> tuple[str, ...]:
        """The ids of a membership scope (checked to exist)."""
        if scope == "farm":
            return (self.farm(p["farmId"]).farm_id,)
        if scope == "fleet":
            return (p["farmId"], self.fleet(p["farmId"], p["fleetId"]).fleet_id)
        if scope == "queue":
            return (p["farmId"], self.queue(p["farmId"], p["queueId"]).queue_id)
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        return (p["farmId"], p["queueId"], job.job_id)

    def _associate(self, scope: str, p: Mapping[str, Any]) -> Mapping[str, Any]:
        ids = self._scope(scope, p)
        self.state.admin.members[(scope, *ids, p["principalId"])] = Member(
            scope=scope,
            scope_ids=ids,
            principal_id=p["principalId"],
            principal_type=p["principalType"],
            identity_store_id=p["identityStoreId"],
            membership_level=p["membershipLevel"],
        )
        return {}

    def _disassociate(self, scope: str, p: Mapping[str, Any]) -> Mapping[str, Any]:
        ids = self._scope(scope, p)
        if self.state.admin.members.pop((scope, *ids, p["principalId"]), None) is None:
            raise not_found("member", p["principalId"])
        return {}

    def _members(self, scope: str, p: Mapping[str, Any]) -> Mapping[str, Any]:
        ids = self._scope(scope, p)
        found = [
            m for m in self.state.admin.members.values() if m.scope == scope and m.scope_ids == ids
        ]
        page, token = _paginate(found, p)
        return {"members": [_member_wire(m) for m in page], "nextToken": token}

    def AssociateMemberToFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._associate("farm", p)

    def AssociateMemberToFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._associate("fleet", p)

    def AssociateMemberToQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._associate("queue", p)

    def AssociateMemberToJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._associate("job", p)

    def DisassociateMemberFromFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._disassociate("farm", p)

    def DisassociateMemberFromFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._disassociate("fleet", p)

    def DisassociateMemberFromQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._disassociate("queue", p)

    def DisassociateMemberFromJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._disassociate("job", p)

    def ListFarmMembers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._members("farm", p)

    def ListFleetMembers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._members("fleet", p)

    def ListQueueMembers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._members("queue", p)

    def ListJobMembers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._members("job", p)

    def ListMemberships(self, p: dict[str, Any]) -> Mapping[str, Any]:
        kinds = set(p.get("resourceTypes") or ("FARM", "FLEET", "QUEUE", "JOB"))
        found = [
            m
            for m in self.state.admin.members.values()
            if m.principal_id == p["principalId"]
            and m.scope.upper() in kinds
            and p.get("identityStoreId") in (None, m.identity_store_id)
        ]
        page, token = _paginate(found, p)
        return {
            "memberships": [{m.scope: _member_wire(m)} for m in page],
            "nextToken": token,
        }

    # ------------------------------------------------------------ tags

    def arn(self, kind: str, *ids: str) -> str:
        """The ARN of a resource: ``arn(kind, farm id, ..., id)``."""
        return f"arn:aws:deadline:{self.config.region}:{self.config.account_id}:" + "/".join(
            f"{k}/{i}" for k, i in zip(_ARN_PATH[kind], ids, strict=True)
        )

    def _tag(self, arn: str, tags: Mapping[str, str] | None) -> None:
        if tags:
            self.state.admin.tags.setdefault(arn, {}).update(tags)

    def _tagged(self, arn: str) -> str:
        """The resource's ARN if it names something that exists (else ResourceNotFound)."""
        resource = arn.rpartition(":")[2]
        parts = resource.split("/")
        ids = parts[1::2]
        known = (
            self.state.farms,
            self.state.fleets,
            self.state.queues,
            self.state.jobs,
            self.state.admin.budgets,
            self.state.admin.limits,
            self.state.admin.storage_profiles,
            self.state.admin.license_endpoints,
            self.state.admin.monitors,
        )
        if not arn.startswith("arn:aws:deadline:") or not ids:
            raise validation(f"{arn!r} is not a Deadline Cloud resource ARN.")
        if not any(ids[-1] in table for table in known):
            raise not_found("resource", arn)
        return arn

    def TagResource(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self._tag(self._tagged(p["resourceArn"]), p.get("tags") or {})
        return {}

    def UntagResource(self, p: dict[str, Any]) -> Mapping[str, Any]:
        tags = self.state.admin.tags.get(self._tagged(p["resourceArn"]), {})
        for key in p["tagKeys"]:
            tags.pop(key, None)
        return {}

    def ListTagsForResource(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return {"tags": dict(self.state.admin.tags.get(self._tagged(p["resourceArn"]), {}))}

    # ------------------------------------------------------------ volumes

    # Persistent volumes belong to service-managed fleets; the mock farm's fleets are
    # customer-managed, so none exists.

    def ListVolumes(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.fleet(p["farmId"], p["fleetId"])
        return {"volumes": [], "nextToken": None}

    def GetVolume(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.fleet(p["farmId"], p["fleetId"])
        raise not_found("volume", p["volumeId"])

    def DeleteVolume(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.fleet(p["farmId"], p["fleetId"])
        raise not_found("volume", p["volumeId"])


_SCOPE_IDS = {
    "farm": ("farmId",),
    "fleet": ("farmId", "fleetId"),
    "queue": ("farmId", "queueId"),
    "job": ("farmId", "queueId", "jobId"),
}


def _member_wire(member: Member) -> dict[str, Any]:
    return {
        **dict(zip(_SCOPE_IDS[member.scope], member.scope_ids, strict=True)),
        "principalId": member.principal_id,
        "principalType": member.principal_type,
        "identityStoreId": member.identity_store_id,
        "membershipLevel": member.membership_level,
    }


_ARN_PATH: dict[str, tuple[str, ...]] = {
    "farm": ("farm",),
    "fleet": ("farm", "fleet"),
    "queue": ("farm", "queue"),
    "job": ("farm", "queue", "job"),
    "budget": ("farm", "budget"),
    "limit": ("farm", "limit"),
    "license-endpoint": ("license-endpoint",),
    "monitor": ("monitor",),
}
