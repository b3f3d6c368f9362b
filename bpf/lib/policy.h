/* SPDX-License-Identifier: Apache-2.0 */
/* Peer identity (ipcache) and policy verdicts. */
#ifndef VG_POLICY_H
#define VG_POLICY_H

#include "common.h"
#include "maps.h"
#include "parse.h"

/* Identity of a peer address; an address no prefix covers is WORLD without a CIDR identity. */
static __always_inline void vg_ipcache_lookup(__u8 family, const __u8 *addr, struct ipcache_value *out)
{
	struct ipcache_value *v;

	if (family == 4) {
		struct ipcache4_key k = {.prefixlen = 32};

		__builtin_memcpy(&k.addr, addr, 4);
		v = vg_ipcache4.lookup(&k);
	} else {
		struct ipcache6_key k = {.prefixlen = 128};

		vg_copy16(k.addr, addr);
		v = vg_ipcache6.lookup(&k);
	}
	if (v) {
		out->identity = v->identity;
		out->cidr_identity = v->cidr_identity;
	} else {
		out->identity = ID_WORLD;
		out->cidr_identity = 0;
	}
}

/* The identity of a packet's peer: the destination of what leaves the pod, the source of what
 * enters it. */
static __always_inline void vg_peer_lookup(const struct vg_pkt *p, __u8 dir, struct ipcache_value *out)
{
	vg_ipcache_lookup(p->family, dir == DIR_EGRESS ? p->daddr : p->saddr, out);
}

/* One LPM lookup for one peer identity; only an ALLOW verdict allows. */
static __always_inline int vg_policy_try(struct policy_key *k, __u32 identity, __u32 *rule_ref)
{
	struct policy_value *v;

	k->identity = identity;
	v = vg_policy.lookup(k);
	if (v && v->verdict == VERDICT_ALLOW) {
		*rule_ref = v->rule_ref;
		return 1;
	}
	return 0;
}

/*
 * Verdict for a new flow (or a re-check of a tracked one) in direction `dir` of endpoint `ep`.
 * Returns a reason; the rule that allowed it goes to *rule_ref.
 */
static __always_inline __u8 vg_policy_verdict(const struct endpoint_info *ep, __u8 dir, __u8 proto,
					      __be16 dport, const struct ipcache_value *peer,
					      __u32 *rule_ref)
{
	struct policy_key k = {};

	if (ep->flags & EP_F_PENDING)
		return DROP_PENDING;
	if (!(ep->flags & vg_isolated_flag(dir)))
		return ALLOW_NOT_ISOLATED;

	k.prefixlen = POLICY_PLEN_FULL;
	k.ep_id = ep->ep_id;
	k.dir = dir;
	k.proto = proto;
	k.dport = vg_policy_port(proto, dport);
	/* The peer's own identity, then the longest policy prefix containing it, then ANY. */
	if (vg_policy_try(&k, peer->identity, rule_ref))
		return ALLOW_POLICY;
	if (peer->cidr_identity && vg_policy_try(&k, peer->cidr_identity, rule_ref))
		return ALLOW_POLICY;
	if (vg_policy_try(&k, ID_ANY, rule_ref))
		return ALLOW_POLICY;
	/* Audit mode: the flow is tracked like an allowed one, so only its first packet is reported. */
	if (ep->flags & vg_audit_flag(dir))
		return ALLOW_AUDIT;
	return DROP_POLICY;
}

#endif /* VG_POLICY_H */
