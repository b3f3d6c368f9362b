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
	k->pad = 0;
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

/* Re-run the ORIGINAL direction's policy for a tracked flow (after a revision change). */
static __always_inline int vg_ct_recheck(const struct endpoint_info *ep, const struct ct_key *k,
					 __u32 *rule_ref)
{
	struct ipcache_value peer;
	const __u8 *addr = k->dir == DIR_EGRESS ? k->daddr : k->saddr;

	vg_ipcache_lookup(k->family, addr, &peer);
	if (peer.identity == ID_HOST)
		return 1;
	return !REASON_IS_DROP(vg_policy_verdict(ep, k->dir, k->proto, k->dport, &peer, rule_ref));
}

/*
 * Established-flow handling for a CT hit. Returns ALLOW_CT / ALLOW_REPLY / DROP_REVOKED.
 */
static __always_inline __u8 vg_ct_hit(const struct endpoint_info *ep, const struct ct_key *k,
				      struct ct_value *v, const struct vg_pkt *p, int reply, __u32 revision,
				      __u32 len, __u64 now, __u32 *rule_ref)
{
	__u8 seen, old_seen;
	__u64 deadline;

	if (v->revision != revision) {
		__u32 ref = 0;

		v->state = vg_ct_recheck(ep, k, &ref) ? CT_ALLOWED : CT_DENIED;
		v->rule_ref = ref;
		v->revision = revision;
	}
	*rule_ref = v->rule_ref;
	if (v->state != CT_ALLOWED)
		return DROP_REVOKED;

	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);

	old_seen = v->seen;
	seen = old_seen | vg_tcp_seen(p) | (reply ? CT_SEEN_REPLY : 0);
	deadline = now + vg_ct_timeout(k->proto, seen);
	if (seen != old_seen) {
		/* A state change may shorten the deadline (FIN/RST): write it now. */
		v->seen = seen;
		v->expires_ns = deadline;
	} else if (deadline > v->expires_ns + CT_REFRESH_SLACK) {
		/* Otherwise refresh at most about once a second, not per packet. */
		v->expires_ns = deadline;
	}
	return reply ? ALLOW_REPLY : ALLOW_CT;
}

/* Create the entry of a new allowed flow. Returns 0 on success. */
static __always_inline int vg_ct_create(const struct ct_key *k, const struct vg_pkt *p, __u32 revision,
					__u32 rule_ref, __u32 len, __u64 now)
{
	struct ct_value v = {};

	v.seen = vg_tcp_seen(p);
	v.expires_ns = now + vg_ct_timeout(p->proto, v.seen);
	v.packets = 1;
	v.bytes = len;
	v.revision = revision;
	v.rule_ref = rule_ref;
	v.state = CT_ALLOWED;
	/* A compile-time constant (0 unless a test build sets it): a store, no extra lookup. */
	v.marker = VG_UPGRADE_MARKER;
	return vg_ct.update((struct ct_key *)k, &v);
}

#endif /* VG_CONNTRACK_H */
