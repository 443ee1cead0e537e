"""A TCP relay in front of the real Postgres whose behaviour a test switches: the database as the
capture sees it, passing, stalled (connections accepted, never answered) or down (refused)."""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

MODES = ("pass", "stall", "down")


class FaultyProxy:
    """Listens on 127.0.0.1:<free port>; relays to the server of `target_url` (TCP or Unix socket)."""

    def __init__(self, target_url: str) -> None:
        info = conninfo_to_dict(target_url)
        host, port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)
        self._target: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") else (socket.AF_INET, (host, port))
        )
        self._target_url = target_url
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._mode = "pass"
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self) -> str:
        """The target URL with host and port replaced by this relay's."""
        parts = urlsplit(self._target_url)
        user = parts.netloc.rpartition("@")[0]
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith(("host=", "port=")))
        return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{self.port}", parts.path, query, ""))

    def set_mode(self, mode: str) -> None:
        """Switch; leaving `pass` cuts every relayed connection (the server went away)."""
        assert mode in MODES
        with self._lock:
            self._mode = mode
            if mode != "pass":
                for sock in self._open:
                    _close(sock)
                self._open.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.set_mode("down")
        self._listener.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                mode = self._mode
                if mode == "down":
                    _close(client)
                    continue
                self._open.append(client)
            if mode == "pass":
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()
            # "stall": held open, never read, never answered

    def _relay(self, client: socket.socket) -> None:
        family, address = self._target
        server = socket.socket(family, socket.SOCK_STREAM)
        try:
            server.connect(address)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open.append(server)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
