"""Checking the SigV4 signature of a request, as AWS does, for a farm bound beyond loopback.

On loopback the mock farm takes any request (the documented default: only this
host can reach it). Bound to any other address it verifies every AWS request's
``Authorization`` header against the keys it knows: the ones it was given at
start, and the temporary ones it handed out itself (AssumeFleetRoleForWorker and
the like) until they expire. The canonical request, string to sign and signature
are botocore's own (``SigV4Auth``), computed over the request as it arrived, so a
request signed by boto3, the official agent or farmhand's client verifies, and
anything else is refused with the service's error codes.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from .._awskeys import FrozenCredentials
from ._apierrors import ApiError

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<date>\d{8})/(?P<region>[^/\s]+)/"
    r"(?P<service>[^/\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;_.-]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})"
)
#: How far a request's X-Amz-Date may be from the farm's clock (AWS allows 15 minutes).
MAX_SKEW = timedelta(minutes=15)

#: A secret access key for an access key id, or None for an unknown key.
SecretLookup = Callable[[str], "str | None"]


def _denied(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=403)


def verify_request(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    secret_for: SecretLookup,
    *,
    now: datetime | None = None,
) -> None:
    """Raise ``ApiError`` (403, the service's code) unless the request is signed with a
    known key and the signature matches."""
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        # Repeated headers are joined with commas, as SigV4's canonical form has them.
        fields[key] = f"{fields[key]},{text}" if key in fields else text
    authorization = fields.get("authorization")
    if authorization is None:
        raise _denied(
            "MissingAuthenticationTokenException", "Missing Authentication Token (unsigned)."
        )
    match = _AUTHORIZATION.fullmatch(authorization)
    if match is None:
        raise _denied("IncompleteSignatureException", "The Authorization header is malformed.")
    access_key = match["key"]
    secret = secret_for(access_key)
    if secret is None:
        raise _denied(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = fields.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _denied(
            "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
        ) from None
    if amz_date[:8] != match["date"]:
        raise _denied("InvalidSignatureException", "The credential scope date is not X-Amz-Date's.")
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_SKEW:
        raise _denied("InvalidSignatureException", "Signature expired: X-Amz-Date is too far off.")
    signed_names = match["signed"].split(";")
    missing = [name for name in signed_names if name not in fields]
    if missing:
        raise _denied("InvalidSignatureException", f"Signed header(s) missing: {missing}.")
    url = "http://" + fields.get("host", "localhost") + raw_path.decode("latin-1")
    if query_string:
        url += "?" + query_string.decode("latin-1")
    request = AWSRequest(
        method=method, url=url, data=body, headers={name: fields[name] for name in signed_names}
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        FrozenCredentials(access_key, secret, fields.get("x-amz-security-token")),
        match["service"],
        match["region"],
    )
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, match["signature"]):
        raise _denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
