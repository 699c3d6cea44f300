"""A TCP proxy that fakes a stalled network (frozen) or a server that is down."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit


class FreezableProxy:
    """A TCP proxy to ``host:port`` whose server-to-client direction can be frozen.

    While frozen, what the server sends is held back (and passed on once thawed):
    the connection stays open and TCP keeps acknowledging the client's data, but
    the client hears nothing - the way a stalled network or a half-open
    connection looks. :meth:`freeze` freezes every connection (the current ones
    and the new ones) or one of them. :meth:`go_down` makes it look like a
    server that is down, until :meth:`come_up`.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._frozen_all = False
        self._down = False
        #: The thawed gate of each connection's server-to-client direction, by the
        #: connection's client port as the server sees it.
        self._gates: dict[int, threading.Event] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self._listener]
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.1)[0]:
                continue
            client, _ = self._listener.accept()
            if self._down:
                client.close()  # what a client of a server that is down sees, or nearly
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                gate = self._gates.get(upstream.getsockname()[1])
                if gate is None:  # not frozen before it was registered
                    gate = self._gates[upstream.getsockname()[1]] = threading.Event()
                    if not self._frozen_all:
                        gate.set()
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, gate)

    def freeze(self, upstream_port: int | None = None) -> None:
        """Hold back everything the server sends from now on.

        With *upstream_port*, only on the connection whose client port, as the
        server sees it, is *upstream_port*; without it, on every connection.
        """
        with self._lock:
            if upstream_port is None:
                self._frozen_all = True
                gates = list(self._gates.values())
            else:
                gates = [self._gates.setdefault(upstream_port, threading.Event())]
            for gate in gates:
                gate.clear()

    def thaw(self) -> None:
        """Let the server's data through again, on every connection."""
        with self._lock:
            self._frozen_all = False
            for gate in self._gates.values():
                gate.set()

    def go_down(self) -> None:
        """Cut every connection and turn new ones away, as a server that is down would."""
        self._down = True
        self.drop_connections()

    def come_up(self) -> None:
        """Accept connections again."""
        self._down = False

    def drop_connections(self) -> None:
        """Cut every proxied connection, as a server restart would."""
        with self._lock:
            sockets = self._sockets[1:]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def url(self, server_url: str) -> str:
        """Return ``server_url`` leading through this proxy."""
        parts = urlsplit(server_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        try:
            while not self._stop.is_set():
                if gate is not None and not gate.wait(0.1):
                    continue
                if not select.select([src], [], [], 0.1)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while gate is not None and not gate.wait(0.1):  # frozen: hold the data back
                    if self._stop.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
