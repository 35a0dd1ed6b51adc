"""A real HTTP server on 127.0.0.1 that serves shared-data files at archive URLs.

Routes map a request path (query included) to a local file. It honours `Range: bytes=N-` like
the real archives, records every request, and can break a transfer half-way to test resuming.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class ArchiveServer:
    routes: dict[str, Path]
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    break_after: int | None = None  # bytes sent before dropping the connection
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ArchiveServer:
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                archive.requests.append((self.path, self.headers.get("Range")))
                source = archive.routes.get(self.path)
                if source is None:
                    self.send_error(404)
                    return
                body = source.read_bytes()
                start = _range_start(self.headers.get("Range"))
                if start >= len(body) > 0 and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                payload = body[start:]
                if archive.break_after is not None:
                    payload = payload[: archive.break_after]
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes="):
        return 0
    return int(header.removeprefix("bytes=").split("-", 1)[0])
