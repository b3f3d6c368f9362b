#!/bin/bash
# Per-packet cost of several revisions side by side: runs `python -m controller.bench.cost`
# from a worktree of each revision in turn, RUNS times, and prints the medians per revision.
# Alternating the revisions spreads this VM's speed drift over all of them.
#   usage: scripts/cost-ab.sh REV [REV ...]      e.g. scripts/cost-ab.sh 6848666 HEAD
# Needs root (BPF_PROG_TEST_RUN, bpf stats); maps go to throwaway pin dirs the tool removes.
set -euo pipefail
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-5}
PY=${PYTHON:-/opt/vethguard/venv/bin/python}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d /tmp/vethguard-cost-ab.XXXXXX)
cleanup() {
	for d in "$work"/rev-*; do
		[ -d "$d" ] && git -C "$repo" worktree remove --force "$d" >/dev/null 2>&1 || true
	done
	git -C "$repo" worktree prune
	rm -rf "$work"
}
trap cleanup EXIT
for rev in "$@"; do
	git -C "$repo" worktree add --detach -q "$work/rev-$rev" "$rev"
done
for i in $(seq "$RUNS"); do
	for rev in "$@"; do
		echo "run $i: $rev" >&2
		module=controller.bench.cost  # controller.datapath.cost before the layers became packages
		[ -f "$work/rev-$rev/controller/bench/cost.py" ] || module=controller.datapath.cost
		(cd "$work" && PYTHONPATH="$work/rev-$rev" "$PY" -m "$module" --rounds "$ROUNDS" \
			>"$work/out-$rev-$i.json")
	done
done
"$PY" - "$work" "$@" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

work, revs = Path(sys.argv[1]), sys.argv[2:]
for rev in revs:
    docs = [json.loads(p.read_text()) for p in sorted(work.glob(f"out-{rev}-*.json"))]
    med = {k: statistics.median(d[k] for d in docs) for k in ("passthrough_ns", "established_ns", "new_flow_ns")}
    print(f"{rev}: {len(docs)} runs, medians: pass-through {med['passthrough_ns']:.1f} ns, "
          f"established {med['established_ns']:.1f} ns, new flow {med['new_flow_ns']:.1f} ns; "
          f"established per run {[d['established_ns'] for d in docs]}")
    steps = [d["established_steps_ns"] for d in docs if d.get("established_steps_ns")]
    if steps:
        print("  steps (ns): " + ", ".join(f"{k} {statistics.median(s[k] for s in steps):.1f}" for k in steps[0]))
PYEOF
