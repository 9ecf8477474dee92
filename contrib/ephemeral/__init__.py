"""Ephemeral CI runner: ``python -m agent ephemeral --config-parameter NAME``.

A one-job instance reads its job configuration from SSM Parameter Store,
fetches its bundle through a local cache, runs the job, sends a termination
message to SQS, cleans up and terminates itself. See the README section
"Ephemeral CI runner" for the configuration schema and the message.
"""

from ._bundle import BundleCache as BundleCache
from ._bundle import BundleError as BundleError
from ._ephemeralconfig import BundleRef as BundleRef
from ._ephemeralconfig import ConfigError as ConfigError
from ._ephemeralconfig import JobConfig as JobConfig
from ._ephemeralrun import EphemeralSettings as EphemeralSettings
from ._ephemeralrun import Report as Report
from ._ephemeralrun import run_ephemeral as run_ephemeral
