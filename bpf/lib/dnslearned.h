/* SPDX-License-Identifier: Apache-2.0 */
/* What a pod learned from DNS answers (vg_dns_learned, written by the agent: lib/dns.h). */
#ifndef VG_DNSLEARNED_H
#define VG_DNSLEARNED_H

#include "common.h"
#include "maps.h"

/*
 * The domain identity of an egress peer address this endpoint learned (0: none). `fresh`: for
 * a new flow the entry must not have expired; a tracked flow's re-check accepts an expired one
 * (established connections stay allowed after the TTL; the agent removes entries no flow uses).
 */
static __always_inline __u32 vg_dns_identity(const struct endpoint_info *ep, __u8 family, const __u8 *addr,
					     __u64 now, int fresh)
{
	struct dns_learned_key k = {.ep_id = ep->ep_id, .family = family};
	struct dns_learned_value *v;

	if (!(ep->flags & EP_F_DNS))
		return 0;
	vg_copy16(k.addr, addr); /* (an IPv4 address: its 4 bytes, then zeros, as everywhere) */
	v = vg_dns_learned.lookup(&k);
	if (!v || (fresh && v->expires_ns <= now))
		return 0;
	return v->identity;
}

#endif /* VG_DNSLEARNED_H */
