"""An authenticating gateway in front of the real schema registry, as platforms put one: every
request needs ``Authorization: Bearer <token>`` with a token the gateway knows, and is then
passed on to the registry unchanged; ``POST /token`` is an OAuth 2 token endpoint issuing
tokens for one client's credentials (``client_credentials`` grant, the client authenticated
by HTTP basic auth or in the form). It counts what it refused and issued, and keeps the
``target-sr-cluster`` headers it saw."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RegistryGateway:
    def __init__(self, registry_url: str, *, client_id: str, client_secret: str,
                 static_token: str) -> None:
        self._registry = registry_url.rstrip("/")
        self._client = (client_id, client_secret)
        self._tokens = {static_token}
        self._lock = threading.Lock()
        #: Requests refused for want of a known token, and tokens issued at /token.
        self.refused = 0
        self.issued = 0
        self.scopes: list[str] = []
        self.clusters: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RegistryGateway:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _issue(self, form: dict[str, list[str]], authorization: str) -> str | None:
        """A new token for the client's credentials, else None."""
        client = (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            client = (urllib.parse.unquote(user), urllib.parse.unquote(password))
        if form.get("grant_type") != ["client_credentials"] or client != self._client:
            return None
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens.add(token)
            self.issued += 1
            self.scopes.append(form.get("scope", [""])[0])
        return token

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._pass_on()

            def do_POST(self) -> None:
                if self.path == "/token":
                    self._token()
                else:
                    self._pass_on()

            def do_PUT(self) -> None:
                self._pass_on()

            def _token(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = urllib.parse.parse_qs(body.decode())
                token = gateway._issue(form, self.headers.get("Authorization", ""))
                if token is None:
                    self._send(401, "application/json", b'{"error": "invalid_client"}')
                    return
                self._send(200, "application/json", json.dumps(
                    {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
                ).encode())

            def _pass_on(self) -> None:
                authorization = self.headers.get("Authorization", "")
                with gateway._lock:
                    known = (authorization.startswith("Bearer ")
                             and authorization[7:] in gateway._tokens)
                    if not known:
                        gateway.refused += 1
                    gateway.clusters.add(self.headers.get("target-sr-cluster", ""))
                if not known:
                    self._send(401, "application/json",
                               b'{"error_code": 401, "message": "unauthorized"}')
                    return
                length = int(self.headers.get("Content-Length", 0))
                request = urllib.request.Request(
                    gateway._registry + self.path, method=self.command,
                    data=self.rfile.read(length) if length else None,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("content-type", "accept")})
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        self._send(answer.status, answer.headers.get("Content-Type", ""),
                                   answer.read())
                except urllib.error.HTTPError as error:
                    self._send(error.code, error.headers.get("Content-Type", ""), error.read())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
