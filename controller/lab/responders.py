"""Servers on every declared port of every lab pod and external host, in one selector thread.

Sockets are created on a short-lived thread inside the target namespace and keep that
namespace for their whole life, so a single loop in the lab daemon serves every namespace:
TCP accepts, answers an HTTP request with 200 and closes, UDP echoes (replying from the address
the datagram was sent to), and
SCTP INITs are answered with an INIT-ACK (or an ABORT for an undeclared port) over raw sockets,
for IPv4 and IPv6. Everything binds to the wildcard address, so every address of the namespace
answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controller.lab import netns, sctp

log = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
Port = tuple[int, str]  # (port, protocol)
Handler = Callable[[socket.socket], object]


@dataclass
class Endpoint:
    """The sockets serving one namespace."""

    netns: str
    ports: frozenset[Port]
    sockets: list[socket.socket] = field(default_factory=list)


def _tcp_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(512)
    return sock


def _udp_sockets(port: int) -> list[socket.socket]:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    v4.bind(("0.0.0.0", port))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    v6.bind(("::", port))
    return [v4, v6]


def _sctp_sockets() -> list[socket.socket]:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, sctp.IPPROTO_SCTP)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, sctp.IPPROTO_SCTP)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    return [v4, v6]


def open_sockets(ports: Iterable[Port]) -> list[socket.socket]:
    """All the sockets for these ports, in the calling thread's namespace (non-blocking)."""
    sockets: list[socket.socket] = []
    try:
        for port, protocol in sorted(set(ports)):
            if protocol == "TCP":
                sockets.append(_tcp_listener(port))
            elif protocol == "UDP":
                sockets.extend(_udp_sockets(port))
        sockets.extend(_sctp_sockets())  # always: undeclared SCTP ports get an ABORT
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.setblocking(False)
    return sockets


# --- per-packet handlers ----------------------------------------------------------------------


HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ")
HTTP_BODY = b"vethguard lab responder\n"
HTTP_RESPONSE = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(HTTP_BODY), HTTP_BODY)
)


def _accept(sock: socket.socket) -> socket.socket | None:
    """Accept one connection; the loop then waits for its first bytes (`_answer_tcp`)."""
    with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionAbortedError):
        conn, _ = sock.accept()
        conn.setblocking(False)
        return conn
    return None


def _answer_tcp(conn: socket.socket) -> None:
    """First bytes of a connection: an HTTP request gets a small 200 answer (so curl and wget
    work against any declared TCP port); anything else, or EOF, just closes it."""
    with contextlib.suppress(OSError):
        data = conn.recv(65535)
        if data.startswith(HTTP_METHODS):
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(HTTP_RESPONSE)
            conn.shutdown(socket.SHUT_WR)
    conn.close()


def _echo_udp(sock: socket.socket) -> None:
    try:
        data, ancdata, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(32))
    except (BlockingIOError, InterruptedError, ConnectionRefusedError):
        return
    reply_cmsg = []
    for level, kind, cdata in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= 12:
            reply_cmsg.append((level, kind, struct.pack("=i4s4s", 0, cdata[8:12], bytes(4))))
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(cdata) >= 20:
            reply_cmsg.append((level, kind, cdata[:16] + struct.pack("=I", 0)))
    with contextlib.suppress(OSError):
        sock.sendmsg([data], reply_cmsg, 0, addr)


def _sctp_reply(request: sctp.Parsed, ports: frozenset[Port]) -> bytes | None:
    if request.chunk_type != sctp.CHUNK_INIT or request.vtag != 0:
        return None
    if (request.dport, "SCTP") in ports:
        return sctp.init_ack(request)
    return sctp.abort_for_init(request)


def _answer_sctp(sock: socket.socket, ports: frozenset[Port]) -> None:
    try:
        data, ancdata, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(32))
    except (BlockingIOError, InterruptedError):
        return
    if sock.family == socket.AF_INET:
        split = sctp.strip_ipv4_header(data)
        if split is None:
            return
        _src, dst, payload = split
        cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, bytes(4)))]
    else:
        payload = data
        cmsg = [
            (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, cdata[:16] + struct.pack("=I", 0))
            for level, kind, cdata in ancdata
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(cdata) >= 20
        ]
    request = sctp.parse(payload)
    reply = _sctp_reply(request, ports) if request is not None else None
    if reply is not None:
        with contextlib.suppress(OSError):
            sock.sendmsg([reply], cmsg, 0, (addr[0], 0))


def handler_for(sock: socket.socket, ports: frozenset[Port]) -> Handler:
    if sock.type == socket.SOCK_STREAM:
        return _accept
    if sock.type == socket.SOCK_DGRAM:
        return _echo_udp
    return lambda s: _answer_sctp(s, ports)


# --- the loop ---------------------------------------------------------------------------------


class Responders:
    """Owns every responder socket of a lab; `add`/`remove` are safe from any thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._endpoints: dict[str, Endpoint] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="responders", daemon=True)

    def start(self) -> Responders:
        self._thread.start()
        return self

    def add(self, key: str, namespace: str, ports: Iterable[Port]) -> None:
        """Serve `ports` inside `namespace`, replacing what `key` served before."""
        wanted = frozenset(ports)
        self.remove(key)
        sockets = netns.run_in_netns(namespace, lambda: open_sockets(wanted))
        endpoint = Endpoint(namespace, wanted, sockets)
        with self._lock:
            self._endpoints[key] = endpoint
            for sock in sockets:
                self._selector.register(sock, selectors.EVENT_READ, handler_for(sock, wanted))
        self._wake()

    def remove(self, key: str) -> None:
        with self._lock:
            endpoint = self._endpoints.pop(key, None)
            if endpoint is None:
                return
            for sock in endpoint.sockets:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                sock.close()
        self._wake()

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._endpoints)

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for key in self.keys():
            self.remove(key)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _track(self, conn: socket.socket | None) -> None:
        if conn is not None:
            self._selector.register(conn, selectors.EVENT_READ, _answer_tcp)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                events = self._selector.select(timeout=1.0)
            except OSError:
                continue
            with self._lock:
                for key, _mask in events:
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    sock = key.fileobj
                    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
                        continue
                    try:
                        if key.data is _accept:
                            self._track(_accept(sock))
                        elif key.data is _answer_tcp:
                            self._selector.unregister(sock)
                            _answer_tcp(sock)
                        else:
                            key.data(sock)
                    except Exception:
                        log.exception("responder error on %s", sock)
