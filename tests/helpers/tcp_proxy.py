"""A TCP proxy a test can cut and restore, or stall and heal, to take a client
offline while the broker (and the subscribers on it) keep running.

`cut()` closes the connections: the client notices at once. `stall()` is a network
that silently drops packets: connections stay open but nothing gets through, so
only the client's keepalive can notice.
"""

from __future__ import annotations

import socket
import threading
from typing import List, Optional


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self._listener: Optional[socket.socket] = None
        self._conns: List[socket.socket] = []
        self._lock = threading.Lock()
        self._stalled = False
        self.restore()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def restore(self) -> None:
        """Listen (again, on the same port) and forward new connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def cut(self) -> None:
        """Drop every forwarded connection and refuse new ones until restore()."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            except OSError:
                pass
            listener.close()
        _close_all(conns)

    close = cut

    def stall(self) -> None:
        """From now on nothing gets through, on old or new connections (a black hole)."""
        self._stalled = True

    def heal(self) -> None:
        """Bytes flow again; connections that lived through the stall are closed, as
        their bytes were lost (the client has usually given up on them already)."""
        with self._lock:
            self._stalled = False
            conns, self._conns = self._conns, []
        _close_all(conns)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self._stalled:
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _close_all(conns: List[socket.socket]) -> None:
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()
