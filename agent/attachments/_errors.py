"""Job-attachment errors, each one line that names what failed::

    FarmhandError
    └── AttachmentError            job attachments could not be synced or uploaded
        ├── ManifestError          a manifest that does not parse, or a path that escapes its root
        ├── MissingObjectError     the bucket lacks an object a manifest names (``key``)
        ├── HashMismatchError      a downloaded file does not hash to what its manifest says
        └── TransferError          S3 refused or failed a transfer after its retries

They are raised by ``agent.attachments`` and reported as the action's
``progressMessage`` by the worker.
"""

from __future__ import annotations

from .._errors import FarmhandError


class AttachmentError(FarmhandError):
    """Job attachments could not be synced or uploaded."""


class ManifestError(AttachmentError, ValueError):
    """A manifest does not parse, or names a path that would escape its root."""


class MissingObjectError(AttachmentError):
    """The bucket lacks an object a manifest names."""

    def __init__(self, message: str, *, bucket: str, key: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key


class HashMismatchError(AttachmentError):
    """A downloaded file does not have the hash (or size) its manifest gives."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class TransferError(AttachmentError):
    """S3 refused or failed a transfer after its retries."""


def collapse(group: BaseExceptionGroup[AttachmentError]) -> AttachmentError:
    """One error for a group of transfer failures: the only one, or a summary naming the first.

    Concurrent transfers fail together: the first failure cancels the rest, so
    a group usually holds one error, and the action's message should be that
    error's line, not a group's repr.
    """
    leaves: list[AttachmentError] = []

    def walk(g: BaseExceptionGroup[AttachmentError]) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(group)
    if len(leaves) == 1:
        return leaves[0]
    summary = AttachmentError(f"{len(leaves)} transfers failed; the first: {leaves[0]}")
    summary.__cause__ = group
    return summary
