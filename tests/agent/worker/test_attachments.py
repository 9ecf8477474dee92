"""The worker's job attachments, made when a session first needs them (issue 16).

A session that syncs attachments end to end through the worker is in
``tests/agent/attachments/test_worker.py``; ``tests/agent/local/test_cmd_run.py``
checks that a plain ``run`` never imports ``agent.attachments``.
"""

from __future__ import annotations

from agent.attachments._worker import SessionAttachments
from agent.worker._attachments import LazyAttachments

SETTINGS = {"s3BucketName": "bucket", "rootPrefix": "root"}


def open_session(attachments: LazyAttachments, session_id: str) -> SessionAttachments:
    return attachments.open_session(
        settings=SETTINGS,
        farm_id="farm-1",
        queue_id="queue-1",
        job_id="job-1",
        session_id=session_id,
        queue_env=None,
    )


def test_made_at_the_first_session_that_needs_them_and_shared() -> None:
    attachments = LazyAttachments(
        endpoint_url="http://127.0.0.1:9", region="us-west-2", max_concurrency=3
    )
    made = [attachments.made]
    one = open_session(attachments, "session-1")
    two = open_session(attachments, "session-2")
    made.append(attachments.made)
    assert made == [False, True]
    worker = one._worker
    assert worker is two._worker
    assert (worker.endpoint_url, worker.region, worker.max_concurrency) == (
        "http://127.0.0.1:9",
        "us-west-2",
        3,
    )
    assert one.env == {
        "DEADLINE_JA_S3_BUCKET": "bucket",
        "DEADLINE_JA_ROOT_PREFIX": "root",
    }
