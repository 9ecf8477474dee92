"""The async AWS client layer: Deadline Cloud and CloudWatch Logs over httpx.

botocore's service models drive validation, serialization, host prefixes and
response parsing; botocore signs (SigV4); httpx sends, on the caller's
``httpx.AsyncClient``. Retries follow the worker API contract per operation.

Typical wiring, at the root::

    async with httpx.AsyncClient() as http:
        credentials = CredentialHolder(await load_default_credentials())
        deadline = DeadlineClient(http, resolve_endpoint("deadline"), credentials)
        logs = LogsClient(http, resolve_endpoint("logs"), credentials)
        worker = deadline.for_worker(farm_id, fleet_id, worker_id)
        credentials.set_from_api((await worker.assume_fleet_role_for_worker())["credentials"])
"""

from ._client import ATTEMPT_LIMIT as ATTEMPT_LIMIT
from ._client import ClientStatistics as ClientStatistics
from ._client import OperationStatistics as OperationStatistics
from ._client import ServiceClient as ServiceClient
from ._client import service_model as service_model
from ._credentials import CredentialHolder as CredentialHolder
from ._credentials import CredentialStatistics as CredentialStatistics
from ._credentials import load_default_credentials as load_default_credentials
from ._credentials import static_credentials as static_credentials
from ._deadline import QUEUE_CONFLICT_WINDOW as QUEUE_CONFLICT_WINDOW
from ._deadline import WORKER_POLICIES as WORKER_POLICIES
from ._deadline import DeadlineClient as DeadlineClient
from ._deadline import WorkerClient as WorkerClient
from ._deadline import entity_batch_limit as entity_batch_limit
from ._endpoints import ServiceEndpoint as ServiceEndpoint
from ._endpoints import resolve_endpoint as resolve_endpoint
from ._logs import LOGS_POLICY as LOGS_POLICY
from ._logs import LogsClient as LogsClient
from ._retry import DEFAULT_POLICY as DEFAULT_POLICY
from ._retry import NO_RETRIES as NO_RETRIES
from ._retry import RETRY as RETRY
from ._retry import Attempt as Attempt
from ._retry import RetryPolicy as RetryPolicy
from ._schedule import COMPLETED_STATUS as COMPLETED_STATUS
from ._schedule import MAX_PROGRESS_MESSAGE as MAX_PROGRESS_MESSAGE
from ._schedule import DeadlineSchedule as DeadlineSchedule
from ._schedule import WireSchedule as WireSchedule
from ._schedule import action_from_api as action_from_api
from ._schedule import assignment_from_api as assignment_from_api
from ._schedule import completed_counts as completed_counts
from ._schedule import exit_code_32 as exit_code_32
from ._schedule import schedule_from_api as schedule_from_api
from ._schedule import update_fields as update_fields
