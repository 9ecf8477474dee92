"""Endpoint resolution follows botocore: env vars, the config file, then the region's default."""

from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest

from agent._errors import ConfigurationError
from agent.deadline import resolve_endpoint

SERVICE_ENV = {"deadline": "AWS_ENDPOINT_URL_DEADLINE", "logs": "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"}
CONFIG_KEY = {"deadline": "deadline", "logs": "cloudwatch_logs"}
DEFAULT = {
    "deadline": "https://deadline.us-west-2.amazonaws.com",
    "logs": "https://logs.us-west-2.amazonaws.com",
}


@pytest.fixture(autouse=True)
def _clean_endpoint_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DEADLINE",
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
        "AWS_ENDPOINT_URL_LOGS",
        "AWS_DISABLE_HOST_PREFIX_INJECTION",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str, *extra: str) -> None:
    path = tmp_path / "config"
    path.write_text(
        "\n".join(
            [
                "[default]",
                "region = us-west-2",
                "services = local",
                *extra,
                "",
                "[services local]",
                f"{CONFIG_KEY[service]} =",
                "  endpoint_url = http://127.0.0.1:3003",
                "",
            ]
        )
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))


@pytest.mark.parametrize("service", ["deadline", "logs"])
@pytest.mark.parametrize(
    ("service_env", "global_env", "config", "expected"),
    [
        (True, True, True, "http://127.0.0.1:3001"),
        (False, True, True, "http://127.0.0.1:3002"),
        (False, False, True, "http://127.0.0.1:3003"),
        (False, False, False, None),
    ],
    ids=["service-env", "global-env", "config-services", "regional-default"],
)
def test_endpoint_precedence(
    service: str,
    service_env: bool,
    global_env: bool,
    config: bool,
    expected: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's env var beats AWS_ENDPOINT_URL, which beats the config file's
    services section, which beats the regional default."""
    if service_env:
        monkeypatch.setenv(SERVICE_ENV[service], "http://127.0.0.1:3001")
    if global_env:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3002")
    if config:
        _config(tmp_path, monkeypatch, service)
    resolved = resolve_endpoint(service)
    assert resolved.url == (expected or DEFAULT[service])
    assert (resolved.service, resolved.region, resolved.inject_host_prefix) == (
        service,
        "us-west-2",
        True,
    )


def test_logs_ignores_aws_endpoint_url_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """CloudWatch Logs reads AWS_ENDPOINT_URL_CLOUDWATCH_LOGS, not AWS_ENDPOINT_URL_LOGS."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LOGS", "http://127.0.0.1:3009")
    assert resolve_endpoint("logs").url == DEFAULT["logs"]


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit endpoint_url and region override the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DEADLINE", "http://127.0.0.1:3001")
    resolved = resolve_endpoint(
        "deadline", endpoint_url="http://127.0.0.1:4000", region="eu-west-1"
    )
    assert (resolved.url, resolved.region) == ("http://127.0.0.1:4000", "eu-west-1")
    assert resolve_endpoint("deadline", region="cn-north-1").url == "http://127.0.0.1:3001"


def test_regional_default_follows_the_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default endpoint comes from botocore's data, partition suffix included."""
    assert resolve_endpoint("logs", region="cn-north-1").url == (
        "https://logs.cn-north-1.amazonaws.com.cn"
    )


def test_configured_endpoints_can_be_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true skips the env vars and the config file."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DEADLINE", "http://127.0.0.1:3001")
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert resolve_endpoint("deadline").url == DEFAULT["deadline"]


def test_host_prefix_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_DISABLE_HOST_PREFIX_INJECTION=true turns host prefixes off."""
    monkeypatch.setenv("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
    assert not resolve_endpoint("deadline").inject_host_prefix
    monkeypatch.setenv("AWS_DISABLE_HOST_PREFIX_INJECTION", "false")
    assert resolve_endpoint("deadline").inject_host_prefix


def test_host_prefix_disabled_by_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """disable_host_prefix_injection = true in the profile turns host prefixes off."""
    _config(tmp_path, monkeypatch, "deadline", "disable_host_prefix_injection = true")
    assert not resolve_endpoint("deadline").inject_host_prefix


def test_profile_of_the_given_session_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A botocore session with a profile resolves through that profile's settings."""
    path = tmp_path / "config"
    path.write_text("[profile farm]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:3005\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # the environment would beat the profile's region
    resolved = resolve_endpoint("deadline", session=botocore.session.Session(profile="farm"))
    assert (resolved.url, resolved.region) == ("http://127.0.0.1:3005", "eu-central-1")


def test_missing_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a region there is nothing to sign for: ConfigurationError."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigurationError, match="no AWS region"):
        resolve_endpoint("deadline")


def test_malformed_endpoint_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed endpoint URL is a ConfigurationError at startup."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DEADLINE", "not a url")
    with pytest.raises(ConfigurationError, match="deadline endpoint"):
        resolve_endpoint("deadline")
