"""The parts of `vethguard uninstall` that need no root: the clsact ledger's format, the report it
prints, its refusal while an agent answers (unchaining vethguard-cni, the mirror of cni-install:
tests/unit/test_cni_install.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from controller.cli import main
from controller.cni import uninstall
from controller.core.errors import VethguardError
from controller.datapath import ledger
from controller.datapath.cleanup import Step


def test_the_ledger_keeps_the_last_name_per_ifindex_and_reports_torn_lines() -> None:
    entries, bad = ledger.parse("7 veth1\n8 veth2\n\n7 lxc9\n12\nx eth0\n-3 a\n0 lo\n9 a b\n")
    assert entries == {7: "lxc9", 8: "veth2"}
    assert bad == ["12", "x eth0", "-3 a", "0 lo", "9 a b"]


def test_a_missing_ledger_records_nothing() -> None:
    assert ledger.read(Path("/nonexistent/vethguard/clsact-node-1")) == ({}, [])


def test_records_append_one_line_each_and_create_the_state_directory(tmp_path: Path) -> None:
    path = ledger.ledger_path(tmp_path / "run" / "vethguard", "node-1")
    assert path == tmp_path / "run" / "vethguard" / "clsact-node-1"
    ledger.record(path, 7, "veth1")
    ledger.record(path, 8, "veth2")
    assert path.read_text() == "7 veth1\n8 veth2\n"
    assert ledger.read(path) == ({7: "veth1", 8: "veth2"}, [])


def test_a_record_names_the_interface_by_its_ifindex_in_this_namespace(tmp_path: Path) -> None:
    path = tmp_path / "clsact-n"
    ledger.record(path, socket.if_nametoindex("lo"))
    assert path.read_text() == f"{socket.if_nametoindex('lo')} lo\n"


def test_a_ledger_that_cannot_be_written_does_not_fail_the_attach(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    ledger.record(tmp_path / "file" / "clsact-n", 7, "veth1")  # its directory is a file
    assert "cannot record the clsact of ifindex 7" in caplog.text


def test_a_node_name_that_cannot_name_a_file_is_refused() -> None:
    with pytest.raises(VethguardError, match="node name"):
        ledger.ledger_path("/run/vethguard", "../etc")


def test_the_report_lists_what_was_removed_and_kept_and_says_when_there_was_nothing_to_do() -> None:
    report = uninstall.Report(
        "node-1",
        removed=[
            Step("filter", "veth1 ingress", "vethguard-from-pod"),
            Step("pins", "/sys/fs/bpf/vethguard/node-1"),
        ],
        kept=[
            Step("clsact", "veth2 (ifindex 9)", "created by vethguard, but other filters use it: u32 prio 20")
        ],
    )
    text = report.render()
    assert text.splitlines()[0] == "node node-1: removed 2, kept 1"
    assert text.splitlines()[1].split() == ["ACTION", "KIND", "NAME", "DETAIL"]
    assert "removed   filter   veth1 ingress" in text and "kept      clsact" in text
    doc = report.to_json()
    assert doc["removed"][0] == {"kind": "filter", "name": "veth1 ingress", "detail": "vethguard-from-pod"}
    assert doc["nothingToDo"] is False
    assert uninstall.Report("node-1").render().startswith("node node-1: nothing to do")
    assert uninstall.Report("node-1").to_json()["nothingToDo"] is True


def safe_args(tmp_path: Path) -> list[str]:
    """Nothing of this machine's own: temporary pin root, state and CNI directories."""
    return ["--pin-root", str(tmp_path / "pins"), "--state-dir", str(tmp_path), "--keep-cni"]


def test_uninstall_refuses_while_an_agent_answers_on_its_health_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        addr = f"127.0.0.1:{listener.getsockname()[1]}"
        assert uninstall.agent_answers(addr)
        assert main(["uninstall", "--node", "node-1", "--agent", addr, *safe_args(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: an agent answers on {addr}: stop it first") and "--force" in err
    assert not uninstall.agent_answers(addr)  # closed: refused


def test_uninstall_without_a_node_name_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["uninstall", "--agent", "127.0.0.1:1", *safe_args(tmp_path)]) == 1
    assert "--node is required" in capsys.readouterr().err
