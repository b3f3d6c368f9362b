"""Debug commands: answer "why was my packet dropped?" from the kernel's own state.

    vethguard bpf endpoints|identities|ipcache|policy [NS/POD]|ct [NS/POD]|counters [NS/POD]
    vethguard get netpol [-A|-n NS] [-o wide|json|yaml]
    vethguard get cnp [-o wide|json|yaml]           (ClusterNetworkPolicy, cluster-scoped)
    vethguard describe netpol [NAME] -n NS
    vethguard describe cnp [NAME]
    vethguard explain FROM TO --port P [--protocol X] [--family 4|6] [--no-kernel] [-o json]
    vethguard observe [--pod NS/POD] [--verdict allowed|denied|audit] [-f] [--timeout S] [--count N] [-o json]
    vethguard reachability [-n NS] [--port P] [--protocol X] [--probe] [-o json]

Every command takes `--lab NAME` (every node of a lab; `--node` picks one) or acts on the local
node (`--node NAME --pin-root DIR --kubeconfig FILE`), and `-o json`. The same commands run as
`kubectl vethguard ...` (console script kubectl-vethguard).

Pieces: source.py (API objects, pinned map dirs, agent /status), compiler/clusterview.py (the
compiled cluster every number is translated with), kernel.py (bpf(2) dumps and live LPM
lookups), flow_client.py (the agents' flow servers; datapath/ringbuf.py where none serves a
node), and the pure per-command modules bpfview,
netpol, cnp, explain, observe, reach; commands.py runs them (one handler per command),
target_options.py makes the Target from the "where" options, live_checks.py compares with the agents,
the pinned maps and lab probes, and cli.py registers the parsers.

ClusterNetworkPolicy tiers: explain, observe, reachability and `bpf policy` name the tier
(Admin, NetworkPolicy, Baseline), the policy, the rule (index and `name`) and its action, and
explain the Pass rules that handed a decision on. ClusterNetworkPolicies are listed like the
other kinds; a cluster without their CRD (404) simply has none.

Decisions where the issue was silent:
- Translation uses the cluster objects listed from the API at the time of the command,
  compiled like the agent compiles them (allocation is deterministic), not state kept by the
  agent: the agent keeps nothing but the maps.
- `bpf policy` counts per entry from conntrack (flows alive now, both directions), so the
  datapath pays nothing extra; entries without live flows show 0.
- `explain` exits 3 when the live maps disagree with the compiled state, naming the half and
  whether an agent has not realized the API's resourceVersion yet; `--no-kernel` skips it.
- `observe` consumes the ring (one reader per ring); without --follow it prints what is
  buffered (events since the last reader, up to the ring's 256 KiB) and exits.
- Audit mode: annotation vethguard.dev/audit: "true". A direction isolated only by audit-mode
  policies gets EP_F_{INGRESS,EGRESS}_AUDIT; the datapath turns its would-be DROP_POLICY into
  ALLOW_AUDIT (conntracked like an allowed flow, so one event per flow), reported as verdict
  "audit". Any enforcing policy isolating the same direction makes it enforcing again.
"""
