"""The gRPC CI agent's settings: command-line options, each with an environment variable.

Only the agent's own settings live here (where it listens, how many slots,
what tools it offers, where artifacts go). A job's configuration comes in its
request, as environment variables, never from the agent.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from agent import ConfigurationError
from agent.jobs import (
    FlagsAndEnvironment,
    at_least,
    existing_file,
    is_loopback,
    matching,
    parse_address,
    parse_bool,
    parse_float,
    parse_int,
    parse_path,
    parse_port,
    parse_str,
    parse_url,
)

DEFAULT_PORT = 50051
_ENV = "FARMHAND_GRPC_"
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")

#: A setting that cannot be used (one line): the agent's own error, so one handler
#: catches every setup problem.
ConfigError = ConfigurationError


@attrs.frozen
class AgentConfig:
    work_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    slots: int = 1
    #: tool name -> the command that prints its version (``xcodebuild -version``).
    tools: Mapping[str, str] = attrs.field(factory=dict)
    labels: frozenset[str] = frozenset()
    #: Seconds a stopped job gets between SIGTERM and SIGKILL, unless its request says.
    grace: float = 30.0
    #: Where logs and artifacts go: ``s3://BUCKET/PREFIX``; ``None``: kept on this machine.
    bucket: str | None = None
    prefix: str = ""
    s3_endpoint_url: str | None = None
    region: str | None = None
    #: Server TLS (PEM files); with ``tls_client_ca`` clients need certificates it signed.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: A bearer token every call but the health check must carry.
    token: str | None = attrs.field(default=None, repr=False)
    #: Listen beyond loopback with neither mutual TLS nor a token.
    insecure: bool = False
    #: Keep each job's working directory after the job (for debugging).
    keep_work_dirs: bool = False

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.bucket else str(self.work_dir / "logs")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", help=f"address to listen on ({_ENV}HOST; default 127.0.0.1)")
    add("--port", type=int, help=f"port ({_ENV}PORT; default {DEFAULT_PORT}; 0: any free one)")
    add("--slots", type=int, help=f"jobs at once ({_ENV}SLOTS; default 1)")
    add("--work-dir", help=f"jobs' working directories and logs ({_ENV}WORK_DIR; required)")
    add(
        "--tool",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help=f"a tool this agent offers and the command printing its version, e.g. "
        f"'xcode=xcodebuild -version' (repeatable; {_ENV}TOOLS: NAME=COMMAND;...)",
    )
    add(
        "--label",
        action="append",
        default=[],
        help=f"a label jobs may require (repeatable; {_ENV}LABELS: comma-separated)",
    )
    add("--grace", type=float, help=f"seconds from SIGTERM to SIGKILL ({_ENV}GRACE; default 30)")
    add(
        "--artifacts",
        metavar="s3://BUCKET/PREFIX",
        help=f"where logs and artifacts are uploaded ({_ENV}ARTIFACTS; default: kept locally). "
        "The endpoint and credentials are botocore's (AWS_ENDPOINT_URL_S3, AWS_PROFILE...)",
    )
    add("--s3-endpoint-url", help=f"S3 endpoint ({_ENV}S3_ENDPOINT_URL)")
    add("--region", help=f"S3 region ({_ENV}REGION; default botocore's)")
    add("--tls-cert", help=f"server certificate, PEM ({_ENV}TLS_CERT)")
    add("--tls-key", help=f"server private key, PEM ({_ENV}TLS_KEY)")
    add(
        "--tls-client-ca",
        help=f"CA bundle that client certificates must chain to: mutual TLS ({_ENV}TLS_CLIENT_CA)",
    )
    add(
        "--token-file",
        help=f"file holding the bearer token callers must send ({_ENV}TOKEN_FILE, or the token "
        f"itself in {_ENV}TOKEN)",
    )
    add(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback with neither mutual TLS nor a token",
    )
    add("--keep-work-dirs", action="store_true", default=None, help="keep jobs' directories")
    add("-v", "--verbose", action="store_true", help="log debug events")


def load_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> AgentConfig:
    """The settings from ``args``, else ``FARMHAND_GRPC_*`` variables; ``ConfigError``."""

    settings = FlagsAndEnvironment(args, environ, _ENV)
    work_dir = settings.required("work_dir", parse_path)
    port = settings.get("port", parse_port, DEFAULT_PORT)
    slots = settings.get("slots", at_least(parse_int, 1), 1)
    grace = settings.get("grace", at_least(parse_float, 0), 30.0)

    tools: dict[str, str] = {}
    entries = list(args.tool or []) or [
        e for e in (environ.get(_ENV + "TOOLS") or "").split(";") if e.strip()
    ]
    for entry in entries:
        name, sep, command = entry.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise ConfigError(f"--tool {entry!r}: expected NAME=COMMAND")
        tools[name.strip()] = command.strip()
    labels = list(args.label or []) or [
        e.strip() for e in (environ.get(_ENV + "LABELS") or "").split(",") if e.strip()
    ]
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise ConfigError(f"--label {label!r} is not a usable label")

    bucket, prefix = None, ""
    artifacts = settings.optional(
        "artifacts", matching(r"s3://[^/]+(/.*)?", "s3://BUCKET[/PREFIX]")
    )
    if artifacts:
        bucket, _, prefix = artifacts[5:].partition("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"

    token = environ.get(_ENV + "TOKEN") or None
    token_file = settings.optional("token_file", parse_path)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from exc
        if not token:
            raise ConfigError(f"--token-file {token_file} is empty")

    config = AgentConfig(
        work_dir=work_dir,
        host=settings.get("host", parse_address, "127.0.0.1"),
        port=port,
        slots=slots,
        tools=tools,
        labels=frozenset(labels),
        grace=grace,
        bucket=bucket,
        prefix=prefix,
        s3_endpoint_url=settings.optional("s3_endpoint_url", parse_url),
        region=settings.optional("region", parse_str),
        tls_cert=settings.optional("tls_cert", existing_file),
        tls_key=settings.optional("tls_key", existing_file),
        tls_client_ca=settings.optional("tls_client_ca", existing_file),
        token=token,
        insecure=settings.get("insecure", parse_bool, False),
        keep_work_dirs=bool(getattr(args, "keep_work_dirs", None)),
    )
    check(config)
    return config


def check(config: AgentConfig) -> None:
    """Refuse settings that would serve commands to anyone who can reach the port."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if not config.loopback and not (config.mutual_tls or config.token) and not config.insecure:
        raise ConfigError(
            f"refusing to listen on {config.host}: anyone who reaches it could run commands. "
            "Use mutual TLS (--tls-cert, --tls-key, --tls-client-ca) or a token (--token-file), "
            "or --insecure if the network is yours alone"
        )
