"""The agent's failsafe ports for Calico host endpoints: Calico's spelling parsed, 'none' for no
port, bad entries refused with the entry named, and the agent's desired state carrying them
(Calico's defaults when not configured)."""

from __future__ import annotations

import argparse

import pytest

from controller.agent.cli import format_failsafe, parse_failsafe
from controller.agent.loop import AgentConfig
from controller.compiler.desired_state import FAILSAFE_INBOUND, NodeDesired


def test_calicos_spelling_is_parsed_and_printed_back() -> None:
    assert parse_failsafe("tcp:22, udp:68,sctp:9") == (("TCP", 22), ("UDP", 68), ("SCTP", 9))
    assert parse_failsafe("22") == (("TCP", 22),)
    assert format_failsafe((("TCP", 22), ("UDP", 68))) == "tcp:22,udp:68"


def test_none_means_no_failsafe_port() -> None:
    assert parse_failsafe("none") == ()
    assert format_failsafe(()) == "none"


@pytest.mark.parametrize("bad", ["icmp:1", "tcp:0", "tcp:70000", "tcp:ssh"])
def test_a_bad_entry_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=bad):
        parse_failsafe(f"tcp:22,{bad}")


def test_the_desired_state_keeps_calicos_defaults_unless_configured() -> None:
    assert NodeDesired({}, {}, {}, {}).failsafe_inbound == FAILSAFE_INBOUND
    assert AgentConfig(node="n").failsafe_overrides() == {}
    config = AgentConfig(node="n", failsafe_inbound=(("TCP", 2222),), failsafe_outbound=())
    assert config.failsafe_overrides() == {"failsafe_inbound": (("TCP", 2222),), "failsafe_outbound": ()}
