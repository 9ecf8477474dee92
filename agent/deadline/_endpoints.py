"""Where a service lives: endpoint URL, region and host-prefix setting, as boto3 resolves them.

The resolution is botocore's own, so farmhand follows the same settings as the
AWS SDKs and the official worker agent:

1. an explicit ``endpoint_url`` argument;
2. the service's environment variable, ``AWS_ENDPOINT_URL_<SERVICE_ID>``
   (``AWS_ENDPOINT_URL_DEADLINE``, ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS``);
3. the global ``AWS_ENDPOINT_URL``;
4. ``endpoint_url`` in the profile's ``services`` section of the AWS config file,
   then the profile's own ``endpoint_url``;
5. the regional endpoint, e.g. ``https://deadline.us-west-2.amazonaws.com``.

``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` (or ``ignore_configured_endpoint_urls``)
skips 2-4. Host prefixes (``scheduling.`` for the worker operations) are
injected unless ``AWS_DISABLE_HOST_PREFIX_INJECTION=true`` or the config file's
``disable_host_prefix_injection`` turns them off.

To get exactly botocore's answer we build one botocore client per service, once,
at startup, and read its ``meta``. That client is unsigned, so building it never
walks the credential chain (no instance-metadata lookups); it sends nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import botocore
import botocore.config
import botocore.exceptions

from .._errors import ConfigurationError

if TYPE_CHECKING:
    import botocore.session


@attrs.frozen
class ServiceEndpoint:
    """A resolved endpoint: share one per service and process."""

    #: botocore's service name: ``deadline``, ``logs``.
    service: str
    #: Scheme, host, optional port and path, without the host prefix.
    url: str
    #: The region requests are signed for.
    region: str
    #: Whether operations with an ``endpoint.hostPrefix`` get it prepended to the host.
    inject_host_prefix: bool = True


def resolve_endpoint(
    service: str,
    *,
    session: botocore.session.Session | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> ServiceEndpoint:
    """Resolve ``service``'s endpoint as ``boto3.client(service)`` would.

    ``session`` supplies the profile, config file and environment (a fresh
    ``botocore.session.Session()`` when omitted); ``region`` and
    ``endpoint_url`` override what it says. This reads the AWS config file, so
    call it once at startup (or in a thread), not per request.
    """
    if session is None:
        # Imported here: a session's imports (clients, waiters, docs) are for this alone.
        from botocore.session import Session

        session = Session()
    try:
        region = region or session.get_config_variable("region")
        if not region:
            raise ConfigurationError(
                f"no AWS region for {service}: set AWS_DEFAULT_REGION or a profile's region"
            )
        client = session.create_client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            # Unsigned: building the client must not resolve credentials, which
            # could otherwise reach for the instance-metadata service.
            config=botocore.config.Config(signature_version=botocore.UNSIGNED),
        )
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigurationError(f"cannot resolve the {service} endpoint: {exc}") from exc
    except ValueError as exc:  # botocore rejects a malformed endpoint_url with ValueError
        raise ConfigurationError(f"cannot resolve the {service} endpoint: {exc}") from exc
    try:
        return ServiceEndpoint(
            service=service,
            url=client.meta.endpoint_url,
            region=client.meta.region_name,
            inject_host_prefix=bool(client.meta.config.inject_host_prefix),
        )
    finally:
        client.close()
