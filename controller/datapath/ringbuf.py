"""A consumer for a pinned BPF ring buffer (vg_events) in pure Python: mmap + positions.

Layout (kernel/bpf/ringbuf.c, as libbpf's ring_buffer__new uses it): the first page of the map
fd is the consumer position (read-write); from the second page on come the producer position
page and then the data area, mapped twice in a row so a record that wraps reads contiguously.
Each record starts with an 8-byte header: u32 length with BUSY (bit 31: still being written)
and DISCARD (bit 30) flags, and a u32 page offset; records are 8-byte aligned.

There is one consumer position per ring: two readers of the same ring share the events between
them (each event is delivered to one of them). So the agent is the ring's only reader
(controller.agent.flows) and serves the events to any number of readers; `vethguard observe`
reads a ring itself only where no agent serves its node.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import struct

from controller.datapath import bpfsys

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8


class RingBuffer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = bpfsys.obj_get(path)
        try:
            info = bpfsys.BpfMapInfo()
            bpfsys.obj_info(self.fd, info)
            self.size = int(info.max_entries)
            if self.size <= 0 or self.size & (self.size - 1):
                raise ValueError(f"{path}: not a ring buffer (max_entries {self.size})")
            page = mmap.PAGESIZE
            self._page = page
            self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(
                self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cons.close()
            self._prod.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pending(self) -> int:
        """Bytes written by the producer and not consumed yet."""
        (cons,) = struct.unpack_from("<Q", self._cons, 0)
        (prod,) = struct.unpack_from("<Q", self._prod, 0)
        return int(prod - cons)

    def read(self, limit: int = 1 << 20) -> list[bytes]:
        """Consume every complete record available now (oldest first), up to `limit` records."""
        (cons,) = struct.unpack_from("<Q", self._cons, 0)
        (prod,) = struct.unpack_from("<Q", self._prod, 0)
        mask = self.size - 1
        out: list[bytes] = []
        while cons < prod and len(out) < limit:
            off = self._page + (cons & mask)
            (hdr,) = struct.unpack_from("<I", self._prod, off)
            if hdr & BUSY_BIT:
                break  # the producer has not committed it yet; later records wait behind it
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if not hdr & DISCARD_BIT:
                out.append(bytes(self._prod[off + HDR_SIZE : off + HDR_SIZE + length]))
            cons += (length + HDR_SIZE + 7) & ~7
        struct.pack_into("<Q", self._cons, 0, cons)
        return out


def wait_any(rings: list[RingBuffer], timeout: float) -> None:
    """Block until one of the rings signals data or `timeout` seconds pass (epoll on map fds)."""
    poller = select.poll()
    for r in rings:
        poller.register(r.fd, select.POLLIN)
    poller.poll(int(timeout * 1000))
