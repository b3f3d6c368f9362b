/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vethguard tc programs (clsact, direct-action), on the host side of every pod veth and on the
 * node's uplinks:
 *
 *   from_pod    tc ingress: traffic leaving the pod  (the pod's EGRESS,  DIR_EGRESS)
 *   to_pod      tc egress:  traffic entering the pod (the pod's INGRESS, DIR_INGRESS)
 *   to_uplink   tc egress of the node's uplinks: judges deferred Service flows leaving the
 *               node after DNAT (lib/service.h); everything else passes untouched
 *   from_uplink tc ingress of the node's uplinks: drops packets from outside that claim an
 *               address of this node or of its pods (lib/trust.h); everything else passes
 *   to_pod_judge, to_pod_judged   never attached: to_pod's tail-call targets (vg_tail) for a
 *               deferred packet entering a pod, its judge and then to_pod's own decision
 * (the benchmarks' pass-through program is in bench_parts.c, which the agent never loads)
 *
 * One compiled set per node; per-endpoint behaviour comes from maps keyed by ifindex.
 * Order of decisions for a packet at endpoint E, direction d:
 *   0. a conntrack hit on an entry of this      -> ALLOW_CT / ALLOW_REPLY, counted by slot
 *      interface allowed at the current            (lib/conntrack.h, vg_ct_fast: no endpoint
 *      revision (not fragments, ICMP errors,       lookup; what steps 1-3 check holds by
 *      untracked ICMP)                             construction); anything else goes on to 1
 *   1. no endpoint entry                        -> DROP_NO_ENDPOINT (fail closed)
 *   2. non-IP                                   -> ALLOW_NON_IP
 *   3. from the pod with a source address that  -> DROP_SPOOFED (IPv6 link-local and :: exempt)
 *      is not the pod's own
 *   3b. truncated / unparsable                  -> DROP_MALFORMED if d is isolated, else pass
 *   4. ICMPv6 ND / router / MLD, only as the    -> ALLOW_ICMP6_CTRL (else judged as ICMP)
 *      link allows (hop limit, scope, size)
 *   5. non-first fragment: ports from vg_frag   (unknown -> ALLOW_HOST for the node, else
 *                                                  DROP_FRAG_UNKNOWN if isolated)
 *   5b. ICMP error about a tracked allowed flow -> ALLOW_RELATED
 *       from its peer, a node or (flow to outside) an outside router
 *   6. conntrack hit (not for non-echo ICMP,    -> ALLOW_CT / ALLOW_REPLY / DROP_REVOKED
 *      which is never tracked)
 *   7. from the pod to a Service frontend       -> ALLOW_DEFERRED, CT_DEFERRED entry, skb->mark
 *      (CT miss)                                   (the verdict is given after DNAT)
 *   8. new flow (lib/newflow.h, vg_new_flow):
 *      a. entering the pod: who really sent it  -> DROP_SPOOFED (a local pod's address from
 *         (lib/trust.h)                            elsewhere); a forwarded node address is
 *                                                  judged as its real sender, not the host
 *      b. peer identity HOST (ipcache lookup    -> ALLOW_HOST (a pod's egress to its node:
 *         only here: host flows are never tracked)  DROP_ADMIN / DROP_BASELINE if a tier denies)
 *      c. tiers / isolation + policy            -> ALLOW_NOT_ISOLATED / ALLOW_POLICY /
 *         (lib/policy.h)                           ALLOW_ADMIN / ALLOW_BASELINE / DROP_ADMIN /
 *                                                  DROP_BASELINE /
 *                                                  DROP_POLICY / DROP_PENDING, CT entry created
 *                                                  (ALLOW_AUDIT instead of DROP_POLICY when only
 *                                                  audit-mode policies isolate the direction;
 *                                                  DROP_CT_FULL if isolated and the entry
 *                                                  cannot be created)
 * to_pod first judges a deferred packet (mark set) for its client's egress (vg_judge: the same
 * new-flow decision on the post-DNAT tuple), then as above. The judge runs in programs of its own,
 * reached by tail call through vg_tail (to_pod_judge, then to_pod_judged: to_pod's decision with
 * the client as the packet's sender); to_pod drops a deferred packet whose tail call fails
 * (DROP_TAIL_CALL).
 */
/* A compile failure on request (-DVG_SYNTAX_ERROR): tests check that a failed compile leaves the
 * previous programs' pins as they were and names the compiler's message. */
#ifdef VG_SYNTAX_ERROR
#error "VG_SYNTAX_ERROR: this build was asked to fail"
#endif

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/clock.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/service.h"
#include "lib/trust.h"
#include "lib/newflow.h"
#include "lib/hostep.h"
#include "lib/events.h"
#include "lib/dns.h"

/* Count, maybe emit an event, and turn the reason into a tc verdict. */
static __always_inline int vg_finish(struct __sk_buff *skb, __u32 ep_id, __u8 dir, __u8 reason,
				     const struct vg_pkt *p, const struct ipcache_value *peer, __u32 rule_ref,
				     int new_flow)
{
	vg_count(ep_id, reason, dir, skb->len);
	if (new_flow || REASON_IS_DROP(reason))
		vg_emit(p, ep_id, dir, reason, peer, rule_ref);
	return REASON_IS_DROP(reason) ? TC_ACT_SHOT : TC_ACT_OK;
}

/*
 * After a tail call into vg_tail that did not happen (an empty slot): the packet was to be judged
 * there, so it is dropped, counted under the interface (as DROP_NO_ENDPOINT is) and reported.
 * Verifier workaround: the event carries no addresses; parsing for them cost to_pod ~78k of its
 * budget for a path only a broken install takes.
 */
static __always_inline int vg_tail_failed(struct __sk_buff *skb)
{
	struct vg_pkt p = {};
	struct ipcache_value peer = {};

	return vg_finish(skb, skb->ifindex, DIR_INGRESS, DROP_TAIL_CALL, &p, &peer, 0, 0);
}

static __always_inline void vg_frag_key(struct frag_key *k, const struct vg_pkt *p)
{
	vg_copy16(k->saddr, p->saddr);
	vg_copy16(k->daddr, p->daddr);
	k->id = p->frag_id;
	k->proto = p->proto;
	k->family = p->family;
	k->pad = 0;
}

/* A non-first fragment takes its ports from its datagram's first fragment. 0: none known. */
static __always_inline int vg_frag_ports(struct vg_pkt *p, __u64 now)
{
	struct frag_key fk;
	struct frag_value *fv;

	vg_frag_key(&fk, p);
	fv = vg_frag.lookup(&fk);
	if (!fv || fv->expires_ns < now)
		return 0;
	p->sport = fv->sport;
	p->dport = fv->dport;
	return 1;
}

/*
 * After a passing verdict: a first fragment's ports are remembered so the later fragments of
 * its datagram can be judged; a later fragment passes as ALLOW_FRAG. Returns the reason to count.
 */
static __always_inline __u8 vg_frag_passed(const struct vg_pkt *p, __u8 reason, __u64 now)
{
	if (p->frag == VG_FRAG_FIRST) {
		struct frag_key fk;
		struct frag_value fv = {.sport = p->sport, .dport = p->dport, .expires_ns = now + FRAG_TIMEOUT};

		vg_frag_key(&fk, p);
		vg_frag.update(&fk, &fv);
	} else if (p->frag == VG_FRAG_LATER) {
		return ALLOW_FRAG;
	}
	return reason;
}

/*
 * The end of a packet of a flow past the flow checks: established (a CT hit) or new and allowed.
 * A passing packet does its fragment bookkeeping; a drop is a revoked flow, whose peer the
 * established path did not look up: named now, for the drop event.
 */
static __always_inline int vg_finish_flow(struct __sk_buff *skb, __u32 ep_id, __u8 dir, __u8 reason,
					  const struct vg_pkt *p, struct ipcache_value *peer, __u32 rule_ref,
					  int new_flow, __u64 now)
{
	if (!REASON_IS_DROP(reason))
		reason = vg_frag_passed(p, reason, now);
	else
		vg_peer_lookup(p, dir, peer);
	return vg_finish(skb, ep_id, dir, reason, p, peer, rule_ref, new_flow);
}

/*
 * Step 0, the established fast path (lib/conntrack.h, vg_ct_fast): a packet of a flow tracked on
 * this interface and allowed at the current revision is decided by its conntrack entry alone,
 * before and without the endpoint lookup. Returns 1 if it passed the packet (counted), 0 for the
 * full path (vg_handle), which then decides the packet as if this had not run.
 *
 * Verifier workaround: a function of its own, called before vg_handle rather than inlined into
 * it, with its own parse, so vg_handle is entered in the same state whatever happened here and is
 * verified once (inside vg_handle it pushed to_pod past the verifier's 1M-instruction budget).
 */
static __always_inline int vg_fast(struct __sk_buff *skb, __u8 dir, __u64 now)
{
	__u32 zero = 0, revision = 0;
	struct vg_pkt p = {};
	struct ct_key k = {};
	struct ct_value *v;
	struct config *cfg;
	int reply = 0;

	cfg = vg_config.lookup(&zero);
	if (cfg)
		revision = cfg->revision;
	if (vg_parse(skb, &p) != PARSE_OK || p.frag != VG_FRAG_NONE || p.icmp_err || vg_icmp_untracked(&p))
		return 0;
	/* DNS to or from a pod goes the full way (lib/dns.h). */
	if (vg_dns_candidate(&p, dir))
		return 0;
	/* A TCP SYN opens a new flow (or retransmits one): the full path's own lookups decide it, so
	 * it does not pay two conntrack misses here first. */
	if (vg_tcp_opens(&p))
		return 0;
	v = vg_ct_find(&k, &p, skb->ifindex, dir, now, &reply);
	return v && vg_ct_fast(skb, v, &p, reply, dir, revision, skb->len, now);
}

/*
 * `sender`: entering a pod (to_pod), the endpoint the judge found in a deferred packet's mark (0:
 * none). It sent the packet whatever interface it arrives from: on a bridge, a Service hairpin is
 * routed up through the bridge device and back, so skb->ingress_ifindex names the bridge.
 */
static __always_inline int vg_handle(struct __sk_buff *skb, __u8 dir, __u32 sender, __u64 now)
{
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;
	struct vg_pkt p = {};
	struct ipcache_value peer = {};
	struct endpoint_info *ep;
	struct config *cfg;
	struct ct_key k = {};
	struct ct_value *v;
	__u32 zero = 0, revision = 0, rule_ref = 0;
	__u16 origin = 0;
	int isolated, untracked, ret;
	__u8 reason;

	ep = vg_endpoints.lookup(&ifindex);
	if (!ep)
		return vg_finish(skb, ifindex, dir, DROP_NO_ENDPOINT, &p, &peer, 0, 0);
	isolated = vg_dir_isolated(ep, dir);

	ret = vg_parse(skb, &p);
	if (ret == PARSE_NON_IP)
		return vg_finish(skb, ep->ep_id, dir, ALLOW_NON_IP, &p, &peer, 0, 0);
	/* No pod may borrow another's identity, isolated or not, well-formed or not. */
	if (dir == DIR_EGRESS && p.family && !vg_source_is_own(ep, &p))
		return vg_finish(skb, ep->ep_id, dir, DROP_SPOOFED, &p, &peer, 0, 0);
	if (ret != PARSE_OK)
		return vg_finish(skb, ep->ep_id, dir, isolated ? DROP_MALFORMED : ALLOW_NOT_ISOLATED, &p, &peer,
				 0, 0);
	/* Only as the link allows it (lib/trust.h); any other ICMPv6 is judged by policy below. */
	if (vg_is_icmp6_ctrl(&p) && vg_icmp6_ctrl_ok(skb, &p, dir))
		return vg_finish(skb, ep->ep_id, dir, ALLOW_ICMP6_CTRL, &p, &peer, 0, 0);

	if (p.frag == VG_FRAG_LATER && !vg_frag_ports(&p, now)) {
		vg_peer_lookup(&p, dir, &peer);
		if (dir == DIR_INGRESS && (reason = vg_ingress_origin(skb, sender, &p, &peer, &origin)))
			return vg_finish(skb, ep->ep_id, dir, reason, &p, &peer, 0, 0);
		if (peer.identity == ID_HOST)
			return vg_finish(skb, ep->ep_id, dir, ALLOW_HOST, &p, &peer, 0, 0);
		return vg_finish(skb, ep->ep_id, dir, isolated ? DROP_FRAG_UNKNOWN : ALLOW_NOT_ISOLATED, &p,
				 &peer, 0, 0);
	}

	cfg = vg_config.lookup(&zero);
	if (cfg)
		revision = cfg->revision;

	/* An ICMP error about a tracked allowed flow, from a source that could have sent it,
	 * passes wherever the flow itself would. */
	if (p.icmp_err && vg_ct_related(skb, ep, &p, dir, revision, now, &k, &rule_ref))
		return vg_finish(skb, ep->ep_id, dir, ALLOW_RELATED, &p, &peer, rule_ref, 0);

	/* A DNS query of a pod that learns from DNS: a copy for the agent (lib/dns.h). */
	if (dir == DIR_EGRESS && (ep->flags & EP_F_DNS) && vg_dns_candidate(&p, dir))
		vg_dns_copy(skb, ep->ep_id, DNS_HELD_QUERY);

	/* Forward entry (established flow), then reverse entry (reply), else a new flow. Verifier
	 * workaround: written out rather than vg_ct_find, so each vg_ct_hit below is inlined with a
	 * constant `reply` (one copy with a variable one put to_pod over the 1M-instruction budget). */
	untracked = vg_icmp_untracked(&p);
	if (!untracked) {
		vg_ct_fill(&k, &p, ep->ep_id, dir, 0);
		v = vg_ct.lookup(&k);
		if (v && v->expires_ns > now) {
			reason = vg_ct_hit(ep, &k, v, &p, 0, revision, len, now, &rule_ref);
			if (v->state == CT_DEFERRED && !REASON_IS_DROP(reason)) {
				reason = vg_mark_deferred(skb, ep) ? ALLOW_DEFERRED : DROP_DEFERRED_UNKNOWN;
				/* (vg_ct_current never re-judges a deferred entry: its judge's entry is) */
				v->revision = revision;
			}
			if (dir == DIR_EGRESS && !REASON_IS_DROP(reason))
				v->seen |= CT_SEEN_SRC_OWN; /* the source check above passed */
			goto tracked;
		}
		/* A segment that opens a TCP connection (SYN, no ACK) is never a reply: it skips the
		 * reverse lookup, a cache-cold miss on every new connection (~120 ns, issue 19). Two
		 * pods opening to each other at once (TCP simultaneous open) are then each judged as a
		 * new flow of their own direction, never as the other's reply. */
		v = NULL;
		if (!vg_tcp_opens(&p)) {
			vg_ct_fill(&k, &p, ep->ep_id, dir, 1);
			v = vg_ct.lookup(&k);
		}
		if (v && v->expires_ns > now) {
			reason = vg_ct_hit(ep, &k, v, &p, 1, revision, len, now, &rule_ref);
			if (dir == DIR_EGRESS && !REASON_IS_DROP(reason))
				v->seen |= CT_SEEN_SRC_OWN;
			/* A DNS answer to the pod's query: held until the agent learned it (lib/dns.h). */
			if (dir == DIR_INGRESS && !REASON_IS_DROP(reason) && vg_dns_hold(skb, ep, &p, now))
				return TC_ACT_SHOT;
			goto tracked;
		}
		/* To a Service: judged after DNAT, by the backend it reaches (lib/service.h). */
		if (dir == DIR_EGRESS && vg_svc_frontend(&p)) {
			if (!vg_mark_deferred(skb, ep))
				return vg_finish(skb, ep->ep_id, dir, DROP_DEFERRED_UNKNOWN, &p, &peer, 0, 0);
			vg_ct_fill(&k, &p, ep->ep_id, dir, 0);
			if (vg_ct_create(&k, &p, revision, 0, len, now, CT_DEFERRED, 0, ep->slot) != 0) {
				skb->mark &= ~VG_MARK_MASK;
				return vg_finish(skb, ep->ep_id, dir, DROP_CT_FULL, &p, &peer, 0, 0);
			}
			reason = ALLOW_DEFERRED;
			if (p.frag == VG_FRAG_NONE)
				return vg_finish(skb, ep->ep_id, dir, reason, &p, &peer, 0, 1);
			goto tracked;
		}
	}
	/* A new flow (lib/newflow.h). A drop or the host ends here (a drop names the tier's rule
	 * that denied it, if one did). */
	reason = vg_new_flow(skb, ep, &p, dir, sender, !untracked, 0, revision, len, now, &k, &peer, &rule_ref);
	if (!vg_new_flow_allowed(reason))
		return vg_finish(skb, ep->ep_id, dir, reason, &p, &peer, REASON_IS_DROP(reason) ? rule_ref : 0, 0);
	if (p.frag == VG_FRAG_NONE)
		return vg_finish(skb, ep->ep_id, dir, reason, &p, &peer, rule_ref, 1);

tracked:
	return vg_finish_flow(skb, ep->ep_id, dir, reason, &p, &peer, rule_ref, 0, now);
}

/*
 * The judge of a deferred packet (lib/service.h): the client's egress policy against the
 * post-DNAT destination, with its own conntrack entry (nat = 1). Counted and reported under the
 * client endpoint, direction egress. Returns a tc verdict.
 */
static __always_inline int vg_judge(struct __sk_buff *skb, __u64 now, __u32 *client)
{
	__u32 len = skb->len;
	struct vg_pkt p = {};
	struct ipcache_value peer = {};
	struct endpoint_info *ep;
	struct config *cfg;
	struct ct_key k = {};
	struct ct_value *v;
	__u32 zero = 0, revision = 0, rule_ref = 0;
	int isolated, ret, new_flow = 0;
	__u8 reason;

	ep = vg_deferred_client(skb);
	if (!ep)
		return vg_finish(skb, skb->ifindex, DIR_EGRESS, DROP_DEFERRED_UNKNOWN, &p, &peer, 0, 0);
	*client = ep->ep_id;
	isolated = vg_dir_isolated(ep, DIR_EGRESS);
	ret = vg_parse(skb, &p);
	if (ret != PARSE_OK) /* from_pod parsed it: only our own bug or a rewrite gets here */
		return vg_finish(skb, ep->ep_id, DIR_EGRESS, isolated ? DROP_MALFORMED : ALLOW_NOT_ISOLATED, &p,
				 &peer, 0, 0);
	/* conntrack reassembled and re-fragmented the datagram: the ports come from its first
	 * fragment as judged here (post-DNAT addresses). */
	if (p.frag == VG_FRAG_LATER && !vg_frag_ports(&p, now))
		return vg_finish(skb, ep->ep_id, DIR_EGRESS, isolated ? DROP_FRAG_UNKNOWN : ALLOW_NOT_ISOLATED, &p,
				 &peer, 0, 0);
	cfg = vg_config.lookup(&zero);
	if (cfg)
		revision = cfg->revision;

	vg_ct_fill(&k, &p, ep->ep_id, DIR_EGRESS, 0);
	k.nat = 1;
	v = vg_ct.lookup(&k);
	if (v && v->expires_ns > now) {
		reason = vg_ct_hit(ep, &k, v, &p, 0, revision, len, now, &rule_ref);
	} else {
		/* A new flow of the client's egress (lib/newflow.h), always tracked: from_pod marks
		 * only packets it tracks, never non-echo ICMP. */
		reason = vg_new_flow(skb, ep, &p, DIR_EGRESS, 0, 1, 1, revision, len, now, &k, &peer,
				     &rule_ref);
		if (!vg_new_flow_allowed(reason))
			return vg_finish(skb, ep->ep_id, DIR_EGRESS, reason, &p, &peer,
					 REASON_IS_DROP(reason) ? rule_ref : 0, 0);
		new_flow = 1;
	}
	return vg_finish_flow(skb, ep->ep_id, DIR_EGRESS, reason, &p, &peer, rule_ref, new_flow, now);
}

/*
 * Each program reads the clock once, first, and hands the time down. Verifier workaround:
 * vg_now() branches (lib/clock.h); read in vg_fast, vg_handle and vg_judge, its paths multiplied
 * the states explored after each read and put to_pod at 999k of the 1M-instruction budget.
 */
int from_pod(struct __sk_buff *skb)
{
	__u64 now = vg_now();

	/* The upper mark bits are ours (lib/service.h): start clean. */
	if (skb->mark & VG_MARK_MASK)
		skb->mark &= ~VG_MARK_MASK;
	if (vg_fast(skb, DIR_EGRESS, now))
		return TC_ACT_OK;
	return vg_handle(skb, DIR_EGRESS, 0, now);
}

/* A packet entering the pod, `client` its sender if a judge passed it (0: none). */
static __always_inline int vg_enter_pod(struct __sk_buff *skb, __u32 client, __u64 now)
{
	if (vg_fast(skb, DIR_INGRESS, now))
		return TC_ACT_OK;
	return vg_handle(skb, DIR_INGRESS, client, now);
}

/*
 * A deferred packet is judged for its client first (to_pod_judge); then it enters the pod like
 * any other (to_pod_judged). Verifier workaround: the judge is a whole new-flow decision (~232k of
 * to_pod's processed instructions, 311k as a program of its own); inlined here it put to_pod at
 * 995,701 of the 1M budget, so it runs in programs of their own, reached by tail call. A tail call that finds its slot empty returns here.
 */
int to_pod(struct __sk_buff *skb)
{
	if (skb->mark & VG_MARK_DEFERRED) {
		vg_tail.call(skb, VG_TAIL_JUDGE);
		return vg_tail_failed(skb);
	}
	return vg_enter_pod(skb, 0, vg_now());
}

/* vg_tail[VG_TAIL_JUDGE], reached only from to_pod: the judge, then to_pod's own decision. */
int to_pod_judge(struct __sk_buff *skb)
{
	__u32 client = 0;

	if (vg_judge(skb, vg_now(), &client) == TC_ACT_SHOT)
		return TC_ACT_SHOT;
	skb->cb[VG_CB_CLIENT] = client;
	vg_tail.call(skb, VG_TAIL_TO_POD);
	return vg_tail_failed(skb);
}

/* vg_tail[VG_TAIL_TO_POD], reached only from to_pod_judge, which passed the packet for its client. */
int to_pod_judged(struct __sk_buff *skb)
{
	return vg_enter_pod(skb, skb->cb[VG_CB_CLIENT], vg_now());
}

/*
 * A packet through a node interface with a Calico host endpoint (lib/hostep.h), direction
 * DIR_INGRESS arriving, DIR_EGRESS leaving. Counted and reported under the interface's ifindex.
 * What it does not police passes: non-IP, neighbour discovery, later fragments (the node
 * reassembles them only with their judged first fragment). Flows are tracked like an endpoint's
 * (ep_id = ifindex) and never revoked: a host endpoint's established connections survive a policy
 * change, as with Calico's conntrack.
 */
static __always_inline int vg_hep_handle(struct __sk_buff *skb, const struct hostep_info *hep, __u8 dir,
					 __u64 now)
{
	struct endpoint_info ep = {.ep_id = skb->ifindex}; /* no flags: tracked flows stay allowed */
	__u32 len = skb->len, zero = 0, revision = 0, rule_ref = 0;
	struct vg_pkt p = {};
	struct ipcache_value peer = {};
	struct config *cfg;
	struct ct_key k = {};
	struct ct_value *v;
	int untracked, track = 0, ret;
	__u8 reason;

	ret = vg_parse(skb, &p);
	if (ret == PARSE_NON_IP || (ret == PARSE_OK && (vg_is_icmp6_ctrl(&p) || p.frag == VG_FRAG_LATER)))
		return TC_ACT_OK;
	if (ret != PARSE_OK)
		return vg_finish(skb, ep.ep_id, dir, DROP_MALFORMED, &p, &peer, 0, 0);
	cfg = vg_config.lookup(&zero);
	if (cfg)
		revision = cfg->revision;
	if (p.icmp_err && vg_ct_related(skb, &ep, &p, dir, revision, now, &k, &rule_ref))
		return vg_finish(skb, ep.ep_id, dir, ALLOW_RELATED, &p, &peer, rule_ref, 0);
	untracked = vg_icmp_untracked(&p);
	if (!untracked) {
		vg_ct_fill(&k, &p, ep.ep_id, dir, 0);
		v = vg_ct.lookup(&k);
		if (v && v->expires_ns > now)
			return vg_finish(skb, ep.ep_id, dir, vg_ct_hit(&ep, &k, v, &p, 0, revision, len, now, &rule_ref),
					 &p, &peer, rule_ref, 0);
		vg_ct_fill(&k, &p, ep.ep_id, dir, 1);
		v = vg_ct.lookup(&k);
		if (v && v->expires_ns > now)
			return vg_finish(skb, ep.ep_id, dir, vg_ct_hit(&ep, &k, v, &p, 1, revision, len, now, &rule_ref),
					 &p, &peer, rule_ref, 0);
		/* Only a SYN opens a connection: a TCP segment of one this host endpoint never saw open
		 * (opened before it existed, or its entry expired) passes untracked, as Calico's
		 * conntrack lets established connections through. It cannot open anything. */
		if (p.proto == IPPROTO_TCP && !vg_tcp_opens(&p))
			return vg_finish(skb, ep.ep_id, dir, ALLOW_CT, &p, &peer, 0, 0);
	}
	if (vg_failsafe_port(&p, dir)) {
		reason = ALLOW_FAILSAFE;
		track = 1;
	} else {
		reason = vg_hep_verdict(skb, hep, &p, dir, &peer, &rule_ref, &track);
		if (REASON_IS_DROP(reason))
			return vg_finish(skb, ep.ep_id, dir, reason, &p, &peer, rule_ref, 0);
	}
	if (track && !untracked) {
		vg_ct_fill(&k, &p, ep.ep_id, dir, 0);
		vg_ct_create(&k, &p, revision, rule_ref, len, now, CT_ALLOWED, 0, 0);
	}
	return vg_finish(skb, ep.ep_id, dir, reason, &p, &peer, rule_ref, 1);
}

int to_uplink(struct __sk_buff *skb)
{
	/*
	 * The uplink carries all of the node's traffic; only deferred packets are ours. The others
	 * pass uncounted: a per-CPU map update per packet on the node's main interface would cost
	 * every workload on the node, for a figure the interface counters already give.
	 */
	__u32 ifindex = skb->ifindex;
	struct hostep_info *hep;

	if (skb->mark & VG_MARK_DEFERRED) {
		__u32 client = 0;

		if (vg_judge(skb, vg_now(), &client) == TC_ACT_SHOT)
			return TC_ACT_SHOT;
	}
	/* A host endpoint polices what leaves the node through it (one hash lookup otherwise). */
	hep = vg_hosteps.lookup(&ifindex);
	return hep ? vg_hep_handle(skb, hep, DIR_EGRESS, vg_now()) : TC_ACT_OK;
}

int from_uplink(struct __sk_buff *skb)
{
	struct vg_pkt p = {};
	struct ipcache_value peer = {};
	__u8 saddr[16] = {};
	__u8 family;

	/*
	 * A packet arriving from outside the node with the source address of this node or of one
	 * of its pods is forged (lib/trust.h): dropped and counted here, before kube-proxy's DNAT.
	 * Everything else passes uncounted, with only its source address read. The node's own
	 * multicast looped back to it arrives here too, with its own address: not a forgery.
	 */
	__u32 ifindex = skb->ifindex;
	struct hostep_info *hep;

	if (skb->pkt_type == VG_PACKET_LOOPBACK)
		return TC_ACT_OK;
	family = vg_source_addr(skb, saddr);
	if (family && vg_local_lookup(family, saddr)) {
		vg_parse(skb, &p); /* only for the drop event */
		return vg_finish(skb, skb->ifindex, DIR_INGRESS, DROP_SPOOFED, &p, &peer, 0, 0);
	}
	/* A host endpoint polices what arrives through it, before kube-proxy's DNAT. */
	hep = vg_hosteps.lookup(&ifindex);
	return hep ? vg_hep_handle(skb, hep, DIR_INGRESS, vg_now()) : TC_ACT_OK;
}
