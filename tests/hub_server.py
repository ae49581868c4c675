"""A local stand-in for the Hugging Face Hub's file endpoint, for download tests.

Serves ``/{repo}/resolve/{revision}/{filename}`` (HEAD and GET, with byte ranges) the way the Hub
does for plain (non-xet) files: ``X-Repo-Commit``, ``ETag`` and ``Content-Length`` headers, 404 with
``X-Error-Code`` for unknown entries. Counts the GET requests so tests can see what was downloaded.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.gets: list[str] = []
        self.commits: dict[str, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _lookup(self) -> tuple[str, bytes] | None:
                match = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if not match:
                    return None
                repo, filename = match[1], unquote(match[3])
                data = hub.files.get((repo, filename))
                return (repo, data) if data is not None else None

            def _headers(self, repo: str, data: bytes, length: int, status: int) -> None:
                self.send_response(status)
                self.send_header("X-Repo-Commit", hub.commits.setdefault(repo, hashlib.sha1(repo.encode()).hexdigest()))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                found = self._lookup()
                if found is None:
                    return self._not_found()
                self._headers(found[0], found[1], len(found[1]), 200)

            def do_GET(self) -> None:
                found = self._lookup()
                if found is None:
                    return self._not_found()
                repo, data = found
                hub.gets.append(self.path)
                ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged[1])
                    end = int(ranged[2]) + 1 if ranged[2] else len(data)
                    body = data[start:end]
                    self._headers(repo, data, len(body), 206)
                else:
                    body = data
                    self._headers(repo, data, len(body), 200)
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.files[(repo, filename)] = data

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
