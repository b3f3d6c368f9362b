"""Conntrack insert cost by map flavour: the figures behind keeping `vg_ct` a common-LRU hash
(docs/INTERNALS.md, "the new-flow target").

Three maps of `vg_ct`'s key and value (bpf/lib/structs.h) and size (VG_MAX_CT entries), each
written by its own program that inserts one new key per run (the key comes from a per-CPU
counter, so every run of the same packet is a new flow):
  lru          BPF_MAP_TYPE_LRU_HASH, flags 0: what vg_ct is
  lru-percpu   the same with BPF_F_NO_COMMON_LRU: an LRU list per CPU, each holding 1/nr_cpus of
               the entries (a CPU that opens most flows evicts its own at max_entries/nr_cpus)
  hash         BPF_MAP_TYPE_HASH, preallocated: no LRU; once full an insert FAILS (-E2BIG), so
               a flood of new flows makes new flows of isolated pods fail closed until the
               agent's garbage collection makes room
and a program that does everything but the insert (the floor). Two regimes, in alternating
rounds: "filling" (the maps emptied before every round, as `bench.cost`'s new-flow case does)
and "full" (kept full: every LRU insert evicts; the plain hash's inserts fail and are counted as
failures, not as costs). One BPF_PROG_TEST_RUN per insert, kernel BPF stats (run_time_ns /
run_cnt), medians over rounds.

Run: python -m controller.bench.lru_cost [--rounds 9] [--inserts 20000] [--results DIR] (root).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.bench.common import command_line, loadavg, log, logs_to_stderr, machine
from controller.bench.cost import per_packet_ns, with_stats_enabled
from controller.bench.report import write_results
from controller.bench.testrun import run
from controller.datapath.bpf_sources import bpf_source_dir
from controller.datapath.loader import import_bcc

FLAVOURS = ("lru", "lru-percpu", "hash")
CT_ENTRIES = 65536  # VG_MAX_CT's default (bpf/lib/maps.h)

SOURCE = r"""
#include "lib/structs.h"

BPF_F_TABLE("lru_hash", struct ct_key, struct ct_value, m_lru, CT_ENTRIES, 0);
BPF_F_TABLE("lru_hash", struct ct_key, struct ct_value, m_lru_percpu, CT_ENTRIES, BPF_F_NO_COMMON_LRU);
BPF_F_TABLE("hash", struct ct_key, struct ct_value, m_hash, CT_ENTRIES, 0);
BPF_PERCPU_ARRAY(next_key, u64, 1);
BPF_PERCPU_ARRAY(failed, u64, 1);

/* A new key every run: the counter spread over the addresses and the source port. */
static __always_inline int insert(int which)
{
	int zero = 0;
	u64 *n = next_key.lookup(&zero);
	if (!n)
		return 0;
	u64 i = (*n)++;
	struct ct_key key = {};
	struct ct_value value = {};
	key.saddr[0] = 10;
	key.saddr[1] = (i >> 24) & 0xff;
	key.saddr[2] = (i >> 16) & 0xff;
	key.saddr[3] = i & 0xff;
	key.daddr[0] = 10;
	key.daddr[3] = 1;
	key.sport = (i >> 8) & 0xffff;
	key.dport = 80;
	key.ep_id = 7;
	key.proto = 6;
	key.family = 4;
	value.expires_ns = i;
	value.state = 1;
	long err = 0;
	if (which == 0)
		err = m_lru.update(&key, &value);
	else if (which == 1)
		err = m_lru_percpu.update(&key, &value);
	else if (which == 2)
		err = m_hash.update(&key, &value);
	if (err) {
		u64 *f = failed.lookup(&zero);
		if (f)
			(*f)++;
	}
	return 0;
}

int ins_lru(struct __sk_buff *skb) { return insert(0); }
int ins_lru_percpu(struct __sk_buff *skb) { return insert(1); }
int ins_hash(struct __sk_buff *skb) { return insert(2); }
int ins_none(struct __sk_buff *skb) { return insert(3); }
"""

PROGRAMS = {"floor": "ins_none", "lru": "ins_lru", "lru-percpu": "ins_lru_percpu", "hash": "ins_hash"}
MAPS = {"lru": "m_lru", "lru-percpu": "m_lru_percpu", "hash": "m_hash"}
PACKET = bytes(14) + bytes([0x45]) + bytes(49)  # any frame: the programs do not read it


def _failed(b: Any) -> int:
    return sum(int(v) for v in b[b"failed"][0])


def _fill(fd: int) -> None:
    """Insert until the program's map is full (an LRU then evicts on every insert)."""
    run(fd, PACKET, repeat=CT_ENTRIES + CT_ENTRIES // 8)


def measure(rounds: int, inserts: int) -> dict[str, Any]:
    bcc = import_bcc()
    b = bcc.BPF(text=SOURCE.encode(), cflags=[f"-I{bpf_source_dir()}", f"-DCT_ENTRIES={CT_ENTRIES}"])
    fds = {name: b.load_func(fn.encode(), bcc.BPF.SCHED_CLS).fd for name, fn in PROGRAMS.items()}
    ns: dict[str, dict[str, list[float]]] = {r: {n: [] for n in PROGRAMS} for r in ("filling", "full")}
    failures: dict[str, dict[str, int]] = {r: dict.fromkeys(MAPS, 0) for r in ("filling", "full")}

    def one_by_one(fd: int) -> Callable[[], None]:
        def drive() -> None:
            for _ in range(inserts):
                run(fd, PACKET)

        return drive

    try:
        for rnd in range(rounds):
            for regime in ("filling", "full") if rnd % 2 == 0 else ("full", "filling"):
                for name in PROGRAMS if rnd % 2 == 0 else reversed(PROGRAMS):
                    if name in MAPS:
                        b[MAPS[name].encode()].clear()
                        if regime == "full":
                            _fill(fds[name])
                    before = _failed(b)
                    ns[regime][name].append(per_packet_ns(fds[name], one_by_one(fds[name])))
                    if name in MAPS:
                        failures[regime][name] += _failed(b) - before
            last = {r: {n: v[-1] for n, v in by_name.items()} for r, by_name in ns.items()}
            log(f"round {rnd + 1}/{rounds}: {json.dumps(last)}")
    finally:
        for name in MAPS.values():
            b[name.encode()].clear()
        b.cleanup()
    out: dict[str, Any] = {}
    for regime, by_name in ns.items():
        floor = statistics.median(by_name["floor"])
        out[regime] = {
            "floor_ns": round(floor, 1),
            **{f"{name}_insert_ns": round(statistics.median(by_name[name]) - floor, 1) for name in MAPS},
            "failed_inserts": failures[regime],
            "samples": by_name,
        }
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"Insert cost by map flavour ({CT_ENTRIES} entries of vg_ct's key and value; ns per insert above "
        f"the floor; medians of {doc['rounds']} rounds of {doc['inserts']} inserts, one test_run each):",
        "",
        "| regime | floor ns | " + " | ".join(f"{n} ns" for n in MAPS) + " | failed inserts |",
        "|---|---:|" + "---:|" * len(MAPS) + "---|",
    ]
    for regime in ("filling", "full"):
        r = doc["results"][regime]
        failed = ", ".join(f"{n}: {c}" for n, c in r["failed_inserts"].items() if c) or "none"
        cells = [regime, f"{r['floor_ns']:.1f}", *(f"{r[f'{n}_insert_ns']:.1f}" for n in MAPS), failed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m controller.bench.lru_cost", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds (default 9)")
    ap.add_argument(
        "--inserts", type=int, default=20000, help="inserts per program per round (default 20000)"
    )
    ap.add_argument("--results", type=Path, help="write lru-cost.json and lru-cost.md there")
    args = ap.parse_args(argv)
    with logs_to_stderr():
        doc = {
            "benchmark": "lru_cost",
            "machine": machine(),
            "rounds": args.rounds,
            "inserts": args.inserts,
            "results": with_stats_enabled(lambda: measure(args.rounds, args.inserts)),
            "command": command_line("controller.bench.lru_cost", argv),
        }
    doc["machine"]["loadavg_end"] = loadavg()
    table = markdown(doc)
    print(table)
    if args.results:
        write_results(args.results, "lru-cost", doc, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
