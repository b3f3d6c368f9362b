/* SPDX-License-Identifier: Apache-2.0 */
/* Peer identity (ipcache) and policy verdicts. */
#ifndef VG_POLICY_H
#define VG_POLICY_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "events.h"

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
		out->ns_identity = v->ns_identity;
	} else {
		out->identity = ID_WORLD;
		out->cidr_identity = 0;
		out->ns_identity = 0;
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

/* The tiers' answers for one packet, merged over its lookups. */
struct vg_tiers {
	__u32 admin_rank, admin_ref;
	__u32 base_rank, base_ref;
	__u32 calico_rank, calico_ref;
	__u32 log_rank, log_ref;
	__u8 admin, base, calico, log;
};

/*
 * One LPM lookup in the endpoint's tier profile for one peer identity, merged into *t: in each
 * tier the lowest rank (the rule first in the tier's order) wins. Each entry already holds its
 * identity's whole answer (the compiler folded the shorter prefixes in), so five lookups at
 * most answer for every policy, tier and rule.
 */
static __always_inline void vg_tiers_try(struct policy_key *k, __u32 identity, struct vg_tiers *t)
{
	struct policy_value *v;

	k->identity = identity;
	v = vg_policy.lookup(k);
	if (!v)
		return;
	if (v->admin != TIER_NONE && v->admin_rank < t->admin_rank) {
		t->admin = v->admin;
		t->admin_rank = v->admin_rank;
		t->admin_ref = v->admin_ref;
	}
	if (v->baseline != TIER_NONE && v->baseline_rank < t->base_rank) {
		t->base = v->baseline;
		t->base_rank = v->baseline_rank;
		t->base_ref = v->baseline_ref;
	}
	if (v->calico != TIER_NONE && v->calico_rank < t->calico_rank) {
		t->calico = v->calico;
		t->calico_rank = v->calico_rank;
		t->calico_ref = v->calico_ref;
	}
	if (v->log && v->log_rank < t->log_rank) {
		t->log = 1;
		t->log_rank = v->log_rank;
		t->log_ref = v->log_ref;
	}
}

static __always_inline void vg_tiers_init(struct vg_tiers *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->admin_rank = t->base_rank = t->calico_rank = t->log_rank = 0xffffffff;
}

/*
 * The lookups of a tier profile, merged into *t: the peer's identity, its CIDR identity, its
 * namespace identity (a pod address: the keys of rules selecting every pod of its namespace),
 * the domain identity `fqdn` the pod learned the address under (an egress peer: domainNames
 * rules) and ANY. NetworkPolicy (vg_np_verdict) has neither and keeps its three.
 */
static __always_inline void vg_tiers_lookup(__u32 profile, __u8 dir, __u8 proto, __be16 port,
					    const struct ipcache_value *peer, __u32 fqdn, struct vg_tiers *t)
{
	struct policy_key k = {.prefixlen = POLICY_PLEN_FULL, .ep_id = profile, .dir = dir, .proto = proto,
			       .dport = port};

	vg_tiers_init(t);
	vg_tiers_try(&k, peer->identity, t);
	if (peer->cidr_identity)
		vg_tiers_try(&k, peer->cidr_identity, t);
	if (peer->ns_identity)
		vg_tiers_try(&k, peer->ns_identity, t);
	/* the domain identity the pod learned for this address (lib/dnslearned.h), if any */
	if (fqdn)
		vg_tiers_try(&k, fqdn, t);
	vg_tiers_try(&k, ID_ANY, t);
}

/*
 * NetworkPolicy where it isolates the direction: the peer's own identity, then the longest
 * policy prefix containing it, then ANY; the first that allows decides. Else audit or drop.
 */
static __always_inline __u8 vg_np_verdict(const struct endpoint_info *ep, __u8 dir, struct policy_key *k,
					  const struct ipcache_value *peer, __u32 *rule_ref)
{
	k->ep_id = ep->ep_id;
	if (vg_policy_try(k, peer->identity, rule_ref))
		return ALLOW_POLICY;
	if (peer->cidr_identity && vg_policy_try(k, peer->cidr_identity, rule_ref))
		return ALLOW_POLICY;
	if (vg_policy_try(k, ID_ANY, rule_ref))
		return ALLOW_POLICY;
	/* Audit mode: the flow is tracked like an allowed one, so only its first packet is reported. */
	if (ep->flags & vg_audit_flag(dir))
		return ALLOW_AUDIT;
	return DROP_POLICY;
}

/*
 * The tiers, per direction (docs/INTERNALS.md "Tiers"): up to five lookups in the endpoint's tier
 * profile; the Admin tier's first matching rule decides on Accept or Deny; Pass, or no match,
 * hands over to Calico's tier where a Calico policy selects the pod (its first matching rule,
 * NetworkPolicies' among them, decides on Allow or Deny; no match is the end-of-tier drop; Pass
 * goes on to Baseline), else to NetworkPolicy, which decides if it isolates the direction (up to
 * three more lookups, the endpoint's own entries); otherwise the Baseline tier's first matching
 * rule decides on Accept or Deny; else the direction is open. `host`: the destination is the
 * pod's own node, which only a Deny rule blocks (ALLOW_HOST where anything else decides).
 */
static __always_inline __u8 vg_tiers_verdict(const struct endpoint_info *ep, __u8 dir, struct policy_key *k,
					     const struct ipcache_value *peer, __u32 fqdn, int host, __u32 *rule_ref,
					     const struct vg_pkt *log_pkt)
{
	struct vg_tiers t;

	vg_tiers_lookup(ep->tier_profile, dir, k->proto, k->dport, peer, fqdn, &t);
	if (t.admin == TIER_ACCEPT || t.admin == TIER_DENY) {
		*rule_ref = t.admin_ref;
		return t.admin == TIER_ACCEPT ? ALLOW_ADMIN : DROP_ADMIN;
	}
	if (ep->flags & vg_calico_flag(dir)) {
		/* A Log rule before the deciding one: reported, and evaluation goes on. */
		if (log_pkt && t.log && t.log_rank < t.calico_rank)
			vg_emit(log_pkt, ep->ep_id, dir, LOG_CALICO, peer, t.log_ref);
		if (t.calico == TIER_ACCEPT) {
			*rule_ref = t.calico_ref;
			return host ? ALLOW_HOST : ALLOW_CALICO;
		}
		if (t.calico == TIER_DENY) {
			*rule_ref = t.calico_ref;
			return DROP_CALICO;
		}
		if (t.calico != TIER_PASS)
			return host ? ALLOW_HOST : DROP_CALICO_END;
	} else if (ep->flags & vg_isolated_flag(dir)) {
		return host ? ALLOW_HOST : vg_np_verdict(ep, dir, k, peer, rule_ref);
	}
	if (t.base == TIER_ACCEPT || t.base == TIER_DENY) {
		*rule_ref = t.base_ref;
		return t.base == TIER_ACCEPT ? ALLOW_BASELINE : DROP_BASELINE;
	}
	return host ? ALLOW_HOST : ALLOW_NOT_ISOLATED;
}

/*
 * Verdict for a new flow (or a re-check of a tracked one) in direction `dir` of endpoint `ep`.
 * Returns a reason; the deciding rule goes to *rule_ref (left alone when no rule decided).
 * `host`: the peer is this node; only an egress flow of a tiered endpoint gets here with it
 * (lib/newflow.h passes the others as ALLOW_HOST), so only the tiers read it. An endpoint no
 * ClusterNetworkPolicy selects keeps NetworkPolicy's path, no tier work.
 */
static __always_inline __u8 vg_policy_verdict(const struct endpoint_info *ep, __u8 dir, __u8 proto,
					      __be16 dport, const struct ipcache_value *peer, __u32 fqdn, int host,
					      __u32 *rule_ref, const struct vg_pkt *log_pkt)
{
	struct policy_key k = {};

	if (ep->flags & EP_F_PENDING)
		return DROP_PENDING;
	if (!(ep->flags & (vg_isolated_flag(dir) | vg_tiered_flag(dir))))
		return ALLOW_NOT_ISOLATED;

	k.prefixlen = POLICY_PLEN_FULL;
	k.dir = dir;
	k.proto = proto;
	k.dport = dport; /* the policy port: vg_policy_port / vg_ct_policy_port */
	if (ep->flags & vg_tiered_flag(dir))
		return vg_tiers_verdict(ep, dir, &k, peer, fqdn, host, rule_ref, log_pkt);
	return vg_np_verdict(ep, dir, &k, peer, rule_ref);
}

#endif /* VG_POLICY_H */
