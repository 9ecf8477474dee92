"""A push-model CI agent over gRPC: ``python -m agent grpc serve``.

A CI server pushes one job per ``Run`` call to the agent on a build machine
and reads its output live from the response stream; see ``ci_agent.proto``
and the README's "gRPC CI agent" section.
"""

from ._config import AgentConfig as AgentConfig
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._jobs import AgentStatistics as AgentStatistics
from ._jobs import CiAgent as CiAgent
from ._server import GrpcServer as GrpcServer
from ._server import ServingAgent as ServingAgent
from ._server import open_grpc_server as open_grpc_server
from ._server import serve as serve
from ._storage import Storage as Storage
