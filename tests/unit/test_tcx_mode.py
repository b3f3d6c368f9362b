"""The pod attach mode (controller/datapath/tcx.py) and the bpf(2) attribute layouts of the tcx
link commands (controller/datapath/bpflinks.py), without root."""

from __future__ import annotations

import ctypes

import pytest

from controller.cni import plugin
from controller.core.errors import VethguardError
from controller.datapath import bpflinks, tcx


@pytest.fixture
def with_tcx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcx, "tcx_supported", lambda: True)


@pytest.fixture
def without_tcx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcx, "tcx_supported", lambda: False)


def test_clsact_is_the_default_even_where_the_kernel_has_tcx(with_tcx: None) -> None:
    assert tcx.attach_mode(environ={}) == "clsact"
    assert tcx.attach_mode(environ={tcx.ATTACH_ENV: " TCX "}) == "tcx"
    assert tcx.attach_mode("clsact", environ={tcx.ATTACH_ENV: "tcx"}) == "clsact"  # the CNI key wins


def test_a_bad_mode_is_an_error_naming_the_setting_it_came_from(with_tcx: None) -> None:
    with pytest.raises(VethguardError, match=r"VETHGUARD_TC_ATTACH='xdp': expected one of tcx, clsact"):
        tcx.attach_mode(environ={tcx.ATTACH_ENV: "xdp"})
    with pytest.raises(VethguardError, match=r"tcAttach='bpf'"):
        tcx.attach_mode("bpf", environ={})


def test_tcx_on_a_kernel_without_it_is_an_error_not_a_silent_fallback(without_tcx: None) -> None:
    with pytest.raises(VethguardError, match=r"VETHGUARD_TC_ATTACH=tcx: this kernel has no tcx hooks"):
        tcx.attach_mode(environ={tcx.ATTACH_ENV: "tcx"})
    assert tcx.attach_mode(environ={}) == "clsact"


def test_the_pod_attacher_follows_the_mode(with_tcx: None, tmp_path: object) -> None:
    from pathlib import Path

    pins = Path(str(tmp_path))
    links = tcx.pod_attacher(pins, mode="tcx")
    assert isinstance(links, tcx.TcxAttacher) and links.links_dir == pins / "links"
    assert isinstance(tcx.pod_attacher(pins, mode="clsact"), tcx.ClsactPodAttacher)
    assert tcx.pin_name(4026531840, 7, "ingress") == "4026531840-7-ingress"


def test_a_cni_tc_attach_that_is_not_a_string_is_an_invalid_configuration() -> None:
    with pytest.raises(plugin.CniError) as err:
        plugin._tc_attach({"tcAttach": ["tcx"]})
    assert err.value.code == plugin.ERR_INVALID_CONFIG and "tcAttach must be a string" in err.value.msg
    assert plugin._tc_attach({}) is None and plugin._tc_attach({"tcAttach": "tcx"}) == "tcx"


@pytest.mark.parametrize(
    ("struct", "offsets", "size"),
    [
        # union bpf_attr, BPF_PROG_QUERY (include/uapi/linux/bpf.h, 6.6+)
        (
            bpflinks._QueryAttr,
            {
                "target_ifindex": 0,
                "attach_type": 4,
                "prog_ids": 16,
                "count": 24,
                "link_ids": 40,
                "revision": 56,
            },
            64,
        ),
        # BPF_LINK_CREATE with its tcx member: relative_fd at 16, expected_revision at 24
        (
            bpflinks._LinkCreateAttr,
            {
                "prog_fd": 0,
                "target_ifindex": 4,
                "attach_type": 8,
                "flags": 12,
                "relative_fd": 16,
                "expected_revision": 24,
            },
            32,
        ),
        (bpflinks._LinkUpdateAttr, {"link_fd": 0, "new_prog_fd": 4, "flags": 8, "old_prog_fd": 12}, 16),
        # struct bpf_link_info: type, id, prog_id, then the 8-aligned union whose tcx is ifindex, attach_type
        (
            bpflinks.BpfLinkInfo,
            {"type": 0, "id": 4, "prog_id": 8, "tcx_ifindex": 16, "tcx_attach_type": 20},
            40,
        ),
    ],
)
def test_the_bpf_attribute_structs_have_the_kernels_offsets(
    struct: type[ctypes.Structure], offsets: dict[str, int], size: int
) -> None:
    assert {name: getattr(struct, name).offset for name in offsets} == offsets
    assert ctypes.sizeof(struct) == size
