"""Regenerate the Python stubs from ``ci_agent.proto``: ``python -m contrib.grpcagent.regenerate``.

Needs grpcio-tools (in the ``test`` extra). Run from anywhere; the stubs are
written next to the .proto, importable as ``contrib.grpcagent.ci_agent_pb2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PROTO = "contrib/grpcagent/ci_agent.proto"


def main() -> int:
    from grpc_tools import protoc

    return int(
        protoc.main(
            [
                "protoc",
                f"-I{ROOT}",
                f"--python_out={ROOT}",
                f"--pyi_out={ROOT}",
                f"--grpc_python_out={ROOT}",
                str(ROOT / PROTO),
            ]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
