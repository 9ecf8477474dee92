"""A push-model CI agent over gRPC: ``python -m agent grpc serve``.

A CI server pushes one job per ``Run`` call to the agent on a build machine
and reads its output live from the response stream; see ``ci_agent.proto``
and the README's "gRPC CI agent" section.
"""

from ._grpcconfig import AgentConfig as AgentConfig
from ._grpcconfig import ConfigError as ConfigError
from ._grpcconfig import load_config as load_config
from ._grpcjobs import AgentStatistics as AgentStatistics
from ._grpcjobs import CiAgent as CiAgent
from ._grpcserver import GrpcServer as GrpcServer
from ._grpcserver import ServingAgent as ServingAgent
from ._grpcserver import open_grpc_server as open_grpc_server
from ._grpcserver import serve as serve
from ._grpcstorage import Storage as Storage
