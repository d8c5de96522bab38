"""Reverse port forwarding over an SSH transport, with half-closes passed through.

A board's device server dials ``127.0.0.1:P`` on the board; sshd hands each
such connection to us as a channel and we splice it to the tracker's address
on this side. The splice must forward *half*-closes: when one side finishes
sending (EOF) the other side's write half is shut, and reading goes on. A
request/response peer that sends, shuts its write side and then waits for the
answer would otherwise lose the reply.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

BUFSIZE = 64 * 1024


def splice(chan: Any, sock: socket.socket, stop: threading.Event | None = None) -> None:
    """Copy bytes both ways between a paramiko channel and a socket until both ends finish.

    Channel EOF → ``sock.shutdown(SHUT_WR)``; socket EOF → ``chan.shutdown_write()``.
    """
    chan_reading = sock_reading = True
    try:
        while chan_reading or sock_reading:
            if stop is not None and stop.is_set():
                break
            watch = ([chan] if chan_reading else []) + ([sock] if sock_reading else [])
            ready, _, _ = select.select(watch, [], [], 0.5)
            if chan in ready:
                data = chan.recv(BUFSIZE)
                if data:
                    sock.sendall(data)
                else:
                    chan_reading = False
                    sock.shutdown(socket.SHUT_WR)
            if sock in ready:
                data = sock.recv(BUFSIZE)
                if data:
                    chan.sendall(data)
                else:
                    sock_reading = False
                    chan.shutdown_write()
            if chan.closed and chan_reading:  # torn down without an EOF (connection lost)
                break
    except (OSError, EOFError) as e:
        log.debug("tunnel splice ended: %s", e)
    finally:
        for close in (sock.close, chan.close):
            try:
                close()
            except Exception:  # closing a half-dead pair must not mask the reason it died
                pass


class ReverseForward:
    """``remote 127.0.0.1:port`` → ``target`` on this side, over one SSH transport."""

    def __init__(self, transport: Any, target: tuple[str, int], *, connect_timeout: float = 10.0) -> None:
        self.transport = transport
        self.target = target
        self.connect_timeout = connect_timeout
        self.remote_port = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def open(self, remote_port: int = 0) -> int:
        """Ask the remote sshd to listen on loopback; return the port it bound."""
        self.remote_port = int(self.transport.request_port_forward("127.0.0.1", remote_port, handler=self._on_channel))
        log.debug("reverse forward remote 127.0.0.1:%d -> %s:%d", self.remote_port, *self.target)
        return self.remote_port

    def _on_channel(self, chan: Any, origin: tuple[str, int], server: tuple[str, int]) -> None:
        # Called on paramiko's transport thread: never block it, splice elsewhere.
        t = threading.Thread(target=self._serve, args=(chan,), name=f"tunnel-{server[1]}", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _serve(self, chan: Any) -> None:
        try:
            sock = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError as e:
            log.warning("tunnel: cannot reach %s:%d: %s", *self.target, e)
            chan.close()
            return
        sock.settimeout(None)
        splice(chan, sock, self._stop)

    def close(self) -> None:
        self._stop.set()
        if self.remote_port and self.transport.is_active():
            try:
                self.transport.cancel_port_forward("127.0.0.1", self.remote_port)
            except Exception as e:  # the transport may be dying under us; nothing left to cancel
                log.debug("cancel_port_forward: %s", e)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=2.0)
