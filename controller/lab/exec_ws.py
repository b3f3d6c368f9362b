"""pods/exec over WebSocket, as kube-apiserver serves it, for the lab's API server.

The framing is RFC 6455's, the minimum of it an exec needs: the opening handshake
(Sec-WebSocket-Key -> Sec-WebSocket-Accept, the subprotocol chosen from the client's list),
frames with 7-, 16- and 64-bit lengths, masked frames from the client (an unmasked one ends the
connection with 1002, as the RFC says), unmasked frames from the server, fragmented messages
(continuation frames), ping answered with pong, close answered with close.

On top of it the channel protocols of Kubernetes' remote command (the official Python client
asks for `v5.channel.k8s.io,v4.channel.k8s.io`, kubectl 1.32 for v5, v4, v3 and v2; we speak v5
and v4): every data message is one channel byte and the bytes of that stream, 0 stdin, 1 stdout,
2 stderr, 3 the command's end as a metav1.Status JSON (Success, or Failure with reason
NonZeroExitCode and the exit code in details.causes[{reason: ExitCode}], as kube-apiserver sends
it), 4 terminal resize (ignored: no TTY here); v5 adds 255 + a channel = that channel is closed
(the client's stdin ended). When the command has ended and its output is sent, the server sends
the status and a close frame; a client that goes away ends the command (SIGKILL to its process
group).

Which commands run, and where, is the caller's: an `ExecRunner` gives the process (the lab runs
them in its agent pods only: controller.lab.agent_pods).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase
from typing import IO, Any, Protocol

from controller.lab.store import ApiError, Store

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # ours, preferred first
V5 = PROTOCOLS[0]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_CHANNEL = 0, 1, 2, 3, 4, 255
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG = 1000, 1002, 1009
MAX_MESSAGE = 16 << 20  # a client message larger than this ends the connection (1009)
CHUNK = 32 << 10

Obj = dict[str, Any]


class ExecRunner(Protocol):
    """Which commands run, and where."""

    def check(self, pod: Obj, container: str) -> None:
        """Raise controller.lab.store.ApiError for a pod or container it runs no commands in."""

    def start(self, pod: Obj, container: str, command: list[str], stdin: bool) -> subprocess.Popen[bytes]:
        """The running command in a new session (ended by its process group), with pipes for
        stdout and stderr (and stdin when wanted); OSError when it cannot start."""
        ...


class ProtocolError(Exception):
    """The peer broke RFC 6455 (the connection is closed with `code`)."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --- RFC 6455 ---------------------------------------------------------------------------------


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


def choose_protocol(offered: Sequence[str]) -> str | None:
    """Our preferred subprotocol among the values of the client's Sec-WebSocket-Protocol headers."""
    names = {p.strip() for value in offered for p in value.split(",") if p.strip()}
    return next((p for p in PROTOCOLS if p in names), None)


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; `mask` (4 bytes) as a client sends them, None as a server does."""
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + _unmask(payload, mask)


def _unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask (its own inverse)."""
    if not data:
        return data
    repeated = (mask * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


def _read_exact(rfile: BufferedIOBase, n: int) -> bytes:
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise EOFError("the connection closed in the middle of a frame")
    return data


def read_frame(rfile: BufferedIOBase, require_mask: bool = True) -> Frame:
    """The next frame from a client (masked, else ProtocolError); EOFError when the connection ended."""
    b0, b1 = _read_exact(rfile, 2)
    if b0 & 0x70:
        raise ProtocolError("reserved bits set without a negotiated extension")
    opcode, masked, n = b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", _read_exact(rfile, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", _read_exact(rfile, 8))
    if opcode >= 0x8 and (n > 125 or not b0 & 0x80):
        raise ProtocolError("a control frame longer than 125 bytes or fragmented")
    if n > MAX_MESSAGE:
        raise ProtocolError(f"a frame of {n} bytes", CLOSE_TOO_BIG)
    if require_mask and not masked:
        raise ProtocolError("an unmasked frame from the client")
    mask = _read_exact(rfile, 4) if masked else b""
    payload = _read_exact(rfile, n)
    return Frame(bool(b0 & 0x80), opcode, _unmask(payload, mask) if masked else payload)


class Connection:
    """The server's side of an open WebSocket: whole messages in, frames out (thread-safe sends)."""

    def __init__(self, rfile: BufferedIOBase, wfile: BufferedIOBase) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self._lock = threading.Lock()
        self.closed = False  # a close frame was sent

    def send(self, opcode: int, payload: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            self.wfile.write(encode_frame(opcode, payload))
            self.wfile.flush()
            self.closed = opcode == OP_CLOSE

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        with contextlib.suppress(OSError):
            self.send(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])

    def receive(self) -> tuple[int, bytes]:
        """The next data message (opcode, payload), pings answered on the way; (OP_CLOSE, payload)
        when the client closes. EOFError when the connection ended, ProtocolError on a broken frame."""
        opcode, parts, size = None, [], 0
        while True:
            frame = read_frame(self.rfile)
            if frame.opcode == OP_PING:
                self.send(OP_PONG, frame.payload)
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode == OP_CLOSE:
                return OP_CLOSE, frame.payload
            if frame.opcode == OP_CONTINUATION:
                if opcode is None:
                    raise ProtocolError("a continuation frame without a message to continue")
            elif frame.opcode in (OP_TEXT, OP_BINARY):
                if opcode is not None:
                    raise ProtocolError("a new message in the middle of a fragmented one")
                opcode = frame.opcode
            else:
                raise ProtocolError(f"unknown opcode {frame.opcode:#x}")
            parts.append(frame.payload)
            size += len(frame.payload)
            if size > MAX_MESSAGE:
                raise ProtocolError(f"a message of more than {MAX_MESSAGE} bytes", CLOSE_TOO_BIG)
            if frame.fin:
                return opcode, b"".join(parts)


# --- the exec session -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecOptions:
    """The query of an exec request (repeated `command`, as kube-apiserver reads it)."""

    command: list[str]
    container: str | None
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> ExecOptions:
        def flag(name: str) -> bool:
            return (query.get(name) or ["false"])[-1].lower() in ("true", "1")

        return cls(
            command=list(query.get("command") or []),
            container=(query.get("container") or [""])[-1] or None,
            stdin=flag("stdin"),
            stdout=flag("stdout"),
            stderr=flag("stderr"),
            tty=flag("tty"),
        )


def exit_status(code: int | None, message: str | None = None) -> Obj:
    """The Status of channel 3 for a command that ended with `code` (or could not start: message)."""
    if code == 0 and message is None:
        return {"metadata": {}, "status": "Success"}
    text = message or f"command terminated with non-zero exit code: exit status {code}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": text,
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code if code is not None else 126)}]},
    }


class ExecSession:
    """One command's streams over an open connection (see the module docstring)."""

    def __init__(self, conn: Connection, protocol: str, options: ExecOptions) -> None:
        self.conn = conn
        self.protocol = protocol
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_gone = threading.Event()

    def run(self, start: Callable[[], subprocess.Popen[bytes]]) -> None:
        try:
            self.proc = start()
        except OSError as exc:
            self._finish(exit_status(127, f"exec failed: {self.options.command[:1]}: {exc.strerror or exc}"))
            return
        reader = threading.Thread(target=self._read_client, name="exec-client", daemon=True)
        reader.start()
        pumps = [
            threading.Thread(target=self._pump, args=(stream, channel), name="exec-out", daemon=True)
            for stream, channel in ((self.proc.stdout, STDOUT), (self.proc.stderr, STDERR))
            if stream is not None
        ]
        for pump in pumps:
            pump.start()
        code = self.proc.wait()
        for pump in pumps:
            pump.join()
        if not self.client_gone.is_set():
            self._finish(exit_status(code))
            reader.join(timeout=2.0)  # the client's close, answering ours

    def _finish(self, status: Obj) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(OP_BINARY, bytes([ERROR]) + json.dumps(status).encode())
        self.conn.close()

    def _pump(self, stream: IO[bytes], channel: int) -> None:
        with stream:
            while chunk := os.read(stream.fileno(), CHUNK):
                if self.client_gone.is_set():
                    continue  # drain: the command must not block on a full pipe
                try:
                    self.conn.send(OP_BINARY, bytes([channel]) + chunk)
                except OSError:
                    self._client_left()

    def _read_client(self) -> None:
        try:
            while True:
                opcode, data = self.conn.receive()
                if opcode == OP_CLOSE:
                    break
                if not data:
                    continue
                channel, body = data[0], data[1:]
                if channel == STDIN:
                    self._to_stdin(body)
                elif channel == CLOSE_CHANNEL and self.protocol == V5 and body[:1] == bytes([STDIN]):
                    self._close_stdin()
        except ProtocolError as exc:
            self.conn.close(exc.code, str(exc))
        except (EOFError, OSError, ValueError):
            pass
        if not self.conn.closed:  # the client ended the session, not us
            self._client_left()
            self.conn.close()

    def _to_stdin(self, body: bytes) -> None:
        stdin = self.proc.stdin if self.proc is not None else None
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(body)
            stdin.flush()
        except OSError:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _client_left(self) -> None:
        self.client_gone.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._close_stdin()


# --- the request --------------------------------------------------------------------------------


def container_of(pod: Obj, options: ExecOptions) -> str:
    """The container an exec runs in (named, or the pod's only one); 400 as kube-apiserver says it."""
    name = pod["metadata"]["name"]
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    container = options.container or (names[0] if len(names) == 1 else None)
    if container is None:
        raise ApiError(
            400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: {names}"
        )
    if container not in names:
        raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
    if not options.command:
        raise ApiError(400, "BadRequest", "you must specify at least 1 command")
    return container


def serve(
    handler: BaseHTTPRequestHandler, store: Store, runner: ExecRunner | None, namespace: str, name: str
) -> None:
    """Answer GET/POST .../pods/NAME/exec on `handler`'s connection: refusals are ApiErrors (plain
    HTTP errors, as kube-apiserver answers before the upgrade), else 101 and the session."""
    options = ExecOptions.from_query(urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query))
    pod = store.get("pods", namespace, name)
    if pod is None:
        raise ApiError(404, "NotFound", f'pods "{name}" not found')
    container = container_of(pod, options)
    if runner is None:
        raise ApiError(400, "BadRequest", "this API server runs no commands (lab up --agent-pods)")
    runner.check(pod, container)  # before the upgrade check: kubectl retries a failed upgrade with SPDY
    key = handler.headers.get("Sec-WebSocket-Key")
    if (handler.headers.get("Upgrade") or "").lower() != "websocket" or not key:
        raise ApiError(
            400, "BadRequest", "Upgrade request required (the lab serves exec over WebSocket only)"
        )
    protocol = choose_protocol(handler.headers.get_all("Sec-WebSocket-Protocol") or [])
    if protocol is None:
        raise ApiError(
            400, "BadRequest", f"no supported subprotocol offered (supported: {', '.join(PROTOCOLS)})"
        )
    spawned: subprocess.Popen[bytes] | OSError
    try:
        spawned = runner.start(pod, container, options.command, options.stdin)
    except OSError as exc:  # could not start: reported on channel 3, as kubelet's runtime does
        spawned = exc
    handler.send_response(101)
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept_key(key))
    handler.send_header("Sec-WebSocket-Protocol", protocol)
    handler.end_headers()
    handler.wfile.flush()

    def start() -> subprocess.Popen[bytes]:
        if isinstance(spawned, OSError):
            raise spawned
        return spawned

    ExecSession(Connection(handler.rfile, handler.wfile), protocol, options).run(start)
