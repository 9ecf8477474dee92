from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DisconnectPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_JOB: _ClassVar[DisconnectPolicy]
    KEEP_RUNNING: _ClassVar[DisconnectPolicy]
CANCEL_JOB: DisconnectPolicy
KEEP_RUNNING: DisconnectPolicy

class Requirements(_message.Message):
    __slots__ = ("tools", "labels", "min_free_disk_bytes")
    class ToolsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.ScalarMap[str, str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    min_free_disk_bytes: int
    def __init__(self, tools: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Iterable[str]] = ..., min_free_disk_bytes: _Optional[int] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("job_id", "command", "env", "user", "group", "requirements", "prepare", "cannot_run_status", "artifacts", "max_runtime_seconds", "grace_seconds", "on_disconnect", "secrets")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    CANNOT_RUN_STATUS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    user: str
    group: str
    requirements: Requirements
    prepare: _containers.RepeatedScalarFieldContainer[str]
    cannot_run_status: int
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    max_runtime_seconds: float
    grace_seconds: float
    on_disconnect: DisconnectPolicy
    secrets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., user: _Optional[str] = ..., group: _Optional[str] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ..., prepare: _Optional[_Iterable[str]] = ..., cannot_run_status: _Optional[int] = ..., artifacts: _Optional[_Iterable[str]] = ..., max_runtime_seconds: _Optional[float] = ..., grace_seconds: _Optional[float] = ..., on_disconnect: _Optional[_Union[DisconnectPolicy, str]] = ..., secrets: _Optional[_Iterable[str]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("job_id", "working_directory")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    working_directory: str
    def __init__(self, job_id: _Optional[str] = ..., working_directory: _Optional[str] = ...) -> None: ...

class Rejected(_message.Message):
    __slots__ = ("reason", "message")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Rejected.Reason]
        CAPACITY: _ClassVar[Rejected.Reason]
        REQUIREMENTS: _ClassVar[Rejected.Reason]
        PREPARATION: _ClassVar[Rejected.Reason]
        STOPPING: _ClassVar[Rejected.Reason]
        DUPLICATE: _ClassVar[Rejected.Reason]
    REASON_UNSPECIFIED: Rejected.Reason
    CAPACITY: Rejected.Reason
    REQUIREMENTS: Rejected.Reason
    PREPARATION: Rejected.Reason
    STOPPING: Rejected.Reason
    DUPLICATE: Rejected.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: Rejected.Reason
    message: str
    def __init__(self, reason: _Optional[_Union[Rejected.Reason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("phase", "lines", "dropped_lines")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_LINES_FIELD_NUMBER: _ClassVar[int]
    phase: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    dropped_lines: int
    def __init__(self, phase: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ..., dropped_lines: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("percent",)
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    percent: float
    def __init__(self, percent: _Optional[float] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("path", "uri", "size", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    uri: str
    size: int
    error: str
    def __init__(self, path: _Optional[str] = ..., uri: _Optional[str] = ..., size: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("status", "exit_code", "signal", "error", "started_at", "ended_at", "duration_seconds", "log", "artifacts", "upload_failed")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Finished.Status]
        SUCCEEDED: _ClassVar[Finished.Status]
        FAILED: _ClassVar[Finished.Status]
        CANCELED: _ClassVar[Finished.Status]
        TIMEOUT: _ClassVar[Finished.Status]
        INTERRUPTED: _ClassVar[Finished.Status]
    STATUS_UNSPECIFIED: Finished.Status
    SUCCEEDED: Finished.Status
    FAILED: Finished.Status
    CANCELED: Finished.Status
    TIMEOUT: Finished.Status
    INTERRUPTED: Finished.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FAILED_FIELD_NUMBER: _ClassVar[int]
    status: Finished.Status
    exit_code: int
    signal: int
    error: str
    started_at: str
    ended_at: str
    duration_seconds: float
    log: Upload
    artifacts: _containers.RepeatedCompositeFieldContainer[Upload]
    upload_failed: bool
    def __init__(self, status: _Optional[_Union[Finished.Status, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., error: _Optional[str] = ..., started_at: _Optional[str] = ..., ended_at: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., log: _Optional[_Union[Upload, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[Upload, _Mapping]]] = ..., upload_failed: _Optional[bool] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("accepted", "rejected", "output", "progress", "finished")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    rejected: Rejected
    output: Output
    progress: Progress
    finished: Finished
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., rejected: _Optional[_Union[Rejected, _Mapping]] = ..., output: _Optional[_Union[Output, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class CapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class CapacityReply(_message.Message):
    __slots__ = ("slots", "free_slots", "running_jobs", "tools", "labels", "free_disk_bytes", "accepting")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_FIELD_NUMBER: _ClassVar[int]
    slots: int
    free_slots: int
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    labels: _containers.RepeatedScalarFieldContainer[str]
    free_disk_bytes: int
    accepting: bool
    def __init__(self, slots: _Optional[int] = ..., free_slots: _Optional[int] = ..., running_jobs: _Optional[_Iterable[str]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., labels: _Optional[_Iterable[str]] = ..., free_disk_bytes: _Optional[int] = ..., accepting: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id", "grace_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...
