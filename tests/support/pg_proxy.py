"""A loopback TCP proxy in front of PostgreSQL that cuts a connection as a batch's COMMIT goes
out, so the client never hears whether it landed.

It reads the client->server stream as PostgreSQL protocol messages (one type byte and a
length, after the untyped start-up messages) and forwards them. A transaction that moves a
checkpoint row (an ``UPDATE consumer_checkpoints``) is a checkpoint batch; its
COMMIT is counted, whether a simple ``Query`` (psycopg sends a statement without parameters
that way), a ``Parse`` in a pipeline behind the row update (then its ``Bind``, ``Execute``
and the pipeline's ``Sync`` follow), or the end of one query string holding the row update
and the COMMIT (the store's ``send_close``), and every ``cut_every``-th one, up to ``max_cuts``, is
followed by dropping the connection on both sides. Alternately the COMMIT is forwarded first
(it lands: the batch is committed while the client sees a broken connection) or withheld (the
server sees the client vanish and rolls back); the client cannot tell which. ``landed`` and
``withheld`` count each kind. Threads and sockets only, loopback only, bounded in connections.

Connect through it with ``sslmode=disable`` (see :func:`proxied_url`): an encrypted stream
cannot be read.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

#: How a checkpoint batch's row update begins: alone (a simple or extended query), or guarded
#: so that a COMMIT behind it is skipped when a row is fenced: the rows joined over ``unnest``
#: (``WITH moved AS (UPDATE …``), or each row by its key (``WITH m0 AS (UPDATE …``).
_CHECKPOINT_UPDATE = re.compile(rb"(WITH \w+ AS \()?UPDATE CONSUMER_CHECKPOINTS\b")

#: Untyped start-up requests after which the client sends another untyped message.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


def proxied_url(url: str, port: int) -> str:
    """``url`` (postgresql://user:pw@host:port/db?...) pointed at the proxy on ``port``."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    query = "&".join(filter(None, [parts.query, "sslmode=disable", "gssencmode=disable"]))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass
class CommitCutProxy:
    upstream: tuple[str, int]
    cut_every: int = 2
    max_cuts: int = 5
    max_connections: int = 64
    cuts: int = 0
    landed: int = 0
    withheld: int = 0
    batch_commits: int = 0
    connections: int = 0
    _listener: socket.socket | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def for_url(cls, url: str, **options: int) -> CommitCutProxy:
        parts = urlsplit(url)
        return cls((parts.hostname or "127.0.0.1", parts.port or 5432), **options)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def start(self) -> CommitCutProxy:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self._listener = listener
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.connections >= self.max_connections:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._sockets += [client, server]
            self._spawn(self._client_to_server, client, server)
            self._spawn(self._server_to_client, server, client)

    def _server_to_client(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := server.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        stream = _MessageStream()
        in_batch = False
        cut_after_sync = False  # a pipelined COMMIT that lands: cut once its Sync is sent
        try:
            while chunk := client.recv(65536):
                # One send per chunk, as the client wrote it: a send per message would meet
                # Nagle's algorithm and the server's delayed ACKs (40 ms a statement).
                out = bytearray()
                for kind, message in stream.feed(chunk):
                    statement = _statement(message) if kind in (b"Q", b"P") else b""
                    if kind == b"Q" and _CHECKPOINT_UPDATE.match(statement) \
                            and statement.endswith(b"; COMMIT"):
                        cut = self._cut()  # the rows and COMMIT in one query string
                        if cut == "withheld":
                            server.sendall(out)
                            return
                        if cut == "landed":
                            server.sendall(out + message)
                            return
                        out += message
                        continue
                    if _CHECKPOINT_UPDATE.match(statement):
                        in_batch = True
                    if kind in (b"Q", b"P") and statement in (b"COMMIT", b"ROLLBACK") \
                            and in_batch:
                        in_batch = False
                        cut = self._cut() if statement == b"COMMIT" else None
                        if cut == "withheld":
                            server.sendall(out)
                            return
                        if cut == "landed" and kind == b"Q":
                            server.sendall(out + message)
                            return
                        cut_after_sync = cut == "landed"  # extended: its Bind, Execute, Sync
                    out += message
                    if kind == b"S" and cut_after_sync:
                        server.sendall(out)
                        return
                server.sendall(out)
        except OSError:
            pass
        finally:
            _close(server)
            _close(client)

    def _cut(self) -> str | None:
        """None (forward as usual), "landed" (forward, then cut) or "withheld" (cut now)."""
        with self._lock:
            self.batch_commits += 1
            if self.cuts >= self.max_cuts or self.batch_commits % self.cut_every:
                return None
            self.cuts += 1
            if self.cuts % 2:
                self.landed += 1
                return "landed"
            self.withheld += 1
            return "withheld"


def _statement(message: bytes) -> bytes:
    """The SQL of a Query or Parse message, upper-cased and stripped."""
    body = message[5:]
    if message[:1] == b"P":
        body = body.split(b"\0", 1)[1]
    return body.split(b"\0", 1)[0].strip(b"; \n\t").upper()


class _MessageStream:
    """Splits the client's byte stream into whole protocol messages: (type, bytes); the type
    is empty for the untyped start-up messages."""

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += chunk
        messages = []
        while True:
            if not self._started:
                if len(self._buffer) < 8:
                    break
                length, code = struct.unpack("!II", self._buffer[:8])
                if len(self._buffer) < length:
                    break
                messages.append((b"", self._buffer[:length]))
                self._buffer = self._buffer[length:]
                self._started = code not in (_SSL_REQUEST, _GSSENC_REQUEST)
                continue
            if len(self._buffer) < 5:
                break
            (length,) = struct.unpack("!I", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                break
            messages.append((self._buffer[:1], self._buffer[:1 + length]))
            self._buffer = self._buffer[1 + length:]
        return messages


def _close(sock: socket.socket) -> None:
    """Shut down (which wakes the other pump blocked in recv on it), then close."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
