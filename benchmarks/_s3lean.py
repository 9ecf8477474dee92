"""A lean, read-only S3 endpoint for the attachments benchmark.

moto's S3 answers each request through its whole request-routing and
response machinery in one Python process; on two cores that server, not the
client being measured, bounds every contender's small-file throughput. This
server answers only what a download needs (``GetObject`` with or without a
``Range``, ``HeadObject``, ``HeadBucket``) from files in a directory
(``ROOT/<bucket>/<key>``), with HTTP/1.1 keep-alive and ``sendfile``, so the
clients' own costs show. The benchmark writes the objects into that directory
itself; nothing here accepts writes.

    python -m benchmarks._s3lean ROOT PORT
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _path(self) -> Path | None:
        parts = unquote(urlsplit(self.path).path).lstrip("/").split("/", 1)
        if not parts[0] or ".." in parts[-1].split("/"):
            return None
        return self.root.joinpath(*parts)

    def _error(self, status: int, code: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, *, send_body: bool) -> None:
        path = self._path()
        if path is None or not path.exists():
            self._error(404, "NoSuchKey")
            return
        if path.is_dir():  # HeadBucket
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        stat = path.stat()
        start, end = 0, stat.st_size
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or int(match.group(1)) >= stat.st_size:
                self._error(416, "InvalidRange")
                return
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, stat.st_size) if match.group(2) else stat.st_size
            status = 206
        etag = hashlib.md5(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        self.send_response(status)
        self.send_header("Content-Type", "binary/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{stat.st_size}")
        self.end_headers()
        if send_body:
            self.wfile.flush()
            with path.open("rb") as source:
                self.connection.sendfile(source, start, end - start)


def main() -> int:
    root, port = Path(sys.argv[1]), int(sys.argv[2])
    handler = type("Handler", (_Handler,), {"root": root})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    os.write(1, b"ready\n")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
