/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Egress to a Service is judged by the backend it reaches (DESIGN.md). kube-proxy rewrites the
 * destination (DNAT) in the node's PREROUTING, after from_pod has seen the packet, so from_pod
 * cannot know the backend. It defers instead:
 *
 *   from_pod   new flow to a vg_svc frontend: a CT_DEFERRED entry for the pre-DNAT tuple (it lets
 *              the replies, which come from the frontend address, back in) and the packet leaves
 *              with VG_MARK_DEFERRED | slot << VG_MARK_SLOT_SHIFT in skb->mark; every later
 *              forward packet of the flow gets the same mark.
 *   judge      after DNAT and routing the packet meets either to_pod of a backend on this node
 *              or to_uplink on the way to another node. Both clear the mark, find the client
 *              by its slot and judge the packet by the client's egress policy on the post-DNAT
 *              tuple (vethguard.c vg_judge: its own conntrack entry, key with nat = 1 and
 *              revision-stamped like any other; a miss is a new flow, lib/newflow.h).
 *
 * The mark survives nftables/iptables (they OR in their own low bits) and is scrubbed when the
 * packet enters the pod's namespace, so a pod can never forge it.
 */
#ifndef VG_SERVICE_H
#define VG_SERVICE_H

#include "common.h"
#include "maps.h"
#include "parse.h"

/* Is (daddr, dport, proto) of this packet a Service frontend kube-proxy DNATs on this node? */
static __always_inline int vg_svc_frontend(const struct vg_pkt *p)
{
	struct svc_key k = {};

	vg_copy16(k.addr, p->daddr);
	k.port = p->dport;
	k.proto = p->proto;
	k.family = p->family;
	return vg_svc.lookup(&k) != NULL;
}

/* Tag a packet whose egress verdict is deferred with its client's slot; 0 if there is none
 * (fail closed). */
static __always_inline int vg_mark_slot(struct __sk_buff *skb, __u32 slot)
{
	if (slot == 0 || slot > (VG_MARK_SLOT_MASK >> VG_MARK_SLOT_SHIFT))
		return 0;
	skb->mark = (skb->mark & ~VG_MARK_MASK) | VG_MARK_DEFERRED | (slot << VG_MARK_SLOT_SHIFT);
	return 1;
}

static __always_inline int vg_mark_deferred(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	return vg_mark_slot(skb, ep->slot);
}

/* The client endpoint of a deferred packet (NULL: unknown, drop). Clears our mark bits. */
static __always_inline struct endpoint_info *vg_deferred_client(struct __sk_buff *skb)
{
	__u32 slot = (skb->mark & VG_MARK_SLOT_MASK) >> VG_MARK_SLOT_SHIFT;
	__u32 *ep_id;

	skb->mark &= ~VG_MARK_MASK;
	ep_id = vg_slots.lookup(&slot);
	if (!ep_id)
		return NULL;
	return vg_endpoints.lookup(ep_id);
}

#endif /* VG_SERVICE_H */
