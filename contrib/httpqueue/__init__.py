"""The HTTP job queue adapter: a worker for a small job server, and that server.

``python -m agent httpqueue worker`` takes one job at a time (per slot) from a
job server over HTTP and runs it with farmhand's one-job API;
``python -m agent httpqueue serve`` is the reference server it talks to. The
protocol is in the README ("HTTP job queue").
"""

from ._auth import ClientAuth as ClientAuth
from ._auth import ConfigError as ConfigError
from ._auth import ServerTls as ServerTls
from ._protocol import Capabilities as Capabilities
from ._protocol import JobOffer as JobOffer
from ._protocol import ProtocolError as ProtocolError
from ._protocol import Requirements as Requirements
from ._queue import JobQueue as JobQueue
from ._queue import QueueConfig as QueueConfig
from ._queueclient import QueueClient as QueueClient
from ._queueclient import ServerError as ServerError
from ._queueclient import ServerRefused as ServerRefused
from ._queueclient import ServerUnavailable as ServerUnavailable
from ._queueconfig import WorkerConfig as WorkerConfig
from ._queueconfig import load_config as load_config
from ._queueserver import JobServer as JobServer
from ._queueserver import open_job_server as open_job_server
from ._queueworker import QueueWorker as QueueWorker
from ._store import JsonStore as JsonStore
from ._store import MemoryStore as MemoryStore
from ._store import SqliteStore as SqliteStore
from ._store import open_store as open_store
