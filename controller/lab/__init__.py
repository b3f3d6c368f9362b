"""The vethguard lab: a small Kubernetes-like cluster made of network namespaces on one machine.

Contract: shared DESIGN.md "Lab contract"; addressing: docs/INTERNALS.md "Lab addressing".
What this package decided where those are silent:

Commands (`vethguard lab SUBCOMMAND --name LAB`, default `default`; errors exit 1 with a message):
  up -f MODEL... [--nodes N] [--cni routed|bridge] [--dns] [--agent-pods] [--timeout 180]
                                            (hidden: --no-agents)
  apply -f FILE|DIR|- [--timeout 60]        create or replace, then wait for the agents
  delete -f FILE|DIR|- [--timeout 60] [--ignore-not-found]
  probe --port P --protocol TCP|UDP|SCTP [--family 4|6] [--from X ...] [--to Y ...]
        [--timeout 1.0] [-o json]           default: all pods -> all pods and ext/NAME hosts;
                                            --to also takes svc/NS/NAME (its ClusterIP),
                                            lb/NS/NAME (its load-balancer address) or an IP
  status [-o json]                          nodes, pods, externals, agents, resourceVersion
  exec NS/POD|ext/NAME|node/node-N -- CMD   nsenter --net into it; exit code passed through
                                            (`ip netns exec` for pods when the lab has --dns, so
                                            the pod's resolv.conf is bind-mounted over /etc's)
  down                                      works without the daemon; idempotent

Lab names: 1-24 of [a-z0-9_] (no '-', so `vg-<lab>-` prefixes never overlap between labs).

Pieces:
  store.py      objects + one global resourceVersion + watch window; persisted to store.json
  apiserver.py  the Kubernetes API over http (list/get/create/replace/merge-patch/delete/watch,
                BOOKMARK after every write on every open watch, 410 Expired on old versions);
                api_requests.py: its resource paths, label/field selectors and merge patches
  topology.py   namespaces and veths (routed, Calico-like, or a cni0 bridge per node,
                flannel-like); netns.py: setns/ip/sysctl helpers
  daemon.py     one per lab (python -m controller.lab.daemon --name LAB, detached): API server on
                10.244.0.1:6443 in vg-<lab>-fabric and on <state>/api.sock; admission hooks that
                build a Pod's namespace/veth/routes/responders BEFORE it is written (and remove
                them after it is deleted: admission.py); GET /lab/v1/status; kubelet_objects.py:
                the Node objects and running Pod statuses the lab writes in kubelet's place
  agents.py     the agent supervisor (one agent per node, restarted when it exits) and /status
  client.py     the client library (daemon start, apply/delete, wait until realized, teardown)
                that the CLI, the debug commands, the benchmarks and the tests use
  kubeproxy.py  kube-proxy emulation (pure): Service parsing, allocation, EndpointSlices, nft rules
  demo.py       `vethguard demo`: the README's walkthrough in one command
  responders.py TCP accept, UDP echo, SCTP INIT -> INIT-ACK (raw sockets; sctp.py) per namespace
  probe.py      parallel probes from threads that setns into the source namespace
  manifests.py  YAML/directory/stdin loading and validation; cli.py: the `vethguard lab` commands
  svc.py        Services: ClusterIPs from 10.245.0.0/16 (reserved: no ExternalHost may use it),
                NodePorts 30000-32767 (types NodePort and LoadBalancer), load-balancer addresses
                from 10.246.0.0/24 (reserved too; status.loadBalancer.ingress[0].ip),
                spec.externalIPs (outside the reserved ranges and ExternalHosts; the fabric routes
                external and LB addresses to node-1; every node DNATs and masquerades them),
                EndpointSlices (discovery.k8s.io/v1) written through the store on every
                Pod/Service change, and an nftables table `ip vethguard_svc` in every NODE
                namespace with kube-proxy iptables-mode semantics (random backend, NodePort on
                any local address + masquerade, hairpin masquerade, reject without endpoints);
                no table at all while there are no Services (controller.lab.kubeproxy)
  dns.py        `up --dns`: dnsmasq in pod kube-system/kube-dns (node-1) behind the Service
                kube-dns 10.245.0.10; answers NAME.NS.svc.cluster.local from the Services, NXDOMAIN
                for other cluster.local names, answers ExternalHosts' spec.names with their
                addresses and spec.ttl (host-records; restarted when they change), forwards
                nothing; pods' resolv.conf (search
                NS.svc.cluster.local svc.cluster.local cluster.local, ndots:5) in /etc/netns/<pod netns>/
                Egress to a ClusterIP is still judged on the ClusterIP by from_pod (before DNAT).
  agent_pods.py `up --agent-pods`: read-only pods vethguard-system/vethguard-<node> (the DaemonSet's
                labels, container agent) whose pods/exec (exec_ws.py: WebSocket v5/v4) runs the
                command in the node's namespace as root; no RBAC is modelled

State: /run/vethguard/labs/<lab>/ {lab.json, store.json, api.sock, kubeconfig (this machine's
clients: the API on a free port of 127.0.0.1), kubeconfig-nodes (the agents: 10.244.0.1:6443), daemon.pid,
daemon.log, agent-node-<i>.pid, agent-node-<i>.log}; pins: /sys/fs/bpf/vethguard/lab-<lab>/.
If the daemon dies, the next CLI command (not `down`) starts it again from lab.json/store.json;
its watch window starts empty, so agents get 410 and relist, as after a kube-apiserver restart.

Agents: per node, `nsenter --net=/run/netns/vg-<lab>-node-<i> -- <python> -m controller.cli agent
--node node-<i> --kubeconfig <state>/kubeconfig-nodes --pin-root /sys/fs/bpf/vethguard/lab-<lab>`;
an agent that exits is started again within 0.2 s. The daemon reads each agent's /status from
127.0.0.1:9890 inside the node namespace. `healthy` = process running and /status says ready.
`up`, `apply` and `delete` return once every agent is healthy with realized_generation >= the
resourceVersion of the last write, or fail after --timeout naming the lagging agents, with the
tail of their logs. The lab works realized_generation out from what each agent reports it
realized, with no BOOKMARKs needed (controller.lab.agents, docs/INTERNALS.md "Realization").
`up` removes the half-built lab when it fails.

API-server behaviour worth knowing: writes are validated as kube-apiserver validates them
(validation.py: names, labels, selectors, NetworkPolicy ports/peers/CIDRs/policyTypes, Pod and
Service ports): 422 Invalid with kube-apiserver's Status (details.causes) for what a cluster would
not admit, 400 for a body it could not decode or a NetworkPolicy field it does not know (strict,
as for kubectl); `lab apply` prints the message and exits 1 after applying the other objects.
POST /lab/v1/unvalidated stores an object without that validation, as an API server of another
version could have admitted it (tests use it to show agents such objects). Namespaces get
kubernetes.io/metadata.name; pods get
spec.nodeName (given, or the node with the fewest pods), status.podIP(s) (IPv4 first), hostIP(s),
phase Running; NetworkPolicies get the kube-apiserver defaults (podSelector {}, port protocol TCP,
policyTypes); generation is bumped when anything but metadata/status changes; deleting a
Namespace deletes what it contains. Pods: labels and annotations may change, ports and nodeName
may not (422); a replace without spec.containers keeps the stored spec. ExternalHosts are stored
as lab.vethguard.dev/v1alpha1 externalhosts (cluster-scoped); their addresses must not fall in
10.244.0.0/16, fd00:10:244::/56, link-local, loopback or multicast ranges.
"""
