"""Who may call the job server: a bearer token, TLS client certificates, or, on
loopback only unless told ``--insecure``, anyone.

The server (``serve``) takes ``--token-file`` (or ``FARMHAND_HTTPQUEUE_TOKEN``,
``FARMHAND_HTTPQUEUE_TOKEN_FILE``) and ``--tls-cert``/``--tls-key`` with
``--tls-client-ca`` for mutual TLS. Workers and the client commands send the
same token (from the same variables or ``--token-file``) and, for TLS, trust
``--ca-file`` and present ``--client-cert``/``--client-key``. The token is read
from a file or the environment, never from a command line, and never logged.
"""

from __future__ import annotations

import argparse
import hmac
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from hypercorn.config import Config as HypercornConfig

from agent import ConfigurationError
from agent.jobs import is_loopback

TOKEN_ENV = "FARMHAND_HTTPQUEUE_TOKEN"
TOKEN_FILE_ENV = "FARMHAND_HTTPQUEUE_TOKEN_FILE"
_CLIENT_ENV = {
    "ca_file": "FARMHAND_HTTPQUEUE_CA_FILE",
    "client_cert": "FARMHAND_HTTPQUEUE_CLIENT_CERT",
    "client_key": "FARMHAND_HTTPQUEUE_CLIENT_KEY",
}
#: Routes anyone may call: a load balancer's health check.
OPEN_PATHS = frozenset({"/api/health"})

#: A setting that cannot be used (one line): the agent's own error, so one handler
#: catches every setup problem.
ConfigError = ConfigurationError


def read_token(token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token: ``--token-file``, else ``FARMHAND_HTTPQUEUE_TOKEN_FILE``, else
    ``FARMHAND_HTTPQUEUE_TOKEN``; ``None`` when none is given. ``ConfigError`` for an
    unreadable or empty file."""
    where = "--token-file"
    if token_file is None and environ.get(TOKEN_FILE_ENV):
        token_file, where = environ[TOKEN_FILE_ENV], TOKEN_FILE_ENV
    if token_file is not None:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where} {token_file}: {exc.strerror or exc}") from exc
        if not token:
            raise ConfigError(f"{where} {token_file} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@attrs.frozen
class ServerTls:
    """The server's certificate and key; with ``client_ca``, callers must present a
    certificate that CA signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerTls | None:
        cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
        if (cert is None) != (key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if cert is None:
            if client_ca is not None:
                raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
            return None
        for flag, path in (
            ("--tls-cert", cert),
            ("--tls-key", key),
            ("--tls-client-ca", client_ca),
        ):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)

    def apply(self, config: HypercornConfig) -> None:
        config.certfile = str(self.cert)
        config.keyfile = str(self.key)
        if self.client_ca is not None:
            config.ca_certs = str(self.client_ca)
            config.verify_mode = ssl.CERT_REQUIRED


def check_exposure(host: str, *, token: str | None, tls: ServerTls | None, insecure: bool) -> None:
    """Refuse to serve the queue beyond loopback to anyone who can reach it."""
    guarded = token is not None or (tls is not None and tls.client_ca is not None)
    if not is_loopback(host) and not guarded and not insecure:
        raise ConfigError(
            f"refusing to serve on {host}: anyone who reaches it could submit jobs, which "
            f"run commands on the workers. Give a token (--token-file, or {TOKEN_ENV}) or "
            "mutual TLS (--tls-cert, --tls-key, --tls-client-ca), or --insecure if the "
            "network is yours alone"
        )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--token-file",
        help=f"file holding the bearer token every caller must send ({TOKEN_FILE_ENV}; or the "
        f"token itself in {TOKEN_ENV}); /api/health stays open",
    )
    add("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    add("--tls-key", help="the certificate's private key (PEM)")
    add("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    add(
        "--insecure",
        action="store_true",
        help="serve beyond loopback with neither a token nor mutual TLS",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--token-file",
        help=f"file holding the server's bearer token ({TOKEN_FILE_ENV}; or {TOKEN_ENV})",
    )
    add("--ca-file", help=f"CA bundle to trust for an https:// server ({_CLIENT_ENV['ca_file']})")
    add("--client-cert", help=f"client certificate, PEM ({_CLIENT_ENV['client_cert']})")
    add("--client-key", help=f"the client certificate's key, PEM ({_CLIENT_ENV['client_key']})")


@attrs.frozen
class ClientAuth:
    """What a worker or a client command presents to the server."""

    token: str | None = attrs.field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> ClientAuth:
        paths: dict[str, Path | None] = {}
        for name, variable in _CLIENT_ENV.items():
            value = getattr(args, name, None)
            where = "--" + name.replace("_", "-")
            if value is None and environ.get(variable):
                value, where = environ[variable], variable
            if value is not None and not Path(value).expanduser().is_file():
                raise ConfigError(f"{where} {value}: no such file")
            paths[name] = Path(value).expanduser() if value is not None else None
        if (paths["client_cert"] is None) != (paths["client_key"] is None):
            raise ConfigError("--client-cert and --client-key go together")
        return cls(read_token(getattr(args, "token_file", None), environ), **paths)

    def httpx_options(self) -> dict[str, Any]:
        """Keyword arguments for an ``httpx`` client that presents these."""
        options: dict[str, Any] = {}
        if self.token is not None:
            options["headers"] = {"authorization": f"Bearer {self.token}"}
        if self.ca_file is not None or self.client_cert is not None:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            if self.client_cert is not None and self.client_key is not None:
                context.load_cert_chain(str(self.client_cert), str(self.client_key))
            options["verify"] = context
        return options
