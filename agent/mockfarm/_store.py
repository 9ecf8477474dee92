"""The mock farm's state on disk: SQLite, one committed transaction before each answer.

``mockfarm serve`` keeps its farms, fleets, queues, environments, jobs, steps,
tasks, sessions, actions, workers and logs in ``<state dir>/farm.sqlite3``; a
restarted server loads them with their ids and carries on where it stopped.
Embedded farms (``open_mock_farm()`` without ``state_dir``, ``python -m agent
run``) keep everything in memory, as before.

How records are stored
----------------------
The store knows no record type by name. It stores **every value in a
``FarmState`` table** (each ``dict`` field of ``FarmState``: ``jobs``,
``workers``..., those of a group of tables in it: ``admin.budgets``,
``admin.queue_fleets``..., and any table added later) and every attrs record
reachable from one (tasks, through their step). A key that is not a string (a
``(queue id, fleet id)`` pair) is stored as a NUL and the key as a JSON list.
One SQLite table holds them all::

    records(kind, key, member, cls, payload)   -- kind: the FarmState table, or the
                                                -- class name of a record reachable
                                                -- only (Task); member: in its table

``payload`` is a pickle of the record's stored fields, by name (attrs fields not
marked ``NOT_STORED``). A reference to another record inside it (a task's step,
a session's worker) is pickled as that record's ``(kind, key)``, so cycles are
fine and each record is saved on its own; frozen attrs classes are values and
are pickled inline. On load every row first becomes an empty instance of its
class, then the payloads fill them in, references resolved; a field missing
from the payload takes its attrs default (so a field added later with a default
loads from an older state dir) and a stored field the class no longer has is
ignored. What a record does not store (counts, open-action lists, a worker's
sessions, a step's tasks: ``NOT_STORED`` and ``CHILDREN`` fields)
``FarmState.rebuild`` recomputes from what it does. A table value that is not an
attrs record (a dict) is stored whole.

What is saved, and when
-----------------------
A request's changes are found without the handlers' help:

- a record put into (or taken out of) a ``FarmState`` table is saved (or
  marked no longer a member: other records may still refer to it);
- a record never saved that a saved record refers to is saved with it;
- records of the classes in ``_records.ASSIGNED_ONLY`` (the farm's own, whose
  stored fields are assigned, never changed in place) report assignments: once
  saved, a record's class becomes a subclass with a ``__setattr__`` that marks
  it changed (``__class__`` assignment; same layout), so an in-memory farm pays
  nothing, and a changed record is re-pickled once per request;
- any other record or table value (record types added later) is re-pickled at
  every commit and saved when its bytes differ: correct whatever changes it,
  in place included; meant for small tables (add a class to ``ASSIGNED_ONLY``
  once its code only assigns).

Keys the farm hands out and idempotency tokens are kept in ``kv``; CloudWatch
Logs in ``log_groups``, ``log_streams`` and ``log_events`` (appended as events
arrive; as in memory, nothing is dropped beyond what ``LogStore`` itself drops).

Transactions and durability
---------------------------
After each request (``MockFarmApp``) the store pickles what changed, on the
Trio thread, into a batch of statements; one writer task runs the queued
batches' statements (on the Trio thread: a thread would wait for the GIL at
every statement) and their ``COMMIT`` in a worker thread, several requests per
transaction when they come faster than a commit (group commit), and a request
is answered only once its batch is committed; so is a read, once everything
it could have seen is. A response therefore never reports anything a crash can
take back: the database is in WAL mode with ``synchronous=FULL``, so a commit
is on disk before it returns, and survives the server's SIGKILL and the
machine's power loss alike (``NORMAL`` would survive a SIGKILL only). A failed
write stops the farm: memory and disk would disagree.

A state dir is used by one server at a time (an exclusive ``flock`` on
``<state dir>/lock``).
"""

from __future__ import annotations

import fcntl
import importlib
import io
import json
import os
import pickle
import secrets
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast

import attrs
import structlog
import trio

from ._records import ASSIGNED_ONLY, FarmState

if TYPE_CHECKING:
    from ._logstore import LogEvent, LogStore, LogStream

log = structlog.get_logger("farmhand.mockfarm")

SCHEMA_VERSION = 1
DATABASE = "farm.sqlite3"

Ref = tuple[str, str]
#: A statement and its parameters, or a list of parameter rows for ``executemany``.
Op = tuple[str, tuple[Any, ...] | list[tuple[Any, ...]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, member INTEGER NOT NULL,
    cls TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS log_groups (
    name TEXT PRIMARY KEY, creation_time INTEGER NOT NULL, region TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log_streams (
    grp TEXT NOT NULL, name TEXT NOT NULL, creation_time INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL, sequence INTEGER NOT NULL, received INTEGER NOT NULL,
    PRIMARY KEY (grp, name));
CREATE TABLE IF NOT EXISTS log_events (
    grp TEXT NOT NULL, stream TEXT NOT NULL, timestamp INTEGER NOT NULL,
    message TEXT NOT NULL, ingestion_time INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS log_events_stream ON log_events (grp, stream);
"""
#: The payload key of a table member that is not an attrs record.
_VALUE = "__value__"
_UPSERT = (
    "INSERT INTO records (kind, key, member, cls, payload) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET member = excluded.member, cls = excluded.cls, "
    "payload = excluded.payload"
)
_MEMBER = "UPDATE records SET member = ? WHERE kind = ? AND key = ?"
_PUT_KV = "INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?, ?, ?)"
_STREAM = (
    "INSERT OR REPLACE INTO log_streams "
    "(grp, name, creation_time, stored_bytes, sequence, received) VALUES (?, ?, ?, ?, ?, ?)"
)


class StoreError(Exception):
    """The state dir cannot be used (in use, unreadable, written by an incompatible farm)."""


def default_state_dir() -> Path:
    """``$XDG_DATA_HOME/farmhand/mockfarm``, else ``~/.local/share/farmhand/mockfarm``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "farmhand" / "mockfarm"


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _find_class(module: str, name: str) -> Any:
    """A class by module and name; a class of ours that moved is found by its name."""
    try:
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        return found
    except (ImportError, AttributeError):
        if not module.startswith("agent."):
            raise
    for loaded_name, loaded in list(sys.modules.items()):
        if loaded_name.startswith("agent.mockfarm") and isinstance(
            getattr(loaded, name, None), type
        ):
            return getattr(loaded, name)
    raise StoreError(f"the state dir holds a {module}.{name}, which this farm does not know")


_UNSET = object()


@attrs.frozen
class _FrozenProbe:
    x: int = 0


#: What attrs gives every frozen class: their instances are values, not records.
_FROZEN_SETATTR = _FrozenProbe.__setattr__


def _ref(kind: str, key: str) -> Any:
    """Stands for a reference in a payload; ``_Unpickler`` resolves it instead."""
    raise StoreError(f"a reference to {kind} {key} read outside the store")


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], objects: dict[Ref, Any]) -> None:
        super().__init__(file)
        self._objects = objects

    def _resolve(self, kind: str, key: str) -> Any:
        try:
            return self._objects[(kind, key)]
        except KeyError:
            raise StoreError(f"the state dir refers to a missing record {kind} {key}") from None

    def find_class(self, module: str, name: str) -> Any:
        if name == "_ref" and module == __name__:
            return self._resolve
        return _find_class(module, name)


class _Pickler(pickle.Pickler):
    """Pickles one record's fields; other records become ``_ref(kind, key)`` calls.

    ``reducer_override`` (unlike ``persistent_id``) is not consulted for the
    built-in types that make up most of a payload, which keeps pickling fast.
    """

    def __init__(self, file: IO[bytes], store: FarmStore) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._store = store

    def reducer_override(self, obj: Any) -> Any:
        entry = self._store._refs.get(id(obj))
        if entry is not None:
            return _ref, entry[0]
        if self._store._is_record(type(obj)):
            return _ref, self._store._adopt(obj)
        return NotImplemented


#: How a table key that is not a string (``("queue id", "fleet id")``) begins in the
#: ``key`` column: the rest is the key as a JSON list. No id or name the farm keeps
#: begins with a NUL.
_TUPLE_KEY = "\x00"


def _key_text(key: str | tuple[str, ...]) -> str:
    return key if isinstance(key, str) else _TUPLE_KEY + json.dumps(list(key))


def _key_of(text: str) -> str | tuple[str, ...]:
    return tuple(json.loads(text[1:])) if text.startswith(_TUPLE_KEY) else text


def _state_tables(state: FarmState) -> Iterator[tuple[str, Any, str]]:
    """``(table name, owner, field name)`` of each stored table of ``state``: its ``dict``
    fields, and those of an attrs group of tables in it (``admin``: ``admin.budgets``)."""
    for field in attrs.fields(type(state)):
        if not field.metadata.get("stored", True):
            continue
        value = getattr(state, field.name)
        if isinstance(value, dict):
            yield field.name, state, field.name
        elif attrs.has(type(value)):
            for inner in attrs.fields(type(value)):
                if isinstance(getattr(value, inner.name), dict):
                    yield f"{field.name}.{inner.name}", value, inner.name


class _Table(dict[Any, Any]):
    """A ``FarmState`` table that tells the store what goes in and out."""

    def __init__(self, store: FarmStore, name: str, items: dict[Any, Any]) -> None:
        super().__init__(items)
        self._store = store
        self._name = name

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._store._member_added(self._name, _key_text(key), value)

    def __delitem__(self, key: Any) -> None:
        value = self[key]
        super().__delitem__(key)
        self._store._member_removed(self._name, _key_text(key), value)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self) -> tuple[str, Any]:
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        for key in list(self):
            del self[key]


class FarmStore:
    """A farm's state dir: load it, track changes, commit them (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(state_dir / "lock", "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreError(f"cannot use {state_dir}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(
                f"{state_dir} is in use by another mock farm (serve one farm per state dir)"
            ) from None
        try:
            self._db = sqlite3.connect(
                state_dir / DATABASE, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{state_dir} was written by a mock farm with state schema {version}; "
                    f"this one reads {SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            self._release()
            raise StoreError(f"cannot open {state_dir / DATABASE}: {exc}") from exc
        except StoreError:
            self._release()
            raise
        #: id(record) -> (its reference, the record, kept alive so ids stay unique).
        self._refs: dict[int, tuple[Ref, Any]] = {}
        #: Records to save at the next capture, by id, in the order they changed.
        self._dirty: dict[int, Any] = {}
        #: Table memberships changed since the last capture.
        self._memberships: dict[Ref, Any] = {}
        #: Records of classes that do not report changes: compared at each capture.
        self._untracked: dict[Ref, Any] = {}
        self._last_payload: dict[Ref, bytes] = {}
        self._tables: dict[str, _Table] = {}
        self._stored_fields: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._tracked: dict[type, type] = {}
        self._record_classes: dict[type, bool] = {}
        #: kv and log statements since the last capture, in order.
        self._ops: list[Op] = []
        #: Captured batches not yet committed: (sequence number, statements).
        self._queue: list[tuple[int, list[Op]]] = []
        self._captured = 0
        self._committed = 0
        self._writer_running = False
        self._wakeup: trio.Event | None = None
        self._written: trio.Event | None = None
        self._limiter = trio.CapacityLimiter(1)
        self.commits = 0

    def _release(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    # ------------------------------------------------------------ loading

    def load(self, state: FarmState, logs: LogStore, *, now: float) -> bool:
        """Fill an empty ``state`` and ``logs`` from the state dir; False if it was empty."""
        try:
            rows = self._db.execute(
                "SELECT kind, key, member, cls, payload FROM records ORDER BY rowid"
            ).fetchall()
            self._load_logs(logs)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.state_dir / DATABASE}: {exc}") from exc
        if not rows:
            return False
        tables = {name: getattr(owner, field) for name, owner, field in _state_tables(state)}
        objects: dict[Ref, Any] = {}
        classes: dict[str, Any] = {}
        for kind, key, _member, class_name, _payload in rows:
            if not class_name:
                continue  # a plain value: made by its payload
            cls = classes.get(class_name)
            if cls is None:
                cls = classes[class_name] = _find_class(*class_name.split(":", 1))
            objects[(kind, key)] = cls.__new__(cls)
        for kind, key, member, class_name, payload in rows:
            ref = (kind, key)
            try:
                values = _Unpickler(io.BytesIO(payload), objects).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                raise StoreError(f"cannot read record {kind} {key}: {exc}") from exc
            if class_name:
                obj = objects[ref]
                self._fill(obj, values)
                self._refs[id(obj)] = (ref, obj)
                if type(obj) not in ASSIGNED_ONLY:
                    self._untracked[ref] = obj
            else:
                obj = values[_VALUE]
            if member and kind in tables:
                tables[kind][_key_of(key)] = obj
                if not class_name:
                    self._untracked[ref] = obj
        state.rebuild(now, (obj for _ref, obj in self._refs.values()))
        for ref, obj in self._untracked.items():
            self._last_payload[ref] = self._serialize(obj)
        for _ref, obj in self._refs.values():
            if type(obj) in ASSIGNED_ONLY:
                obj.__class__ = self._tracked_class(type(obj))
        log.debug("mockfarm.state_loaded", path=str(self.state_dir), records=len(rows))
        return True

    def _fill(self, obj: Any, values: dict[str, Any]) -> None:
        for field in attrs.fields(type(obj)):
            if field.name in values and field.metadata.get("stored", True):
                value = values[field.name]
            elif field.default is attrs.NOTHING:
                raise StoreError(
                    f"the state dir's {type(obj).__name__} has no {field.name}; it was written "
                    "by an incompatible mock farm"
                )
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                factory = field.default
                value = factory.factory(obj) if factory.takes_self else factory.factory()
            else:
                value = field.default
            object.__setattr__(obj, field.name, value)

    def _load_logs(self, logs: LogStore) -> None:
        from ._logstore import LogEvent, LogGroup, LogStream

        for name, creation_time, region in self._db.execute(
            "SELECT name, creation_time, region FROM log_groups ORDER BY rowid"
        ):
            logs.groups[name] = LogGroup(name, creation_time, region)
        for group, name, creation, stored, sequence, received in self._db.execute(
            "SELECT grp, name, creation_time, stored_bytes, sequence, received "
            "FROM log_streams ORDER BY rowid"
        ):
            if group in logs.groups:
                logs.groups[group].streams[name] = LogStream(
                    name, creation, stored_bytes=stored, sequence=sequence, received=received
                )
        for group, stream_name, timestamp, message, ingestion in self._db.execute(
            "SELECT grp, stream, timestamp, message, ingestion_time FROM log_events ORDER BY rowid"
        ):
            stream = logs.stream(group, stream_name)
            if stream is not None:
                stream.events.append(LogEvent(timestamp, message, ingestion))

    def kv(self, namespace: str) -> dict[str, Any]:
        """Everything stored under ``namespace`` (read at start-up)."""
        rows = self._db.execute("SELECT key, value FROM kv WHERE ns = ?", (namespace,))
        return {key: pickle.loads(value) for key, value in rows}

    # ------------------------------------------------------------ tracking

    def attach(self, state: FarmState, logs: LogStore) -> None:
        """Watch ``state``'s tables and ``logs`` from now on."""
        for name, owner, field in _state_tables(state):
            table = _Table(self, name, getattr(owner, field))
            self._tables[name] = table
            setattr(owner, field, table)
        logs.journal = self

    def _tracked_class(self, cls: type) -> type:
        """A subclass of ``cls`` that tells this store of assignments; a record this
        store saves becomes one (``__class__``: same layout, ``__slots__ = ()``), so an
        in-memory farm's records pay nothing for tracking."""
        tracked = self._tracked.get(cls)
        if tracked is not None:
            return tracked
        store = self
        skipped = frozenset(f.name for f in attrs.fields(cls) if not f.metadata.get("stored", True))
        assign = cast(Callable[[Any, str, Any], None], cls.__setattr__)

        def __setattr__(record: Any, name: str, value: Any) -> None:
            old = getattr(record, name, _UNSET)
            assign(record, name, value)
            if old is not value and name not in skipped and id(record) in store._refs:
                store._dirty[id(record)] = record

        tracked = self._tracked[cls] = type(
            cls.__name__,
            (cls,),
            {
                "__slots__": (),
                "__setattr__": __setattr__,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "_stored_class": cls,
            },
        )
        return tracked

    def _is_record(self, cls: type) -> bool:
        """Whether objects of ``cls`` are records (attrs, not frozen) rather than values."""
        found = self._record_classes.get(cls)
        if found is None:
            found = self._record_classes[cls] = (
                attrs.has(cls) and getattr(cls, "__setattr__", None) is not _FROZEN_SETATTR
            )
        return found

    def _adopt(self, record: Any, ref: Ref | None = None) -> Ref:
        cls = getattr(type(record), "_stored_class", type(record))
        if ref is None:
            if cls in ASSIGNED_ONLY:
                ref = (cls.__name__, str(getattr(record, attrs.fields(cls)[0].name)))
            else:
                ref = (cls.__name__, secrets.token_hex(8))
        self._refs[id(record)] = (ref, record)
        if cls in ASSIGNED_ONLY:
            if type(record) is cls:
                record.__class__ = self._tracked_class(cls)
            self._dirty[id(record)] = record
        else:
            self._untracked[ref] = record
        return ref

    def _member_added(self, table: str, key: str, value: Any) -> None:
        ref = (table, key)
        if attrs.has(type(value)):
            self._adopt(value, ref)
        else:
            self._untracked[ref] = value
        self._memberships[ref] = value

    def _member_removed(self, table: str, key: str, value: Any) -> None:
        ref = (table, key)
        self._memberships[ref] = value
        if not attrs.has(type(value)):
            self._untracked.pop(ref, None)

    def put_kv(self, namespace: str, key: str, value: Any) -> None:
        self._ops.append((_PUT_KV, (namespace, key, pickle.dumps(value))))

    def delete_kv(self, namespace: str, key: str) -> None:
        self._ops.append(("DELETE FROM kv WHERE ns = ? AND key = ?", (namespace, key)))

    # -- the LogStore's journal

    def log_group_created(self, name: str, creation_time: int, region: str) -> None:
        self._ops.append(
            (
                "INSERT OR REPLACE INTO log_groups (name, creation_time, region) VALUES (?, ?, ?)",
                (name, creation_time, region),
            )
        )

    def log_group_deleted(self, name: str) -> None:
        self._ops.append(("DELETE FROM log_events WHERE grp = ?", (name,)))
        self._ops.append(("DELETE FROM log_streams WHERE grp = ?", (name,)))
        self._ops.append(("DELETE FROM log_groups WHERE name = ?", (name,)))

    def log_stream_changed(self, group: str, stream: LogStream) -> None:
        self._ops.append(
            (
                _STREAM,
                (
                    group,
                    stream.name,
                    stream.creation_time,
                    stream.stored_bytes,
                    stream.sequence,
                    stream.received,
                ),
            )
        )

    def log_stream_deleted(self, group: str, name: str) -> None:
        self._ops.append(("DELETE FROM log_events WHERE grp = ? AND stream = ?", (group, name)))
        self._ops.append(("DELETE FROM log_streams WHERE grp = ? AND name = ?", (group, name)))

    def log_events_added(self, group: str, stream: str, events: Iterable[LogEvent]) -> None:
        rows = [(group, stream, e.timestamp, e.message, e.ingestion_time) for e in events]
        if rows:
            self._ops.append(
                (
                    "INSERT INTO log_events (grp, stream, timestamp, message, ingestion_time) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            )

    # ------------------------------------------------------------ capturing

    def _fields(self, cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The stored fields of a record class, and its ``CHILDREN`` fields."""
        names = self._stored_fields.get(cls)
        if names is None:
            fields = attrs.fields(cls)
            names = self._stored_fields[cls] = (
                tuple(f.name for f in fields if f.metadata.get("stored", True)),
                tuple(f.name for f in fields if f.metadata.get("children")),
            )
        return names

    def _serialize(self, record: Any) -> bytes:
        if not attrs.has(type(record)):
            # A value that is not a record (a dict, a tuple) is stored whole; nothing
            # refers to it, so it needs no placeholder on load.
            buffer = io.BytesIO()
            _Pickler(buffer, self).dump({_VALUE: record})
            return buffer.getvalue()
        stored, children = self._fields(type(record))
        for name in children:
            value = getattr(record, name)
            for child in value.values() if isinstance(value, dict) else value:
                if id(child) not in self._refs:
                    self._adopt(child)
        buffer = io.BytesIO()
        # A new pickler each time: clearing a memo costs what its largest use left.
        _Pickler(buffer, self).dump({name: getattr(record, name) for name in stored})
        return buffer.getvalue()

    def _upsert(self, ref: Ref, record: Any, payload: bytes) -> Op:
        return (_UPSERT, (*ref, self._member(ref, record), self._class_of(record), payload))

    @staticmethod
    def _class_of(record: Any) -> str:
        cls = type(record)
        return _class_name(getattr(cls, "_stored_class", cls)) if attrs.has(cls) else ""

    def _member(self, ref: Ref, record: Any) -> int:
        table = self._tables.get(ref[0])
        return 1 if table is not None and table.get(_key_of(ref[1])) is record else 0

    def capture(self) -> list[Op]:
        """What changed since the last capture, as statements (pickled now)."""
        statements: list[Op] = []
        compared: set[Ref] = set()
        more = True
        while more:
            # Pickling may find records never saved: round again until none is new.
            more = False
            for ref, record in list(self._untracked.items()):
                if ref in compared:
                    continue
                compared.add(ref)
                more = True
                payload = self._serialize(record)
                if self._last_payload.get(ref) != payload:
                    self._last_payload[ref] = payload
                    statements.append(self._upsert(ref, record, payload))
            while self._dirty:
                more = True
                batch, self._dirty = self._dirty, {}
                for record in batch.values():
                    ref = self._refs[id(record)][0]
                    statements.append(self._upsert(ref, record, self._serialize(record)))
        for ref, record in self._memberships.items():
            statements.append((_MEMBER, (self._member(ref, record), *ref)))
        self._memberships.clear()
        statements.extend(self._ops)
        self._ops = []
        return statements

    # ------------------------------------------------------------ committing

    def commit_nowait(self) -> int:
        """Capture what changed and queue it; the number ``wait_committed`` takes."""
        statements = self.capture()
        if statements:
            self._captured += 1
            self._queue.append((self._captured, statements))
            if self._wakeup is not None:
                self._wakeup.set()
        return self._captured

    async def commit(self) -> None:
        """Capture what changed; return once it, and everything before it, is on disk."""
        number = self.commit_nowait()
        if not self._writer_running:
            self._write_queued()
            return
        while self._committed < number:
            assert self._written is not None
            await self._written.wait()

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit queued batches, as many per transaction as have queued (group commit)."""
        self._wakeup = trio.Event()
        self._written = trio.Event()
        self._writer_running = True
        task_status.started()
        try:
            while True:
                if not self._queue:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                batches, self._queue = self._queue, []
                # The statements run here: in a thread each would wait for the GIL that
                # this thread holds while it serves. The commit, which waits for the
                # disk without the GIL, runs in a thread. Not abandoned on cancel: a
                # transaction that began is finished.
                self._execute(batches)
                await trio.to_thread.run_sync(self._commit, limiter=self._limiter)
                self._committed = batches[-1][0]
                self._written.set()
                self._written = trio.Event()
        finally:
            self._writer_running = False

    def _write_queued(self) -> None:
        if self._db.in_transaction:
            # The writer was cancelled between its statements and their commit.
            self._commit()
        batches, self._queue = self._queue, []
        if batches:
            self._execute(batches)
            self._commit()
            self._committed = batches[-1][0]

    def _execute(self, batches: list[tuple[int, list[Op]]]) -> None:
        try:
            self._db.execute("BEGIN")
            for _number, statements in batches:
                for sql, params in statements:
                    if type(params) is list:  # rows for one statement
                        self._db.executemany(sql, params)
                    else:
                        self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self._failed(exc)

    def _commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc)
        self.commits += 1

    def _failed(self, exc: sqlite3.Error) -> NoReturn:
        if self._db.in_transaction:
            self._db.rollback()
        raise StoreError(f"cannot write the farm's state to {self.state_dir}: {exc}") from exc

    def close(self) -> None:
        """Commit what is left and let the state dir go."""
        try:
            self.commit_nowait()
            self._write_queued()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._release()

    def statistics(self) -> dict[str, int]:
        return {"records": len(self._refs), "commits": self.commits, "queued": len(self._queue)}
