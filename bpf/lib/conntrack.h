/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Conntrack. Entries are per endpoint and hook direction: the forward key is
 * (ep, dir, saddr, daddr, sport, dport); a reply matches the reverse key (ep, !dir, swapped
 * tuple). Each entry carries the config revision its verdict was computed at; a packet that
 * finds an older revision re-evaluates the original direction's policy, so a revoked flow
 * stops at its next packet (both directions, via the DENIED tombstone) while a flow that is
 * still allowed is never interrupted.
 */
#ifndef VG_CONNTRACK_H
#define VG_CONNTRACK_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "service.h"
#include "trust.h"
#include "dnslearned.h"

static __always_inline void vg_ct_fill(struct ct_key *k, const struct vg_pkt *p, __u32 ep_id, __u8 dir,
				       int reverse)
{
	if (reverse) {
		vg_copy16(k->saddr, p->daddr);
		vg_copy16(k->daddr, p->saddr);
		k->sport = p->dport;
		k->dport = p->sport;
		k->dir = !dir;
	} else {
		vg_copy16(k->saddr, p->saddr);
		vg_copy16(k->daddr, p->daddr);
		k->sport = p->sport;
		k->dport = p->dport;
		k->dir = dir;
	}
	k->ep_id = ep_id;
	k->proto = p->proto;
	k->family = p->family;
	k->nat = 0;
}

static __always_inline __u64 vg_ct_timeout(__u8 proto, __u8 seen)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_OTHER;
	if (seen & (CT_SEEN_FIN | CT_SEEN_RST))
		return CT_TIMEOUT_TCP_CLOSE;
	if (seen & CT_SEEN_REPLY)
		return CT_TIMEOUT_TCP_EST;
	return CT_TIMEOUT_TCP_SYN;
}

static __always_inline __u8 vg_tcp_seen(const struct vg_pkt *p)
{
	__u8 seen = 0;

	if (p->proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & VG_TCP_FIN)
		seen |= CT_SEEN_FIN;
	if (p->tcp_flags & VG_TCP_RST)
		seen |= CT_SEEN_RST;
	return seen;
}

/*
 * The live entry of a packet's flow on endpoint (interface) ep_id: the forward key (established
 * flow), else the reverse key (a reply: *reply = 1). NULL if neither; *k holds the last key tried.
 */
static __always_inline struct ct_value *vg_ct_find(struct ct_key *k, const struct vg_pkt *p, __u32 ep_id,
						   __u8 dir, __u64 now, int *reply)
{
	struct ct_value *v;

	vg_ct_fill(k, p, ep_id, dir, 0);
	v = vg_ct.lookup(k);
	if (v && v->expires_ns > now) {
		*reply = 0;
		return v;
	}
	vg_ct_fill(k, p, ep_id, dir, 1);
	v = vg_ct.lookup(k);
	if (v && v->expires_ns > now) {
		*reply = 1;
		return v;
	}
	return NULL;
}

/* Re-run the ORIGINAL direction's policy for a tracked flow (after a revision change). A flow
 * masqueraded to a node address (origin) is judged by its real sender again (lib/trust.h). */
static __always_inline int vg_ct_recheck(const struct endpoint_info *ep, const struct ct_key *k,
					 __u16 origin, __u32 *rule_ref)
{
	struct ipcache_value peer;
	const __u8 *addr = k->dir == DIR_EGRESS ? k->daddr : k->saddr;

	vg_ipcache_lookup(k->family, addr, &peer);
	if (origin && peer.identity == ID_HOST)
		vg_origin_peer(origin, k->family, &peer);
	if (peer.identity == ID_HOST)
		return 1;
	__be16 port = vg_ct_policy_port(k->proto, k->family, k->dport);
	/* an address learned from DNS keeps its established flows after the TTL (fresh = 0) */
	__u32 fqdn = k->dir == DIR_EGRESS && !k->nat ? vg_dns_identity(ep, k->family, k->daddr, 0, 0) : 0;

	return !REASON_IS_DROP(vg_policy_verdict(ep, k->dir, k->proto, port, &peer, fqdn, 0, rule_ref, 0));
}

/*
 * Bring a tracked flow's verdict up to the config revision: after any policy change the ORIGINAL
 * direction is judged again and the result stored (ALLOWED, or the DENIED tombstone that stops
 * both directions). Returns whether the flow is allowed now.
 */
static __always_inline int vg_ct_current(const struct endpoint_info *ep, const struct ct_key *k,
					 struct ct_value *v, __u32 revision)
{
	/* A deferred flow's verdict lives in the judge's entry (nat = 1), re-checked there. */
	if (v->state == CT_DEFERRED)
		return 1;
	if (v->revision != revision) {
		__u32 ref = 0;

		v->state = vg_ct_recheck(ep, k, v->origin, &ref) ? CT_ALLOWED : CT_DENIED;
		v->rule_ref = ref;
		v->seen &= ~(CT_SEEN_REPLY_OK | CT_SEEN_SRC_OWN);
		v->revision = revision;
	}
	return v->state == CT_ALLOWED;
}

/* A reply on a MIDSTREAM entry: does the reply direction's own policy allow it? */
static __always_inline int vg_ct_reply_allowed(const struct endpoint_info *ep, const struct ct_key *k,
					       const struct vg_pkt *p)
{
	struct ipcache_value peer;
	__u32 ref = 0;
	__u8 rdir = !k->dir;

	vg_peer_lookup(p, rdir, &peer);
	if (peer.identity == ID_HOST)
		return 1;
	return !REASON_IS_DROP(vg_policy_verdict(ep, rdir, p->proto, vg_policy_port(p), &peer, 0, 0, &ref, 0));
}

/* A packet of an allowed tracked flow: its counts, what it says of the TCP state, its deadline. */
static __always_inline void vg_ct_touch(struct ct_value *v, const struct vg_pkt *p, int reply, __u32 len,
					__u64 now)
{
	__u8 seen, old_seen;
	__u64 deadline;

	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);

	old_seen = v->seen;
	seen = old_seen | vg_tcp_seen(p) | (reply ? CT_SEEN_REPLY : 0);
	deadline = now + vg_ct_timeout(p->proto, seen);
	if (seen != old_seen) {
		/* A state change may shorten the deadline (FIN/RST): write it now. */
		v->seen = seen;
		v->expires_ns = deadline;
	} else if (deadline > v->expires_ns + CT_REFRESH_SLACK) {
		/* Otherwise refresh at most about once a second, not per packet. */
		v->expires_ns = deadline;
	}
}

/*
 * Established-flow handling for a CT hit. Returns ALLOW_CT / ALLOW_REPLY / DROP_REVOKED, or
 * DROP_POLICY for a reply its own direction does not allow on a MIDSTREAM entry.
 */
static __always_inline __u8 vg_ct_hit(const struct endpoint_info *ep, const struct ct_key *k,
				      struct ct_value *v, const struct vg_pkt *p, int reply, __u32 revision,
				      __u32 len, __u64 now, __u32 *rule_ref)
{
	if (!vg_ct_current(ep, k, v, revision)) {
		*rule_ref = v->rule_ref;
		return DROP_REVOKED;
	}
	*rule_ref = v->rule_ref;
	if (reply && (v->seen & (CT_SEEN_MIDSTREAM | CT_SEEN_REPLY_OK)) == CT_SEEN_MIDSTREAM) {
		/*
		 * Without this, a flow whose tombstone was evicted (or expired) could be revived by
		 * the protected pod's own retransmission: it creates an entry in its open direction
		 * and the peer's packets would pass as its replies, bypassing the revoked direction.
		 */
		if (!vg_ct_reply_allowed(ep, k, p))
			return DROP_POLICY;
		v->seen |= CT_SEEN_REPLY_OK;
	}

	vg_ct_touch(v, p, reply, len, now);
	if (ep->slot != v->slot)
		v->slot = ep->slot; /* for the fast path */
	return reply ? ALLOW_REPLY : ALLOW_CT;
}

/*
 * The established fast path (issue 19): a packet of a flow tracked on this interface and allowed
 * at the current revision, decided with the conntrack lookup alone, before (without) the endpoint
 * lookup. What the full path would check first holds by construction:
 *   - an endpoint: the key carries the interface (ep_id == ifindex), and removing or changing an
 *     endpoint bumps the revision (and deletes its entries), so only an entry judged by the full
 *     path since then, on this interface, is at the current revision;
 *   - the source, leaving the pod: CT_SEEN_SRC_OWN, set when this flow's packet passed the source
 *     check at this revision (a reply's address is the entry's destination, which only the
 *     full path's check vouches for), cleared by every revision change;
 *   - a reply on an entry tracked from mid-stream: only once its own direction allowed it;
 *   - fragments, ICMP errors and untracked ICMP never come here (the caller's test).
 * A flow to a Service (CT_DEFERRED, leaving the pod) is marked for its judge with the slot the
 * entry holds, as the full path marks it with the endpoint's (lib/service.h).
 * Counted in vg_est_counters by the entry's slot (no hash lookup). Returns 1 if it decided the
 * packet (ALLOW_CT / ALLOW_REPLY / ALLOW_DEFERRED, counted), 0 for the full path, which decides
 * it as before.
 */
static __always_inline int vg_ct_fast(struct __sk_buff *skb, struct ct_value *v, const struct vg_pkt *p,
				      int reply, __u8 dir, __u32 revision, __u32 len, __u64 now)
{
	struct counter_value *c;
	__u32 idx, kind = reply;

	if (v->revision != revision)
		return 0;
	if (dir == DIR_EGRESS && !(v->seen & CT_SEEN_SRC_OWN))
		return 0;
	if (!v->slot || v->slot > VG_MAX_ENDPOINTS)
		return 0;
	if (v->state == CT_DEFERRED) {
		if (reply || dir != DIR_EGRESS || !vg_mark_slot(skb, v->slot))
			return 0;
		kind = 2;
	} else if (v->state != CT_ALLOWED) {
		return 0;
	} else if (reply && (v->seen & (CT_SEEN_MIDSTREAM | CT_SEEN_REPLY_OK)) == CT_SEEN_MIDSTREAM) {
		return 0;
	}
	idx = (__u32)v->slot * VG_EST_ROW + kind * 2 + dir;
	c = vg_est_counters.lookup(&idx);
	if (!c)
		return 0;
	vg_ct_touch(v, p, reply, len, now);
	/* Per-CPU value: no other CPU writes it, a plain add is enough. */
	c->packets += 1;
	c->bytes += len;
	return 1;
}

/*
 * An ICMP error (p->icmp_err) about a tracked allowed flow of this endpoint: the embedded packet
 * went through this endpoint in the other hook direction, so it is the forward key
 * (ep, !dir, inner tuple) or the reverse key (ep, dir, swapped inner tuple). The error must go
 * back to the embedded packet's sender, from a source that could have sent it
 * (vg_related_source_ok). Returns 1 (rule_ref set) when related; uses *k as scratch.
 */
static __always_inline int vg_ct_related(struct __sk_buff *skb, const struct endpoint_info *ep,
					 const struct vg_pkt *p, __u8 dir, __u32 revision, __u64 now,
					 struct ct_key *k, __u32 *rule_ref)
{
	struct ct_value *v;

	if (!vg_addr_eq(p->inner_saddr, p->daddr) || !vg_related_source_ok(skb, p, dir))
		return 0;
	vg_copy16(k->saddr, p->inner_saddr);
	vg_copy16(k->daddr, p->inner_daddr);
	k->sport = p->inner_sport;
	k->dport = p->inner_dport;
	k->ep_id = ep->ep_id;
	k->proto = p->inner_proto;
	k->dir = !dir;
	k->family = p->family;
	k->nat = 0;
	v = vg_ct.lookup(k);
	if (!v || v->expires_ns <= now) {
		vg_copy16(k->saddr, p->inner_daddr);
		vg_copy16(k->daddr, p->inner_saddr);
		k->sport = p->inner_dport;
		k->dport = p->inner_sport;
		k->dir = dir;
		v = vg_ct.lookup(k);
		if (!v || v->expires_ns <= now)
			return 0;
	}
	if (!vg_ct_current(ep, k, v, revision))
		return 0;
	*rule_ref = v->rule_ref;
	return 1;
}

/*
 * Create the entry of a new allowed (state CT_ALLOWED) or deferred (CT_DEFERRED) flow.
 * Returns 0 on success.
 */
static __always_inline int vg_ct_create(const struct ct_key *k, const struct vg_pkt *p, __u32 revision,
					__u32 rule_ref, __u32 len, __u64 now, __u8 state, __u16 origin,
					__u16 slot)
{
	struct ct_value v = {};

	v.seen = vg_tcp_seen(p);
	/* Leaving a pod, every caller has passed the source check (vg_handle) on this interface. */
	if (k->dir == DIR_EGRESS && !k->nat && slot)
		v.seen |= CT_SEEN_SRC_OWN;
	/*
	 * Only a SYN opens a TCP connection; anything else starts tracking in the middle of one.
	 * Not for deferred entries: their replies come from the frontend address, and the flow's
	 * verdict is re-judged on every forward packet at the judge anyway.
	 */
	if (state != CT_DEFERRED && p->proto == IPPROTO_TCP && !vg_tcp_opens(p))
		v.seen |= CT_SEEN_MIDSTREAM;
	v.expires_ns = now + vg_ct_timeout(p->proto, v.seen);
	v.packets = 1;
	v.bytes = len;
	v.revision = revision;
	v.rule_ref = rule_ref;
	v.state = state;
	v.origin = origin;
	/* A compile-time constant (0 unless a test build sets it): a store, no extra lookup. */
	v.marker = VG_UPGRADE_MARKER;
	v.slot = slot;
	return vg_ct.update((struct ct_key *)k, &v);
}

#endif /* VG_CONNTRACK_H */
