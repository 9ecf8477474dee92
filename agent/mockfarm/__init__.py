"""farmhand's mock farm: a Deadline Cloud-compatible farm service on loopback.

It speaks the AWS Deadline Cloud API (rest-json, botocore's ``deadline``
2023-10-12 model) and CloudWatch Logs (JSON 1.1) on one server, so boto3's
clients, farmhand's agent and the official deadline-worker-agent work against
it unchanged. Embed it with ``open_mock_farm`` or run
``python -m agent mockfarm serve``. ``open_fake_imds`` serves a fake EC2
instance metadata service for spot and scale-in notices.
"""

from ._apierrors import ApiError as ApiError
from ._app import CallLog as CallLog
from ._app import CallRecord as CallRecord
from ._fakeimds import FakeImds as FakeImds
from ._fakeimds import open_fake_imds as open_fake_imds
from ._farm import Farm as Farm
from ._farm import FarmConfig as FarmConfig
from ._faults import FaultConfig as FaultConfig
from ._faults import OperationFaults as OperationFaults
from ._logstore import LogEvent as LogEvent
from ._logstore import LogStore as LogStore
from ._mockfarm import MockFarm as MockFarm
from ._mockfarm import MockFarmStatistics as MockFarmStatistics
from ._mockfarm import make_client as make_client
from ._mockfarm import open_mock_farm as open_mock_farm
from ._monitor import MonitorConfig as MonitorConfig
from ._records import FarmState as FarmState
from ._records import Job as Job
from ._records import Session as Session
from ._records import SessionAction as SessionAction
from ._records import Step as Step
from ._records import Task as Task
from ._records import WorkerRecord as WorkerRecord
from ._s3 import S3Config as S3Config
from ._s3 import S3Unavailable as S3Unavailable
