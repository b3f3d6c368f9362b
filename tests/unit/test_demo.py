"""The demo's connectivity table: rows are sources, columns destinations, aligned."""

from __future__ import annotations

from controller.lab.demo import STAGES, model_manifests, render_table


def test_the_table_marks_connected_blocked_and_self_cells_in_aligned_columns() -> None:
    pods = ["development/network-policy", "development/backend"]
    results = [
        {"from": "development/network-policy", "to": "development/backend", "connected": False},
        {"from": "development/backend", "to": "development/network-policy", "connected": True},
    ]
    lines = render_table(results, pods).splitlines()
    rows = lines[2:]
    assert rows[0].split() == ["development/network-policy", "-", "X"]
    assert rows[1].split() == ["development/backend", ".", "-"]
    # every cell stands exactly under its column's header number
    cols = [lines[1].index(str(j + 1)) for j in range(len(pods))]
    assert [[row[c] for c in cols] for row in rows] == [["-", "X"], [".", "-"]]


def test_the_walkthrough_has_four_stages_on_the_backend_policy() -> None:
    assert [p is None for _, p in STAGES] == [True, False, False, False]
    assert {p["metadata"]["name"] for _, p in STAGES if p} == {"backend-policy"}
    kinds = [d["kind"] for d in model_manifests()]
    assert kinds.count("Namespace") == 2 and kinds.count("Pod") == 4
