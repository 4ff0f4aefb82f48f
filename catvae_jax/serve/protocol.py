"""The HTTP/1.1 connections under the app: uvicorn's h11 protocol with a read timeout and JSON
errors for requests that cannot be parsed.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`) but waits
forever for a request that does not arrive: a client that connects and says nothing, stops
in the middle of its headers, or stops sending its body (a half-open connection: the peer
vanished without closing) holds a connection, and mid-upload a request, until the server
stops. Here every wait for a client's bytes ends after `read_timeout` seconds without any: the
connection is closed (a request whose body was being read ends as a 499, `app`). And a request
h11 cannot parse (`Content-Length: -5`, a bad request line, headers over h11's limit) gets a
JSON 400 like every other bad request, not uvicorn's plain-text one.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_READ_TIMEOUT = 30.0


class Protocol(H11Protocol):
    """`H11Protocol` whose waits for the client's bytes time out (`read_timeout`, seconds)."""

    read_timeout: float = DEFAULT_READ_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._restart_read_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._restart_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when h11 cannot parse the request: a JSON 400, then close."""
        body = json.dumps({"error": "malformed HTTP request (request line or headers)"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _restart_read_timer(self) -> None:
        """Runs the timer while a request is incomplete (its head or body still to come), from
        the last bytes received; stops it once the request is complete (the app is working)."""
        self._stop_read_timer()
        waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if waiting and not self.transport.is_closing():
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def with_read_timeout(seconds: float) -> type[Protocol]:
    """uvicorn's `http` protocol class: `Protocol` with `read_timeout = seconds`."""
    return type("Protocol", (Protocol,), {"read_timeout": seconds})
