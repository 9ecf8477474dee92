"""One-shot job records: ``python -m agent oneshot --table T --job-id ID``.

A container task started per job (Fargate, Batch, a Kubernetes Job) loads its
job record from DynamoDB, claims it, runs its work through the session runner,
and writes how it went back to the record. See the README section "One-shot
job records" for the record schema and the exit statuses.
"""

from ._oneshotrun import OneshotSettings as OneshotSettings
from ._oneshotrun import run_oneshot as run_oneshot
from ._record import RUN_MODES as RUN_MODES
from ._record import JobRecord as JobRecord
from ._record import RecordError as RecordError
from ._record import Work as Work
from ._record import resolve_work as resolve_work
from ._table import JobTable as JobTable
