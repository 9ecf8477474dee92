"""A scripted fake AWS service for the client tests, and tests that keep it strict.

``FakeService`` sits behind ``httpx.MockTransport``. For every request it
checks the SigV4 signature against the bytes actually sent (so a signature over
the wrong host, path or body fails the test), works out the operation from the
service model, decodes the parameters back out of the request (path, query
string, headers, JSON body), records all of it with the Trio time it arrived,
and answers with the next scripted response.
"""

from __future__ import annotations

import hmac
import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs
import httpx
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from agent.deadline import CredentialHolder, ServiceEndpoint, service_model, static_credentials

ACCESS_KEY = "AKIDFARMHANDFAKE"
SECRET_KEY = "fake-secret"
REGION = "us-west-2"
FARM = "farm-" + "a" * 32
FLEET = "fleet-" + "b" * 32
WORKER = "worker-" + "c" * 32
QUEUE = "queue-" + "d" * 32
BASE_URL = "http://127.0.0.1:18080"

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def endpoint(service: str = "deadline", *, inject_host_prefix: bool = True) -> ServiceEndpoint:
    return ServiceEndpoint(service, BASE_URL, REGION, inject_host_prefix)


def holder(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> CredentialHolder:
    return CredentialHolder(static_credentials(access_key, secret_key, "session-token"))


def verify_sigv4(
    request: httpx.Request, secrets: Mapping[str, str], *, service: str, region: str = REGION
) -> str:
    """Check the request's SigV4 signature over what was sent; return its access key."""
    match = _AUTH.fullmatch(request.headers["authorization"])
    assert match, request.headers["authorization"]
    assert match["region"] == region
    assert match["service"] == service
    amz_date = request.headers["x-amz-date"]
    assert amz_date.startswith(match["date"])
    names = match["signed"].split(";")
    assert "host" in names
    aws = AWSRequest(
        method=request.method,
        url=str(request.url),
        data=request.content,
        headers={name: request.headers[name] for name in names},
    )
    aws.context["timestamp"] = amz_date
    credentials = ReadOnlyCredentials(
        match["key"], secrets[match["key"]], request.headers.get("x-amz-security-token")
    )
    signer = SigV4Auth(credentials, service, region)
    assert signer.signed_headers(signer.headers_to_sign(aws)) == match["signed"]
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    assert hmac.compare_digest(expected, match["signature"]), "SigV4 signature mismatch"
    return match["key"]


@cache
def _routes(service: str) -> list[tuple[str, re.Pattern[str], str]]:
    model = service_model(service)
    routes = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        path = http["requestUri"].split("?")[0]
        pattern = re.sub(r"\\\{(\w+)\+?\\\}", r"(?P<\1>[^/]+)", re.escape(path))
        routes.append((http["method"], re.compile(pattern + "/?"), name))
    return routes


def decode(service: str, request: httpx.Request) -> tuple[str, dict[str, Any]]:
    """The operation a request calls and its parameters, read back from the wire."""
    model = service_model(service)
    body = json.loads(request.content) if request.content else {}
    if model.protocol == "json":
        target = request.headers["x-amz-target"]
        prefix, _, name = target.partition(".")
        assert prefix == model.metadata["targetPrefix"]
        assert request.headers["content-type"] == "application/x-amz-json-1.1"
        return name, body
    found = [
        (name, match)
        for method, pattern, name in _routes(service)
        if method == request.method and (match := pattern.fullmatch(request.url.path))
    ]
    if len(found) != 1:
        raise AssertionError(f"no {service} operation for {request.method} {request.url.path}")
    [(name, match)] = found
    params = {key: unquote(value) for key, value in match.groupdict().items()}
    shape = model.operation_model(name).input_shape
    query = dict(parse_qsl(request.url.query.decode()))
    for member, member_shape in shape.members.items():
        location = member_shape.serialization.get("location")
        wire_name = member_shape.serialization.get("name", member)
        if location == "querystring" and wire_name in query:
            params[member] = query[wire_name]
        elif location == "header" and wire_name in request.headers:
            params[member] = request.headers[wire_name]
    params.update(body)
    return name, params


@attrs.frozen
class Seen:
    """One request as the fake service saw it."""

    operation: str
    params: dict[str, Any]
    access_key: str
    host: str
    at: float
    headers: httpx.Headers


class FakeService:
    """A scripted AWS service: verifies, decodes and records requests; answers in order."""

    def __init__(self, service: str = "deadline", *, default: Answer | None = None) -> None:
        self.service = service
        self.secrets = {ACCESS_KEY: SECRET_KEY}
        self.script: deque[Answer] = deque()
        self.default: Answer = default if default is not None else ok({})
        self.seen: list[Seen] = []

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def handler(self, request: httpx.Request) -> httpx.Response:
        key = verify_sigv4(request, self.secrets, service=service_model(self.service).signing_name)
        operation, params = decode(self.service, request)
        self.seen.append(
            Seen(
                operation,
                params,
                key,
                request.headers["host"],
                trio.current_time(),
                request.headers,
            )
        )
        answer = self.script.popleft() if self.script else self.default
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def operations(self) -> list[str]:
        return [seen.operation for seen in self.seen]

    def times(self) -> list[float]:
        return [seen.at for seen in self.seen]


def ok(body: Mapping[str, Any], *, protocol: str = "rest-json") -> httpx.Response:
    content_type = "application/json" if protocol == "rest-json" else "application/x-amz-json-1.1"
    return httpx.Response(
        200,
        content=json.dumps(body).encode(),
        headers={"content-type": content_type, "x-amzn-requestid": "req-1"},
    )


def error(status: int, code: str, message: str = "nope", **fields: Any) -> httpx.Response:
    """A rest-json (Deadline) error: the shape name in ``x-amzn-ErrorType``, members in the body."""
    return httpx.Response(
        status,
        content=json.dumps({"message": message, **fields}).encode(),
        headers={
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/",
            "content-type": "application/json",
        },
    )


def json_error(code: str, message: str = "nope", *, status: int = 400) -> httpx.Response:
    """A JSON 1.1 (CloudWatch Logs) error: the shape name in ``__type``."""
    return httpx.Response(
        status,
        content=json.dumps({"__type": f"com.amazonaws.logs#{code}", "message": message}).encode(),
        headers={"content-type": "application/x-amz-json-1.1"},
    )


def conflict(reason: str, resource_id: str, status: str | None = None) -> httpx.Response:
    fields: dict[str, Any] = {"reason": reason, "resourceId": resource_id, "resourceType": "worker"}
    if status is not None:
        fields["context"] = {"status": status}
    return error(409, "ConflictException", "conflict", **fields)


# ----------------------------------------------------------------------- tests of the fake


def _signed_request(**changes: Any) -> httpx.Request:
    """A request signed the way the clients sign, optionally tampered with after signing."""
    aws = AWSRequest(
        method="POST",
        url=f"{BASE_URL}/2023-10-12/farms/{FARM}/fleets/{FLEET}/workers",
        data=b'{"hostProperties": {}}',
        headers={"Host": "127.0.0.1:18080", "Content-Type": "application/json"},
    )
    SigV4Auth(ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, None), "deadline", REGION).add_auth(aws)
    prepared = aws.prepare()
    headers = dict(prepared.headers)
    headers.update(changes.pop("headers", {}))
    return httpx.Request(
        prepared.method,
        changes.pop("url", prepared.url),
        headers=headers,
        content=changes.pop("content", prepared.body),
    )


def test_verify_sigv4_accepts_an_untouched_request() -> None:
    """A request signed by botocore passes the fake's signature check."""
    assert verify_sigv4(_signed_request(), {ACCESS_KEY: SECRET_KEY}, service="deadline") == (
        ACCESS_KEY
    )


@pytest.mark.parametrize(
    "change",
    [
        {"content": b'{"hostProperties": {"hostName": "x"}}'},
        {"url": f"{BASE_URL}/2023-10-12/farms/{FARM}/fleets/fleet-other/workers"},
        {"headers": {"Host": "scheduling.127.0.0.1:18080"}},
    ],
    ids=["body", "path", "host"],
)
def test_verify_sigv4_rejects_tampering(change: dict[str, Any]) -> None:
    """Changing the body, path or host after signing fails the signature check."""
    with pytest.raises(AssertionError, match="signature mismatch"):
        verify_sigv4(_signed_request(**change), {ACCESS_KEY: SECRET_KEY}, service="deadline")


def test_verify_sigv4_rejects_a_wrong_secret() -> None:
    """A signature made with another secret fails the check."""
    with pytest.raises(AssertionError, match="signature mismatch"):
        verify_sigv4(_signed_request(), {ACCESS_KEY: "other-secret"}, service="deadline")


def test_decode_reads_path_query_and_body() -> None:
    """decode finds the operation and reads its parameters back from the wire."""
    request = httpx.Request(
        "GET",
        f"{BASE_URL}/2023-10-12/farms/{FARM}/fleets/{FLEET}/workers/{WORKER}/queue-roles?queueId={QUEUE}",
    )
    assert decode("deadline", request) == (
        "AssumeQueueRoleForWorker",
        {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER, "queueId": QUEUE},
    )
