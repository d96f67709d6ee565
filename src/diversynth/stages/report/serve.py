"""`diversynth report --serve`: the static site over HTTP, on 127.0.0.1 only."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # one line per request is noise here
        pass


def make_server(site: Path, port: int) -> ThreadingHTTPServer:
    """A server for `site` bound to loopback (port 0 picks a free one)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)
