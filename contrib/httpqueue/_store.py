"""Where the reference job server keeps its jobs: a JSON file or an SQLite database.

The server holds every job in memory and writes each change through to the
store before it answers, so a job the server acknowledged survives a restart.
Both stores are for a small team's queue (thousands of jobs, not millions):

- ``JsonStore``: one JSON document holding every job, rewritten atomically
  (a temporary file, fsync, rename) on each change;
- ``SqliteStore``: one row per job in an SQLite database (WAL journal), a
  change being one ``INSERT OR REPLACE``.

Store calls block; the server makes them in a worker thread, one at a time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

Job = dict[str, Any]
_FORMAT = "farmhand-httpqueue-1"


class StoreError(Exception):
    """The store cannot be read or written. One line."""


class Store(Protocol):
    #: What and where, for the server's first log line.
    description: str
    #: Whether ``save`` writes anything (the server skips the thread when not).
    durable: bool

    def load(self) -> list[Job]: ...

    def save(self, jobs: list[Job]) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: for tests and throw-away queues."""

    description = "memory (nothing is kept)"
    durable = False

    def load(self) -> list[Job]:
        return []

    def save(self, jobs: list[Job]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonStore:
    durable = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"JSON file {path}"
        self._jobs: dict[str, Job] = {}

    def load(self) -> list[Job]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.path} is not valid JSON: {exc}") from exc
        if not isinstance(document, Mapping) or document.get("format") != _FORMAT:
            raise StoreError(f"{self.path} is not an httpqueue store (format {_FORMAT})")
        jobs = document.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise StoreError(f"{self.path}: 'jobs' must be a list of objects")
        self._jobs = {str(job["job_id"]): job for job in jobs}
        return list(self._jobs.values())

    def save(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._jobs[job["job_id"]] = job
        data = json.dumps(
            {"format": _FORMAT, "jobs": list(self._jobs.values())}, ensure_ascii=False, indent=1
        ).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        pass


class SqliteStore:
    durable = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"SQLite database {path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The server calls the store from worker threads, one call at a time.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs ("
                " job_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL,"
                " status TEXT NOT NULL, document TEXT NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc

    def load(self) -> list[Job]:
        try:
            rows = self._db.execute("SELECT document FROM jobs ORDER BY sequence").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return [json.loads(document) for (document,) in rows]

    def save(self, jobs: list[Job]) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO jobs (job_id, sequence, status, document)"
                    " VALUES (?, ?, ?, ?)",
                    [
                        (job["job_id"], job["sequence"], job["status"], json.dumps(job))
                        for job in jobs
                    ],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()


def open_store(path: Path | None) -> Store:
    """``.sqlite``, ``.sqlite3`` and ``.db`` files are SQLite, anything else JSON;
    ``None`` keeps nothing."""
    if path is None:
        return MemoryStore()
    if path.suffix.lower() in (".sqlite", ".sqlite3", ".db"):
        return SqliteStore(path)
    return JsonStore(path)
