"""`vethguard cni-install` (the DaemonSet's install-cni init container) on temporary CNI
directories: the plugin lands in the binary directory and is chained last in the runtime's
network configuration, once, whatever was there before; and its mirror, the unchaining step of
`vethguard uninstall`, which takes out our entry and binary and leaves everything else."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from controller.cli import main
from controller.cni import install
from controller.core.errors import VethguardError

KINDNET = {
    "cniVersion": "0.4.0",
    "name": "kindnet",
    "plugins": [
        {"type": "ptp", "ipMasq": False, "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    dirs = {"bin": tmp_path / "opt-cni-bin", "conf": tmp_path / "etc-cni-net.d", "image": tmp_path / "image"}
    for d in dirs.values():
        d.mkdir()
    (dirs["image"] / "vethguard-cni").write_bytes(b"\x7fELF static plugin")
    return dirs


def run(host: dict[str, Path], node: str = "node-1") -> Path:
    plugin = host["image"] / "vethguard-cni"
    return install.install(plugin, host["bin"], host["conf"], node, "/sys/fs/bpf/vethguard")


def test_the_plugin_is_chained_last_in_the_runtimes_configuration_and_installed_executable(
    host: dict[str, Path],
) -> None:
    (host["conf"] / "10-kindnet.conflist").write_text(json.dumps(KINDNET))
    written = run(host)
    assert written == host["conf"] / "10-kindnet.conflist"
    conf = json.loads(written.read_text())
    assert [p["type"] for p in conf["plugins"]] == ["ptp", "portmap", "vethguard-cni"]
    ours = {"type": "vethguard-cni", "pinRoot": "/sys/fs/bpf/vethguard", "nodeName": "node-1"}
    assert conf["plugins"][-1] == ours
    assert conf["plugins"][:2] == KINDNET["plugins"] and conf["name"] == "kindnet"
    plugin = host["bin"] / "vethguard-cni"
    assert plugin.read_bytes() == b"\x7fELF static plugin" and plugin.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in host["conf"].iterdir()) == ["10-kindnet.conflist"]  # no temp file left


def test_a_second_install_changes_nothing_and_an_old_entry_of_ours_is_replaced(host: dict[str, Path]) -> None:
    (host["conf"] / "10-kindnet.conflist").write_text(json.dumps(KINDNET))
    first = run(host).read_text()
    assert run(host).read_text() == first
    run(host, node="renamed")
    plugins = json.loads((host["conf"] / "10-kindnet.conflist").read_text())["plugins"]
    assert [p.get("nodeName") for p in plugins if p["type"] == "vethguard-cni"] == ["renamed"]


def test_a_single_plugin_configuration_becomes_a_list_with_ours_after_it(host: dict[str, Path]) -> None:
    (host["conf"] / "10-bridge.conf").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0"})
    )
    written = run(host)
    assert written.name == "10-bridge.conflist" and not (host["conf"] / "10-bridge.conf").exists()
    conf = json.loads(written.read_text())
    assert conf["name"] == "cbr0" and conf["cniVersion"] == "1.0.0"
    assert conf["plugins"][0] == {"type": "bridge", "bridge": "cni0"}
    assert conf["plugins"][1]["type"] == "vethguard-cni"


def test_the_runtimes_choice_is_the_first_configuration_by_name(host: dict[str, Path]) -> None:
    (host["conf"] / "20-other.conflist").write_text(json.dumps(KINDNET))
    (host["conf"] / "10-first.conflist").write_text(json.dumps(KINDNET))
    assert run(host).name == "10-first.conflist"
    assert "vethguard-cni" not in (host["conf"] / "20-other.conflist").read_text()


def test_without_a_cluster_cni_configuration_the_init_container_fails_clearly(
    host: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "cni-install",
        "--node",
        "n1",
        "--binary",
        str(host["image"] / "vethguard-cni"),
        "--bin-dir",
        str(host["bin"]),
        "--conf-dir",
        str(host["conf"]),
    ]
    assert main(args) == 1
    assert "no CNI network configuration in" in capsys.readouterr().err
    (host["conf"] / "10-kindnet.conflist").write_text(json.dumps(KINDNET))
    assert main(args) == 0
    assert "vethguard-cni installed in" in capsys.readouterr().out


def test_a_configuration_that_is_not_json_is_named(host: dict[str, Path]) -> None:
    (host["conf"] / "10-broken.conflist").write_text("{nope")
    with pytest.raises(install.VethguardError, match=r"10-broken\.conflist: not JSON"):
        run(host)


def test_unchaining_removes_only_our_entry_and_keeps_every_other_plugin_and_key() -> None:
    ours = {"type": "vethguard-cni", "pinRoot": "/sys/fs/bpf/vethguard", "nodeName": "node-1"}
    config = {**KINDNET, "disableCheck": True, "plugins": [*KINDNET["plugins"], ours]}
    assert install.unchained(config) == {**KINDNET, "disableCheck": True}
    assert install.unchained(KINDNET) is None  # nothing of ours: no change
    single = {"cniVersion": "0.3.1", "name": "bridge", "type": "bridge", "bridge": "cni0"}
    assert install.unchained(single) is None  # a single-plugin .conf is never chained


def test_uninstall_undoes_cni_install_of_a_conflist(host: dict[str, Path]) -> None:
    (host["conf"] / "10-kindnet.conflist").write_text(json.dumps(KINDNET))
    (host["conf"] / "99-other.conf").write_text(json.dumps({"name": "x", "type": "bridge"}))
    install.install(
        host["image"] / "vethguard-cni", host["bin"], host["conf"], "node-1", "/sys/fs/bpf/vethguard"
    )
    (host["bin"] / "ptp").write_bytes(b"ptp")
    removed, kept = install.uninstall(host["bin"], host["conf"])
    assert [(s.kind, Path(s.name).name) for s in removed] == [
        ("cni-config", "10-kindnet.conflist"),
        ("cni-binary", "vethguard-cni"),
    ]
    assert kept == []
    assert json.loads((host["conf"] / "10-kindnet.conflist").read_text()) == KINDNET
    assert json.loads((host["conf"] / "99-other.conf").read_text()) == {"name": "x", "type": "bridge"}
    assert sorted(p.name for p in host["bin"].iterdir()) == ["ptp"]
    assert install.uninstall(host["bin"], host["conf"]) == ([], [])  # idempotent


def test_a_conf_that_install_turned_into_a_conflist_keeps_its_one_plugin(host: dict[str, Path]) -> None:
    single = {"cniVersion": "0.3.1", "name": "bridge", "type": "bridge", "bridge": "cni0"}
    (host["conf"] / "10-bridge.conf").write_text(json.dumps(single))
    install.install(
        host["image"] / "vethguard-cni", host["bin"], host["conf"], "node-1", "/sys/fs/bpf/vethguard"
    )
    install.uninstall(host["bin"], host["conf"])
    assert json.loads((host["conf"] / "10-bridge.conflist").read_text()) == {
        "cniVersion": "0.3.1",
        "name": "bridge",
        "plugins": [{"type": "bridge", "bridge": "cni0"}],
    }


def test_a_list_with_only_our_plugin_is_left_to_its_owner_and_so_is_the_binary(host: dict[str, Path]) -> None:
    lone = {"cniVersion": "1.0.0", "name": "odd", "plugins": [{"type": "vethguard-cni"}]}
    (host["conf"] / "10-odd.conflist").write_text(json.dumps(lone))
    (host["bin"] / "vethguard-cni").write_bytes(b"plugin")
    removed, kept = install.uninstall(host["bin"], host["conf"])
    assert removed == [] and [s.kind for s in kept] == ["cni-config", "cni-binary"]
    assert (host["bin"] / "vethguard-cni").exists()


def test_missing_cni_directories_are_noted_not_errors(tmp_path: Path) -> None:
    removed, kept = install.uninstall(tmp_path / "no-bin", tmp_path / "no-conf")
    assert removed == []
    assert [(s.kind, s.detail) for s in kept] == [
        ("cni-config", "no such directory: nothing to unchain"),
        ("cni-binary", "no such directory"),
    ]


def test_a_configuration_that_is_not_json_is_an_error_naming_the_file(host: dict[str, Path]) -> None:
    (host["conf"] / "10-broken.conflist").write_text("{not json")
    with pytest.raises(VethguardError, match=r"10-broken\.conflist: not JSON"):
        install.uninstall(host["bin"], host["conf"])


def test_the_tcx_attach_mode_is_written_into_our_entry_and_clsact_needs_no_key(
    host: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (host["conf"] / "10-kindnet.conflist").write_text(json.dumps(KINDNET))
    plugin = host["image"] / "vethguard-cni"
    written = install.install(plugin, host["bin"], host["conf"], "node-1", "/sys/fs/bpf/vethguard", "tcx")
    assert json.loads(written.read_text())["plugins"][-1]["tcAttach"] == "tcx"
    assert "tcAttach" not in json.loads(run(host).read_text())["plugins"][-1]  # back to the default
    args = argparse.Namespace(
        binary=str(plugin),
        bin_dir=str(host["bin"]),
        conf_dir=str(host["conf"]),
        node="node-1",
        pin_root="/p",
        tc_attach=None,
    )
    monkeypatch.setenv("VETHGUARD_TC_ATTACH", "tcx")  # the agent's setting, shared in the DaemonSet
    assert install.cmd_install(args) == 0
    assert json.loads(written.read_text())["plugins"][-1]["tcAttach"] == "tcx"
    monkeypatch.setenv("VETHGUARD_TC_ATTACH", "ebpf")
    with pytest.raises(VethguardError, match="VETHGUARD_TC_ATTACH='ebpf'"):
        install.cmd_install(args)
