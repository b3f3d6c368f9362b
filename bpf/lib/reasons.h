/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one table of verdict reasons (docs/INTERNALS.md), mirrored by
 * controller/datapath/maps.py:Reason. Codes < 64 pass the packet, codes >= 64 drop it.
 */
#ifndef VG_REASONS_H
#define VG_REASONS_H

enum vg_reason {
	ALLOW_POLICY = 0,       /* new flow allowed by a policy entry */
	ALLOW_CT = 1,           /* established flow (forward) */
	ALLOW_REPLY = 2,        /* reply of a tracked allowed flow */
	ALLOW_NOT_ISOLATED = 3, /* direction not isolated */
	ALLOW_HOST = 4,         /* pod <-> its own node */
	ALLOW_NON_IP = 5,       /* ARP and other non-IP */
	ALLOW_ICMP6_CTRL = 6,   /* IPv6 neighbour discovery / router / MLD messages, only as the
	                         * link allows them (lib/trust.h) */
	ALLOW_FRAG = 7,         /* non-first fragment of a tracked flow */
	ALLOW_AUDIT = 8,        /* would be DROP_POLICY, but the direction is isolated only by
	                         * audit-mode policies (vethguard.dev/audit): passed and reported */
	ALLOW_RELATED = 9,      /* ICMP error about a tracked allowed flow (port unreachable,
	                         * fragmentation needed / packet too big, time exceeded ...) */
	ALLOW_DEFERRED = 10,    /* from_pod: to a Service frontend; the egress verdict is given after
	                         * DNAT by the judge (to_pod of a local backend or to_uplink) */
	ALLOW_ADMIN = 11,       /* new flow accepted by an Admin-tier ClusterNetworkPolicy rule */
	ALLOW_BASELINE = 12,    /* new flow accepted by a Baseline-tier ClusterNetworkPolicy rule */
	ALLOW_CALICO = 13,      /* new flow allowed by a rule of Calico's tier (a Calico Allow rule, or
	                         * a NetworkPolicy's rule at order 1000) */
	ALLOW_FAILSAFE = 14,    /* host endpoint: a failsafe port (never locked out) */
	ALLOW_PREDNAT = 15,     /* host endpoint: allowed by a preDNAT policy rule */
	ALLOW_HOSTEP = 16,      /* host endpoint: allowed by a normal (or applyOnForward) policy rule, or
	                         * forwarded traffic no applyOnForward policy polices */
	LOG_CALICO = 17,        /* an event only, never a packet's verdict: a Calico Log rule matched the
	                         * new flow before the rule that decided it (the event names the Log rule) */
	DNS_HELD = 18,          /* a count only: a DNS answer held for the agent (lib/dns.h); it enters the
	                         * pod when released, counted then as any reply */
	DNS_UNHELD = 19,        /* a count only: a DNS answer that could not be held (agent not releasing,
	                         * ring full, frame too long) passes unlearned: its addresses stay denied */

	DROP_POLICY = 64,       /* no policy entry allows it */
	DROP_MALFORMED = 65,    /* truncated or unparsable headers from/to an isolated pod */
	DROP_FRAG_UNKNOWN = 66, /* non-first fragment with no tracked first fragment */
	DROP_REVOKED = 67,      /* established flow whose policy no longer allows it */
	DROP_PENDING = 68,      /* endpoint's policy not realized yet */
	DROP_NO_ENDPOINT = 69,  /* program attached to an interface with no endpoint entry */
	DROP_CT_FULL = 70,      /* conntrack insert failed */
	DROP_SPOOFED = 71,      /* a source address where it does not belong: from a pod, not the
	                         * pod's own; to a pod or on an uplink, a local pod's or the node's
	                         * address arriving from another interface (lib/trust.h) */
	DROP_DEFERRED_UNKNOWN = 72, /* deferred packet whose client endpoint (mark slot) is unknown */
	DROP_ADMIN = 73,        /* denied by an Admin-tier ClusterNetworkPolicy rule */
	DROP_BASELINE = 74,     /* denied by a Baseline-tier ClusterNetworkPolicy rule */
	DROP_CALICO = 75,       /* denied by a Calico Deny rule */
	DROP_CALICO_END = 76,   /* Calico's tier selects the pod and none of its rules matched */
	DROP_PREDNAT = 77,      /* host endpoint: denied by a preDNAT policy rule (original destination) */
	DROP_HOSTEP = 78,       /* host endpoint: denied by a normal or applyOnForward policy rule */
	DROP_HOSTEP_END = 79,   /* host endpoint: no rule allowed traffic to/from the node itself (or
	                         * forwarded traffic its applyOnForward policies police) */
	DROP_TAIL_CALL = 80,    /* to_pod could not tail-call a program of vg_tail (its slot empty: the
	                         * loader had not filled it, or its pins were removed under attached
	                         * programs): a deferred packet, dropped rather than let in unjudged */
};

#define REASON_IS_DROP(r) ((r) >= 64)

#endif /* VG_REASONS_H */
