/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Which packets may speak for whom (docs/INTERNALS.md, "Threat model").
 *
 * An address of this node or of one of its pods (vg_local) is believed only where it belongs:
 *   - a local pod's address only on that pod's own veth: from_pod drops any other source
 *     (vg_source_is_own); to_pod and from_uplink drop a local pod's address that arrives from
 *     anywhere else (DROP_SPOOFED);
 *   - the node's addresses only on packets the node itself sends (skb->ingress_ifindex 0).
 *     A packet the node FORWARDS with its own address as source was masqueraded on someone
 *     else's behalf (kube-proxy: NodePort / LoadBalancer, hairpin): it is judged by who really
 *     sent it, the local pod it came from, or an outside sender, never by the node exemption.
 *     from_uplink drops the node's addresses arriving from outside, so what reaches a pod with
 *     one from an uplink is a masquerade, not a forgery.
 * IPv6 control messages pass unjudged only as the link allows them (vg_icmp6_ctrl_ok), and an
 * ICMP error is RELATED only when its sender could have sent it (vg_related_source_ok).
 */
#ifndef VG_TRUST_H
#define VG_TRUST_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"

#define VG_PACKET_LOOPBACK 5 /* skb->pkt_type of the node's own multicast looped back */

/* ND messages are small: NS/NA/RS are 8-24 bytes plus a few 8-byte options. */
#define VG_ND_MAX_LEN 128
/* RA, Redirect and MLD carry more options or records, but never need fragmentation. */
#define VG_ICMP6_CTRL_MAX_LEN 1280

static __always_inline struct local_value *vg_local_lookup(__u8 family, const __u8 *addr)
{
	struct local_key k = {};

	if (family == 4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		vg_copy16(k.addr, addr);
	k.family = family;
	return vg_local.lookup(&k);
}

/*
 * The source address of an IP frame and its family (0: not IPv4/IPv6 or too short), reading only
 * those bytes: from_uplink's fast path, on every packet that reaches the node.
 */
static __always_inline __u8 vg_source_addr(struct __sk_buff *skb, __u8 *addr)
{
	if (skb->protocol == bpf_htons(VG_ETH_P_IP)) {
		if (!vg_fits_frame(skb, VG_ETH_HLEN, sizeof(struct vg_ip4)) ||
		    vg_load(skb, VG_ETH_HLEN + 12, addr, 4) < 0)
			return 0;
		return 4;
	}
	if (skb->protocol == bpf_htons(VG_ETH_P_IPV6)) {
		if (!vg_fits_frame(skb, VG_ETH_HLEN, sizeof(struct vg_ip6)) ||
		    vg_load(skb, VG_ETH_HLEN + 8, addr, 16) < 0)
			return 0;
		return 6;
	}
	return 0;
}

static __always_inline int vg_is_link_local6(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

static __always_inline int vg_is_unspecified6(const __u8 *a)
{
	__u64 a0, a1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	return !a0 && !a1;
}

/*
 * ALLOW_ICMP6_CTRL, or 0: the message is judged by policy like any other ICMPv6.
 *   NS, NA, RS: hop limit 255 (RFC 4861: a receiver discards anything else, because it proves
 *     the message was not routed) and at most VG_ND_MAX_LEN bytes. Entering the pod, hop limit
 *     255 proves it came over the link. Leaving the pod, it must stay on the link: to a
 *     link-local or link-scope multicast address, or to an address of this node or of a pod
 *     bridged with it (vg_local); never to an address the node would route on.
 *   RA, Redirect: only the node, the pod's router, sends them (from a link-local address,
 *     hop limit 255); a pod never may (rogue router advertisements on a bridge).
 *   MLD: link-local or unspecified source, hop limit 1, to a multicast group.
 */
static __always_inline int vg_icmp6_ctrl_ok(struct __sk_buff *skb, const struct vg_pkt *p, __u8 dir)
{
	__u32 len = p->end - p->l4_off;

	switch (p->icmp_type) {
	case 133: /* router solicitation */
	case 135: /* neighbour solicitation */
	case 136: /* neighbour advertisement */
		if (p->hop_limit != 255 || len > VG_ND_MAX_LEN)
			return 0;
		if (dir == DIR_INGRESS)
			return 1;
		if (vg_is_link_local6(p->daddr) || (p->daddr[0] == 0xff && (p->daddr[1] & 0x0f) == 0x02))
			return 1;
		return vg_local_lookup(6, p->daddr) != NULL;
	case 134: /* router advertisement */
	case 137: /* redirect */
		return dir == DIR_INGRESS && skb->ingress_ifindex == 0 && p->hop_limit == 255 &&
		       vg_is_link_local6(p->saddr) && len <= VG_ICMP6_CTRL_MAX_LEN;
	case 130: /* MLD query */
	case 131: /* MLDv1 report */
	case 132: /* MLDv1 done */
	case 143: /* MLDv2 report */
		return p->hop_limit == 1 && (vg_is_link_local6(p->saddr) || vg_is_unspecified6(p->saddr)) &&
		       p->daddr[0] == 0xff && len <= VG_ICMP6_CTRL_MAX_LEN;
	}
	return 0;
}

/* The identity of endpoint ep's own address of this family (its ipcache entry). */
static __always_inline void vg_endpoint_peer(const struct endpoint_info *ep, __u8 family,
					     struct ipcache_value *out)
{
	if (family == 4)
		vg_ipcache_lookup(4, (const __u8 *)&ep->ipv4, out);
	else
		vg_ipcache_lookup(6, ep->ipv6, out);
}

/*
 * Who really sent a packet entering a pod (to_pod, new flow), given *peer = the ipcache entry of
 * its source address and `sender`, the client endpoint of a deferred Service packet (0: none).
 * Returns DROP_SPOOFED, or 0 with *peer corrected and *origin set for a masqueraded flow
 * (ct_value.origin):
 *   sent by the node itself (ingress_ifindex 0, no sender): its source is the truth;
 *   from a local pod (its veth, or the deferred mark its from_pod set): from_pod checked the
 *     source; if the node masqueraded it to its own address (a Service hairpin), the pod is
 *     the sender;
 *   from anywhere else (an uplink, another interface): a local pod's address is a forgery; the
 *     node's address is a masquerade for an outside sender (or a forgery on an interface
 *     from_uplink does not watch): judged as outside the cluster, with the ipBlocks that
 *     contain the address, not as the node.
 */
static __always_inline int vg_ingress_origin(struct __sk_buff *skb, __u32 sender, const struct vg_pkt *p,
					     struct ipcache_value *peer, __u16 *origin)
{
	__u32 iif = sender ? sender : skb->ingress_ifindex;
	struct endpoint_info *src_ep;
	struct local_value *local;

	*origin = 0;
	if (iif == 0)
		return 0;
	src_ep = vg_endpoints.lookup(&iif);
	if (src_ep) {
		if (peer->identity == ID_HOST) {
			vg_endpoint_peer(src_ep, p->family, peer);
			*origin = src_ep->slot ? src_ep->slot : CT_ORIGIN_OUTSIDE;
		}
		return 0;
	}
	local = vg_local_lookup(p->family, p->saddr);
	if (local && local->ifindex)
		return DROP_SPOOFED;
	if (peer->identity == ID_HOST) {
		peer->identity = ID_WORLD;
		*origin = CT_ORIGIN_OUTSIDE;
	}
	return 0;
}

/* The peer of a masqueraded flow when its verdict is computed again (ct_value.origin). */
static __always_inline void vg_origin_peer(__u16 origin, __u8 family, struct ipcache_value *peer)
{
	__u32 slot = origin;
	__u32 *ep_id;
	struct endpoint_info *ep;

	peer->identity = ID_WORLD;
	if (origin == CT_ORIGIN_OUTSIDE)
		return;
	ep_id = vg_slots.lookup(&slot);
	if (!ep_id)
		return;
	ep = vg_endpoints.lookup(ep_id);
	if (ep)
		vg_endpoint_peer(ep, family, peer);
}

/*
 * May the outer source of an ICMP error (p->icmp_err) speak for the flow it embeds? The flow's
 * peer itself (the embedded destination); a node, this one (only on packets it sends itself)
 * or another (a router between nodes); or, for a flow to outside the cluster, any address
 * outside it (routers on an internet path: path MTU discovery must keep working). Never
 * another pod. At most two ipcache lookups, only for ICMP errors.
 */
static __always_inline int vg_related_source_ok(struct __sk_buff *skb, const struct vg_pkt *p, __u8 dir)
{
	struct ipcache_value src, flow_peer;

	if (vg_addr_eq(p->saddr, p->inner_daddr))
		return 1;
	vg_ipcache_lookup(p->family, p->saddr, &src);
	if (src.identity == ID_HOST)
		return dir == DIR_EGRESS || skb->ingress_ifindex == 0;
	if (src.identity == ID_REMOTE_NODE)
		return 1;
	if (src.identity != ID_WORLD)
		return 0;
	vg_ipcache_lookup(p->family, p->inner_daddr, &flow_peer);
	return flow_peer.identity == ID_WORLD;
}

#endif /* VG_TRUST_H */
