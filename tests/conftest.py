"""Test-wide safety rails.

Nothing a test starts may send a packet anywhere but loopback. botocore's
credential chain and region lookup reach for the EC2 metadata service
(169.254.169.254) when nothing else answers, so every test runs with fake static
credentials, a region and the metadata service disabled. Nothing a test starts
writes to the developer's data directory either (``mockfarm serve`` keeps its
state under ``$XDG_DATA_HOME`` by default): each test gets its own.
"""

from __future__ import annotations

import os

import pytest

_SAFE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDFARMHANDTEST",
    "AWS_SECRET_ACCESS_KEY": "farmhand-test-secret",
    "AWS_DEFAULT_REGION": "us-west-2",
    "AWS_EC2_METADATA_DISABLED": "true",
    "DEADLINE_CLOUD_TELEMETRY_OPT_OUT": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

# Set at import time too, so module-level code in tests and in the code under
# test never sees the developer's real AWS configuration.
for _name, _value in _SAFE_ENV.items():
    os.environ[_name] = _value
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _aws_safe_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name, value in _SAFE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``anyio`` runs on the backend anyio's plugin gives it: pytest-trio's
    trio_mode has marked every async test ``trio``, which would run it under Trio."""
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
