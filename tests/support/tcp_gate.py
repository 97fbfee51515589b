"""A loopback TCP forwarder that can be shut, as a server going away is seen from outside.

:meth:`TcpGate.shut` closes the listening socket and every connection through it: a client
then has its open connections dropped and new ones refused, as when the server behind stops.
:meth:`TcpGate.open` listens again on the same port, so the client's URL stays right. Bytes
pass through unread. Threads and sockets only, loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpGate:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        #: Connections accepted since the gate was made.
        self.connections = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str) -> TcpGate:
        parts = urlsplit(url)
        return cls((parts.hostname or "127.0.0.1", parts.port or 80))

    def url(self, url: str) -> str:
        """``url`` pointed at the gate (scheme, path and query kept)."""
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"127.0.0.1:{self.port}", parts.path, parts.query,
                           parts.fragment))

    def open(self) -> TcpGate:
        """Listen (again, on the same port once one was chosen) and forward."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def shut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            _close(listener)
        for sock in sockets:
            _close(sock)

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # shut while connecting
                    _close(client)
                    _close(server)
                    return
                self.connections += 1
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    _close(source)
    _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
