"""vethguard-cni against the real kernel, with no agent running: the plugin, executed as a
container runtime executes it (environment, configuration on stdin, in the node's network
namespace), attaches the pinned programs to a new veth and writes its endpoint PENDING, so the
pod's first packet is already dropped. Every case runs both builds: the Python module the lab
calls and the static Go binary deploy/ installs on nodes (cni/, built here with `go build`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.core.verdicts import DIR_EGRESS
from controller.datapath import abi, bpflinks, codecs
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from controller.datapath.tcx import netns_inode
from tests.support.netns_util import VethPair, in_netns, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.bcc]

REPO = Path(__file__).resolve().parents[2]
STATE: dict[str, Path] = {}  # the current test's stateDir (never this machine's /run/vethguard)


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path) -> Path:
    STATE["dir"] = tmp_path / "state"
    return STATE["dir"]


@pytest.fixture(scope="session")
def go_plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("cni") / "vethguard-cni"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOCACHE": str(out.parent / "cache"),
        "GOPATH": str(out.parent / "gopath"),
    }
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(out), "."],
        cwd=REPO / "cni",
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(out)


@pytest.fixture(params=["python", "go"])
def plugin(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "go":
        return [request.getfixturevalue("go_plugin")]
    return [sys.executable, "-m", "controller.cni"]


def cni(
    command: str, v: VethPair, dp: Datapath, plugin: list[str], tc_attach: str = "", **config: object
) -> subprocess.CompletedProcess[str]:
    """Run the plugin as a runtime does; tc_attach: VETHGUARD_TC_ATTACH (empty: the kernel's choice)."""
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vgh0"}, {"name": "eth0", "sandbox": f"/run/netns/{v.pod_ns}"}],
        "ips": [{"address": f"{v.pod_ip}/24", "interface": 1}],
    }
    conf = {
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "vethguard-cni",
        "pinRoot": str(dp.pin_dir.parent),
        "nodeName": dp.node,
        "stateDir": str(STATE["dir"]),
        "prevResult": prev,
        **config,
    }
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": f"/run/netns/{v.pod_ns}",
        "CNI_IFNAME": "eth0",
    }
    if tc_attach:
        env["VETHGUARD_TC_ATTACH"] = tc_attach
    # nsenter, not `ip netns exec`: that remounts /sys and would hide the pins under /sys/fs/bpf
    argv = ["nsenter", f"--net=/run/netns/{v.node_ns}", "--", *plugin]
    return subprocess.run(argv, input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def pair(dp: Datapath) -> Iterator[VethPair]:
    with veth_pair() as v:
        try:
            yield v
        finally:
            dp.maps["vg_endpoints"].delete(codecs.u32_key(v.ifindex))
            dp.maps["vg_local"].delete(codecs.encode_local(v.pod_ip, 0)[0])


@pytest.mark.parametrize("tc_attach", ["", "tcx"])
def test_add_closes_a_new_veth_with_no_agent_running(
    dp: Datapath, pair: VethPair, plugin: list[str], tc_attach: str, request: pytest.FixtureRequest
) -> None:
    if tc_attach == "tcx":
        dp = request.getfixturevalue("dp_tcx")  # the same maps and programs, tcx links
    out = cni("ADD", pair, dp, plugin, tc_attach)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ips"] == [{"address": f"{pair.pod_ip}/24", "interface": 1}]
    assert in_netns(pair.node_ns, lambda: dp.attached(pair.ifindex))
    ep = dp.dump().endpoints[pair.ifindex]
    assert ep.flags & abi.EP_F_PENDING and ep.ipv4 == pair.pod_ip
    assert (
        dp.maps["vg_local"].lookup(codecs.encode_local(pair.pod_ip, 0)[0])
        == codecs.encode_local(pair.pod_ip, pair.ifindex)[1]
    )

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(b"hello", (pair.node_ip, 9))

    before = dp.counters().get((pair.ifindex, int(Reason.DROP_PENDING), DIR_EGRESS), (0, 0))[0]
    in_netns(pair.pod_ns, send)
    after = dp.counters().get((pair.ifindex, int(Reason.DROP_PENDING), DIR_EGRESS), (0, 0))[0]
    assert after - before == 3  # the pod's first packets are dropped: nothing was open
    assert cni("CHECK", pair, dp, plugin, tc_attach).returncode == 0
    assert cni("ADD", pair, dp, plugin, tc_attach).returncode == 0  # a runtime's retry changes nothing


def test_add_with_tc_attach_tcx_pins_links_the_agent_then_updates_in_place(
    dp_tcx: Datapath, pair: VethPair, plugin: list[str]
) -> None:
    dp = dp_tcx
    links = dp.pin_dir / "links"
    assert cni("ADD", pair, dp, plugin, tcAttach="tcx").returncode == 0  # the configuration's key
    netns = in_netns(pair.node_ns, netns_inode)
    pins = sorted(links.glob(f"{netns}-{pair.ifindex}-*"))
    # the plugin has exited: the pins hold its links
    assert [p.name.split("-")[-1] for p in pins] == ["egress", "ingress"]

    def link_ids() -> list[int]:
        return [a.link_id for t in (46, 47) for a in bpflinks.tcx_query(pair.ifindex, t)]

    before = in_netns(pair.node_ns, link_ids)
    assert len(before) == 2
    in_netns(pair.node_ns, lambda: dp.attach(pair.ifindex))  # the agent's pass: no second link
    assert in_netns(pair.node_ns, link_ids) == before
    assert (
        "vethguard"
        not in subprocess.run(
            ["tc", "-n", pair.node_ns, "filter", "show", "dev", "vgh0", "ingress"],
            capture_output=True,
            text=True,
        ).stdout
    )
    in_netns(pair.node_ns, lambda: dp.detach(pair.ifindex))
    assert not any(p.exists() for p in pins)


def test_add_leaves_an_endpoint_the_agent_already_wrote(
    dp: Datapath, pair: VethPair, plugin: list[str]
) -> None:
    realized = codecs.encode_endpoint(pair.ifindex, 256, abi.EP_F_INGRESS_ISOLATED, pair.pod_ip, None, slot=3)
    dp.maps["vg_endpoints"].update(*realized)
    assert cni("ADD", pair, dp, plugin).returncode == 0
    assert dp.maps["vg_endpoints"].lookup(realized[0]) == realized[1]


def test_check_fails_on_a_veth_without_the_filters(dp: Datapath, pair: VethPair, plugin: list[str]) -> None:
    out = cni("CHECK", pair, dp, plugin)
    assert out.returncode == 1
    assert "programs are missing" in json.loads(out.stdout)["msg"]


def test_add_on_a_node_without_pins_fails_so_the_pod_does_not_start(
    dp: Datapath, pair: VethPair, tmp_path: Path, plugin: list[str]
) -> None:
    out = cni("ADD", pair, dp, plugin, pinRoot=str(tmp_path), nodeName="nowhere")
    assert out.returncode == 1
    assert json.loads(out.stdout)["code"] == 100
    assert not in_netns(pair.node_ns, lambda: dp.attached(pair.ifindex))


def test_add_records_the_clsact_it_created_in_the_ledger_once(
    dp: Datapath, pair: VethPair, plugin: list[str], state_dir: Path
) -> None:
    assert cni("ADD", pair, dp, plugin, "clsact").returncode == 0
    assert cni("ADD", pair, dp, plugin, "clsact").returncode == 0  # the clsact exists now: no second line
    assert (state_dir / f"clsact-{dp.node}").read_text() == f"{pair.ifindex} vgh0\n"


def test_add_does_not_record_a_clsact_someone_else_created(
    dp: Datapath, pair: VethPair, plugin: list[str], state_dir: Path
) -> None:
    subprocess.run(["tc", "-n", pair.node_ns, "qdisc", "add", "dev", "vgh0", "clsact"], check=True)
    assert cni("ADD", pair, dp, plugin, "clsact").returncode == 0
    assert in_netns(pair.node_ns, lambda: dp.attached(pair.ifindex))
    assert not (state_dir / f"clsact-{dp.node}").exists()
