"""Helpers shared by the test layers (unit, kernel, lab, conformance); no tests live here.

waiting      wait_for: poll a condition, fail naming what did not happen
root         the one rule for tests that need root, bcc and bpffs (markers `root`, `lab`, `bcc`),
             and VETHGUARD_REQUIRE_ROOT=1 turning such a skip into a failure
packets      the one packet builder: Ethernet/IPv4/IPv6/L4 bytes for BPF_PROG_TEST_RUN and
             for AF_PACKET sockets in a lab, and the raw-socket capture helpers
labs         labs built through the `vethguard lab` CLI (Lab, run_cli, lab_up), models/ loader
kernel       the kernel-test harness (one Datapath, map setup, running packets) and its addresses
netns_util   throwaway network namespaces and veth pairs for kernel and lab tests
tcpstats     TCP_INFO retransmission counters for lab tests
sync_world   a randomly changing node desired state for the incremental-sync tests
agent_fakes  fake kernel, API and links for driving the real agent loop in unit tests
"""
