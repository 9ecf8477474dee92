"""The keys one SigV4 signature is made with, for the client that signs
(``agent.deadline``) and the mock farm that checks (``agent.mockfarm._sigv4``).

botocore's own shape for them, ``ReadOnlyCredentials``, lives in
``botocore.credentials``, whose import (its whole credential chain) the static
keys of a local run and the farm never need (issue 16).
"""

from __future__ import annotations

from typing import NamedTuple


class FrozenCredentials(NamedTuple):
    """One request's keys, as botocore's ``ReadOnlyCredentials`` has them (what its
    ``SigV4Auth`` signs with)."""

    access_key: str
    secret_key: str
    token: str | None
