"""`vethguard observe`: flow records (controller.agent.flow_record) filtered and printed (pure
part). The records come from the agents' flow servers (controller.agent.flow_server), or from the
ring buffers themselves where no agent serves them (controller.datapath.ringbuf).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.agent.flow_record import record as record


def matches(rec: dict[str, Any], pods: Sequence[str], verdicts: Sequence[str]) -> bool:
    if pods and rec["from"] not in pods and rec["to"] not in pods:
        return False
    return not verdicts or rec["verdict"] in verdicts


def line(rec: dict[str, Any]) -> str:
    """One human line, hubble-like: time node from -> to proto verdict (reason, where) policy."""

    def hp(who: str, port: int | None) -> str:
        return who if port is None else f"{who}:{port}"

    t = rec["time"][11:23]
    where = f"{rec['direction']} of {rec['endpoint']}"
    text = (
        f"{t}  {rec['node']}  {hp(rec['from'], rec['sport'])} -> {hp(rec['to'], rec['port'])}  "
        f"{rec['protocol']}  {rec['verdict'].upper()}  ({rec['reason']} at {where})"
    )
    if rec["rule"]:
        text += f"  by {rec['rule']}"
    elif rec["policies"]:
        text += f"  isolated by {', '.join(rec['policies'])}"
    if (rec.get("count") or 1) > 1:  # an agent's record of repeats (controller.agent.flows)
        text += f"  x{rec['count']} until {rec['last_time'][11:23]}"
    return text
