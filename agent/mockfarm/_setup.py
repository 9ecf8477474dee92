"""What ``mockfarm serve`` prints: the lines that point every client at the farm.

Every AWS client call needs the endpoint *and* host-prefix injection off: the
Deadline model gives the worker operations the host prefix ``scheduling.`` and
the others ``management.``, so botocore would send ``list_farms`` to
``management.127.0.0.1``. The lines are given twice, as environment variables
and as an AWS config profile, then as the ``deadline`` CLI's settings and a
worker's command line.
"""

from __future__ import annotations

from collections.abc import Mapping

PROFILE = "farmhand-mockfarm"


def setup_lines(
    info: Mapping[str, str],
    access_key: tuple[str, str],
    *,
    verified: bool,
    secret_known: bool,
    endpoint_env: str,
) -> list[str]:
    """The text ``serve`` prints once it listens (one line per item)."""
    endpoint = info["endpointUrl"]
    key_id, secret = access_key
    shown_secret = secret if secret_known else "...  # the secret you gave the farm"
    if not verified:
        credentials_note = "any key pair is taken (requests are not verified)"
    else:
        credentials_note = "every request's SigV4 signature is verified against this key"
    return [
        f"mock farm listening on {endpoint}",
        f"  farm  {info['farmId']}",
        f"  fleet {info['fleetId']}",
        f"  queue {info['queueId']}",
        "",
        "Every client (boto3, the deadline CLI, a worker agent) needs the endpoint and host-prefix",
        "injection off (else botocore sends list_farms to management.<host>). In a shell:",
        f"  export AWS_ENDPOINT_URL_DEADLINE={endpoint}",
        f"  export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS={endpoint}",
        "  export AWS_DISABLE_HOST_PREFIX_INJECTION=true",
        f"  export AWS_DEFAULT_REGION={info['region']}",
        f"  export AWS_ACCESS_KEY_ID={key_id}",
        f"  export AWS_SECRET_ACCESS_KEY={shown_secret}",
        "  export AWS_EC2_METADATA_DISABLED=true",
        "  export DEADLINE_CLOUD_TELEMETRY_OPT_OUT=true",
        f"  export {endpoint_env}={endpoint}",
        f"  # {credentials_note}",
        f"or as a profile in ~/.aws/config (then AWS_PROFILE={PROFILE}):",
        f"  [profile {PROFILE}]",
        f"  region = {info['region']}",
        f"  endpoint_url = {endpoint}",
        "  disable_host_prefix_injection = true",
        f"  aws_access_key_id = {key_id}",
        f"  aws_secret_access_key = {shown_secret}",
        "The deadline CLI (pip install deadline), with the exports or the profile:",
        f"  deadline config set defaults.aws_profile_name {PROFILE}   # with the profile only",
        f"  deadline config set settings.deadline_regions {info['region']}   # farm list: one region",
        f"  deadline config set defaults.farm_id {info['farmId']}",
        f"  deadline config set defaults.queue_id {info['queueId']}",
        "  deadline config set telemetry.opt_out true",
        "A worker, with the exports or the profile:",
        f"  python -m agent --farm-id {info['farmId']} --fleet-id {info['fleetId']} "
        "--run-jobs-as-agent-user --no-shutdown \\",
        "      --persistence-dir /tmp/w/persist --logs-dir /tmp/w/logs "
        "--session-root-dir /tmp/w/sessions",
    ]
