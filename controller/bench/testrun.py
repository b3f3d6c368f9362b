"""BPF_PROG_TEST_RUN through bpf(2) with ctypes (bcc does not expose it).

The kernel runs a tc program on a packet built from the given Ethernet frame. With a
__sk_buff context, `ifindex` selects skb->dev: it is resolved in the CALLER's network
namespace (1 = lo), so an endpoint keyed by ifindex 1 matches test packets run with ifindex 1.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import ClassVar

from controller.datapath.bpfsys import BPF_PROG_TEST_RUN, bpf

SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff) on 6.x
SKB_CTX_IFINDEX_OFF = 40  # offsetof(struct __sk_buff, ifindex)
SKB_CTX_INGRESS_IFINDEX_OFF = 36  # offsetof(struct __sk_buff, ingress_ifindex): skb->skb_iif
SKB_CTX_MARK_OFF = 8


class _TestRunAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RunResult:
    retval: int  # the program's return value (TC_ACT_OK 0, TC_ACT_SHOT 2)
    duration_ns: int  # kernel-measured average per repeat
    data_out: bytes
    mark: int = 0  # skb->mark after the program (with a __sk_buff context)


def skb_ctx(ifindex: int = 0, mark: int = 0, ingress_ifindex: int = 0) -> bytes:
    """A __sk_buff with only the fields test_run accepts set (the rest must be zero)."""
    buf = bytearray(SKB_CTX_SIZE)
    buf[SKB_CTX_IFINDEX_OFF : SKB_CTX_IFINDEX_OFF + 4] = ifindex.to_bytes(4, "little")
    buf[SKB_CTX_INGRESS_IFINDEX_OFF : SKB_CTX_INGRESS_IFINDEX_OFF + 4] = ingress_ifindex.to_bytes(4, "little")
    buf[SKB_CTX_MARK_OFF : SKB_CTX_MARK_OFF + 4] = mark.to_bytes(4, "little")
    return bytes(buf)


def test_run(
    prog_fd: int,
    packet: bytes,
    *,
    ifindex: int | None = None,
    repeat: int = 1,
    mark: int = 0,
    ingress_ifindex: int = 0,
) -> RunResult:
    """Run prog_fd once (or `repeat` times) on `packet` (an Ethernet frame), with skb->mark = mark
    and skb->skb_iif = ingress_ifindex (the interface it arrived on; 0: the node sent it)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    out_len = max(len(packet), 64) + 256
    data_out = ctypes.create_string_buffer(out_len)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_size_out=out_len,
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=repeat,
    )
    ctx_out = ctypes.create_string_buffer(SKB_CTX_SIZE)
    if ifindex is not None or mark or ingress_ifindex:
        ctx = ctypes.create_string_buffer(skb_ctx(ifindex or 0, mark, ingress_ifindex), SKB_CTX_SIZE)
        attr.ctx_in = ctypes.addressof(ctx)
        attr.ctx_size_in = SKB_CTX_SIZE
        attr.ctx_out = ctypes.addressof(ctx_out)
        attr.ctx_size_out = SKB_CTX_SIZE
    bpf(BPF_PROG_TEST_RUN, attr)
    return RunResult(
        retval=int(attr.retval),
        duration_ns=int(attr.duration),
        data_out=data_out.raw[: attr.data_size_out],
        mark=int.from_bytes(ctx_out.raw[SKB_CTX_MARK_OFF : SKB_CTX_MARK_OFF + 4], "little")
        if attr.ctx_size_out
        else 0,
    )


# pytest would collect a module-level function named test_*; keep the public name readable.
test_run.__test__ = False  # type: ignore[attr-defined]
run = test_run
