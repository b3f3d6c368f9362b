/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Calico host endpoints on the node's interfaces (docs/INTERNALS.md "Host endpoints"): the
 * decision for a new flow through an interface with a vg_hosteps entry, in Calico's terms.
 *
 *   arriving (tc ingress, before kube-proxy's DNAT):
 *     1. preDNAT policies, on the original destination (a NodePort, a LoadBalancer address):
 *        Deny -> DROP_PREDNAT; Allow -> ALLOW_PREDNAT (normal host endpoint policy skipped);
 *        Pass or no match -> on (preDNAT policies have no default deny);
 *     2. to the node itself (a node address that is no Service frontend): its normal policies,
 *        Allow -> ALLOW_HOSTEP, Deny -> DROP_HOSTEP, else DROP_HOSTEP_END (Calico denies what
 *        no policy of a host endpoint allows, failsafe ports aside);
 *     3. forwarded (to a pod, through a NodePort or LoadBalancer, or routed): its applyOnForward
 *        policies if any select it for ingress (same outcomes), else ALLOW_HOSTEP;
 *   leaving (tc egress): from a socket of the node (skb->sk) as 2., anything else as 3.
 * The caller has passed failsafe ports and replies of tracked flows already.
 */
#ifndef VG_HOSTEP_H
#define VG_HOSTEP_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "service.h"
#include "trust.h"

/* A failsafe (protocol, destination port) for this direction: always passes, never locked out. */
static __always_inline int vg_failsafe_port(const struct vg_pkt *p, __u8 dir)
{
	struct failsafe_key k = {.port = p->dport, .proto = p->proto, .dir = dir};

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != VG_IPPROTO_SCTP)
		return 0;
	return vg_failsafe.lookup(&k) != NULL;
}

/* Is the destination the node itself (one of its addresses, not a Service frontend)? */
static __always_inline int vg_to_node(const struct vg_pkt *p)
{
	struct local_value *l = vg_local_lookup(p->family, p->daddr);

	return l && l->ifindex == 0 && !vg_svc_frontend(p);
}

/* One policy set's answer (a Calico slot): Allow/Deny decide, anything else is `otherwise`. */
static __always_inline __u8 vg_hep_set(__u32 profile, __u8 dir, const struct vg_pkt *p,
				       const struct ipcache_value *peer, __u8 allow, __u8 deny, __u8 otherwise,
				       __u32 *rule_ref)
{
	struct vg_tiers t;

	vg_tiers_lookup(profile, dir, p->proto, vg_policy_port(p), peer, 0, &t);
	if (t.calico == TIER_ACCEPT || t.calico == TIER_DENY) {
		*rule_ref = t.calico_ref;
		return t.calico == TIER_ACCEPT ? allow : deny;
	}
	return otherwise;
}

/*
 * The decision for a new flow through host endpoint `hep` in direction `dir` (DIR_INGRESS:
 * arriving at the node; DIR_EGRESS: leaving it). *track: whether to track the flow (every flow
 * the node itself takes part in, and forwarded ones whose replies a policy would judge).
 */
static __always_inline __u8 vg_hep_verdict(struct __sk_buff *skb, const struct hostep_info *hep,
					   const struct vg_pkt *p, __u8 dir, struct ipcache_value *peer,
					   __u32 *rule_ref, int *track)
{
	__u8 reason;
	__u32 fwd_flag = dir == DIR_INGRESS ? HEP_F_INGRESS_FWD : HEP_F_EGRESS_FWD;
	__u32 reply_fwd = dir == DIR_INGRESS ? HEP_F_EGRESS_FWD : HEP_F_INGRESS_FWD;

	vg_peer_lookup(p, dir, peer);
	*track = 1;
	if (dir == DIR_INGRESS && (hep->flags & HEP_F_PREDNAT)) {
		reason = vg_hep_set(hep->profile_pre, dir, p, peer, ALLOW_PREDNAT, DROP_PREDNAT, 0, rule_ref);
		if (reason)
			return reason;
	}
	if (dir == DIR_INGRESS ? vg_to_node(p) : skb->sk != 0)
		return vg_hep_set(hep->profile_host, dir, p, peer, ALLOW_HOSTEP, DROP_HOSTEP, DROP_HOSTEP_END,
				  rule_ref);
	if (hep->flags & fwd_flag)
		return vg_hep_set(hep->profile_fwd, dir, p, peer, ALLOW_HOSTEP, DROP_HOSTEP, DROP_HOSTEP_END,
				  rule_ref);
	*track = (hep->flags & reply_fwd) != 0;
	return ALLOW_HOSTEP;
}

#endif /* VG_HOSTEP_H */
