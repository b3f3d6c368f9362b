"""Benchmarks: `vethguard bench datapath` and `vethguard bench control-plane`.

  synth.py           synthetic clusters (raw API objects) for both benchmarks
  synth_cnp.py       synthetic ClusterNetworkPolicies beside the datapath benchmark's policies
  iptables.py        the kube-router-style iptables+ipset peer built from the same policies
  datapath_bench.py  throughput/latency in a lab, per-packet cost (controller.bench.cost), and
                     with ClusterNetworkPolicies (controller.bench.tier_cost)
  traffic.py         iperf3 / sockperf runs in the lab's pods and the parsers of their output
  small_packets.py   the datapath benchmark's small packets in pairs (UDP 64 B, TCP request/
                     response: ratios to the same round's baseline)
  udp_profile.py     where a 64-byte UDP datagram's CPU time goes per configuration (perf
                     samples; `python -m controller.bench.udp_profile`, needs perf)
  lru_cost.py        conntrack insert cost by map flavour (`python -m controller.bench.lru_cost`)
  control_plane.py   compile time, event -> map-updated latency, RSS, map memory, lab realization
  hostep_cost.py     per-packet cost of the node-interface programs with and without a Calico
                     host endpoint (`python -m controller.bench.hostep_cost`, no lab)
  ab_cost.py         per-packet cost of to_pod/from_pod of a commit against this checkout's,
                     same maps, alternating (`python -m controller.bench.ab_cost --before REV`)
  evlost_cost.py     per-packet cost of the event paths, to_pod of the commit before vg_evlost
                     against this checkout's (`python -m controller.bench.evlost_cost`, no lab)
  dns_answer_cost.py DNS round trip of a pod whose answers are held for domainNames rules beside
                     one whose are not, in a one-node lab (`python -m controller.bench.dns_answer_cost`)
  report.py          Markdown tables and PNG plots; cli.py the commands (`vethguard bench plot`
                     redraws the plots from a results directory's JSON)
Method: ../../shared/DESIGN.md "Measuring performance" (same run, alternating, medians, ratios).
"""
