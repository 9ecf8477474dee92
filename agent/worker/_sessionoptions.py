"""What the worker's sessions get from its configuration."""

from __future__ import annotations

import trio

from actors import JobUser, WorkSessionOptions

from ._config import WorkerConfig
from ._restarts import restart_hold


def work_session_options(
    config: WorkerConfig, *, ship_session_logs: bool, jobs_get_agent_credentials: bool
) -> WorkSessionOptions:
    """Every work session's options, from the worker's configuration."""
    override = config.posix_job_user_and_group
    return WorkSessionOptions(
        logs_dir=config.worker_logs_dir,
        session_root=config.session_root_dir,
        retain_working_directory=config.retain_session_dir,
        local_session_logs=config.local_session_logs,
        ship_session_logs=ship_session_logs,
        min_secret_length=config.min_secret_length,
        memory_limit=config.session_memory_limit,
        output_limit=config.action_output_limit,
        output_limit_mode=config.action_output_limit_mode,
        secret_patterns=config.secret_patterns,
        run_jobs_as_agent_user=config.run_jobs_as_agent_user,
        job_user_override=JobUser(override[0], override[1] or None) if override else None,
        jobs_get_agent_credentials=jobs_get_agent_credentials,
        cleanup_user_processes=config.cleanup_session_user_processes,
        restart_hold=restart_hold(config) if config.restart_grace_seconds > 0 else None,
    )


async def make_directories(config: WorkerConfig) -> None:
    """The worker's log and session directories (made off the loop)."""

    def make() -> None:
        config.worker_logs_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        config.session_root_dir.mkdir(mode=0o755, parents=True, exist_ok=True)

    await trio.to_thread.run_sync(make)
