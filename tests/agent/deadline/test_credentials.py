"""The credential holder: swaps, farm credentials, refreshable credentials off the Trio thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest
import trio
from botocore.credentials import RefreshableCredentials

from agent._errors import CredentialsError
from agent.deadline import CredentialHolder, load_default_credentials, static_credentials


async def test_set_swaps_the_credentials() -> None:
    """set() replaces what frozen() hands out, and counts the swap."""
    holder = CredentialHolder(static_credentials("AK1", "SK1"))
    assert (await holder.frozen()).access_key == "AK1"
    holder.set(static_credentials("AK2", "SK2", "TOKEN2"))
    frozen = await holder.frozen()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AK2", "SK2", "TOKEN2")
    stats = holder.statistics()
    assert (stats.generation, stats.present, stats.expires_at) == (2, True, None)


async def test_cleared_holder_refuses_to_sign() -> None:
    """set(None) leaves nothing to sign with: CredentialsError."""
    holder = CredentialHolder(static_credentials("AK1", "SK1"))
    holder.set(None)
    with pytest.raises(CredentialsError, match="no credentials") as caught:
        await holder.frozen()
    assert not holder.statistics().present
    # The error names what to set.
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "AWS_PROFILE" in str(caught.value)


@pytest.mark.parametrize(
    "expiration",
    [
        "2026-11-24T17:00:00Z",
        "2026-11-24T17:00:00+00:00",
        datetime(2026, 11, 24, 17, 0, tzinfo=UTC),
        datetime(2026, 11, 24, 17, 0),
        1795539600,
    ],
    ids=["iso-z", "iso-offset", "aware", "naive-utc", "epoch"],
)
async def test_set_from_api_reads_farm_credentials(expiration: Any) -> None:
    """The credentials member of Assume*RoleForWorker becomes the signing credentials,
    with its expiration as an aware UTC datetime."""
    holder = CredentialHolder()
    holder.set_from_api(
        {
            "accessKeyId": "ASIAFLEET",
            "secretAccessKey": "fleet-secret",
            "sessionToken": "fleet-token",
            "expiration": expiration,
        }
    )
    frozen = await holder.frozen()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        "ASIAFLEET",
        "fleet-secret",
        "fleet-token",
    )
    assert holder.expires_at == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"secretAccessKey": "s"}, "accessKeyId"),
        ({"accessKeyId": "a", "secretAccessKey": "s", "expiration": "soon"}, "expiration"),
        ({"accessKeyId": "a", "secretAccessKey": "s", "expiration": [1]}, "expiration"),
    ],
)
def test_set_from_api_rejects_incomplete_credentials(payload: dict[str, Any], match: str) -> None:
    """Farm credentials without a key or with an unreadable expiration are a CredentialsError."""
    holder = CredentialHolder(static_credentials("AK1", "SK1"))
    with pytest.raises(CredentialsError, match=match):
        holder.set_from_api(payload)
    assert holder.statistics().generation == 1  # nothing was swapped in


def _refreshable(refresh: Any, *, expired: bool) -> RefreshableCredentials:
    expiry = datetime.now(UTC) + (timedelta(minutes=-1) if expired else timedelta(hours=1))
    return RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": "AK-OLD",
            "secret_key": "SK-OLD",
            "token": "TOKEN-OLD",
            "expiry_time": expiry.isoformat(),
        },
        refresh_using=refresh,
        method="test",
    )


def _fresh_metadata() -> dict[str, str]:
    return {
        "access_key": "AK-NEW",
        "secret_key": "SK-NEW",
        "token": "TOKEN-NEW",
        "expiry_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }


async def test_refreshable_credentials_refresh_in_a_thread() -> None:
    """An expired RefreshableCredentials refreshes once, in a worker thread, even when
    several requests want credentials at the same time."""
    threads: list[int] = []

    def refresh() -> dict[str, str]:
        threads.append(threading.get_ident())
        return _fresh_metadata()

    holder = CredentialHolder(_refreshable(refresh, expired=True))
    keys: list[str] = []

    async def sign() -> None:
        keys.append((await holder.frozen()).access_key)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(sign)
    assert keys == ["AK-NEW"] * 5
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert holder.statistics().refreshes == 1


async def test_fresh_refreshable_credentials_are_used_as_they_are() -> None:
    """A RefreshableCredentials far from expiry is read directly, with no refresh."""

    def refresh() -> dict[str, str]:
        raise AssertionError("no refresh expected")

    holder = CredentialHolder(_refreshable(refresh, expired=False))
    assert (await holder.frozen()).access_key == "AK-OLD"
    assert holder.statistics().refreshes == 0


async def test_failed_refresh_is_a_credentials_error() -> None:
    """A refresh that fails in the mandatory window becomes CredentialsError, chained."""

    def refresh() -> dict[str, str]:
        raise botocore.exceptions.CredentialRetrievalError(provider="test", error_msg="boom")

    holder = CredentialHolder(_refreshable(refresh, expired=True))
    with pytest.raises(CredentialsError, match="refreshing credentials failed") as caught:
        await holder.frozen()
    assert isinstance(caught.value.__cause__, botocore.exceptions.CredentialRetrievalError)


async def test_default_chain_finds_environment_credentials() -> None:
    """load_default_credentials resolves botocore's chain (here: the test environment's keys)."""
    credentials = await load_default_credentials()
    assert credentials is not None
    assert credentials.method == "env"
    assert credentials.get_frozen_credentials().access_key == "AKIDFARMHANDTEST"


async def test_default_chain_may_find_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no keys anywhere (and instance metadata disabled) the chain yields None."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert await load_default_credentials() is None


async def test_default_chain_errors_are_credentials_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken profile in the chain surfaces as CredentialsError."""
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(CredentialsError, match="default credentials"):
        await load_default_credentials()
