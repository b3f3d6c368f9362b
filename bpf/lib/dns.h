/* SPDX-License-Identifier: Apache-2.0 */
/*
 * DNS for domainNames rules (issue 20; docs/INTERNALS.md "Egress by domain name").
 *
 * For a pod whose egress a domainNames rule polices (EP_F_DNS), its DNS traffic is shown to the
 * agent: a query leaving the pod is copied to vg_dns_held and goes on; an answer entering it, a
 * reply of a flow the pod opened, is copied there and dropped here ("held"). The agent matches
 * the answer to a query the pod sent, writes the answer's addresses into vg_dns_learned under
 * the domain identity of the question's name, and only then sends the frame into the pod again
 * with VG_MARK_DNS_RELEASED ("released"), which passes this step and is judged as any reply. So
 * the pod cannot have the answer before the datapath knows the addresses: no first-connection
 * race. Parsing DNS stays in the agent: names, compression, CNAME chains, TCP streams.
 *
 * Fail closed, never stuck: while the agent does not release (its vg_dns_state deadline passed),
 * the ring is full or the frame is longer than VG_DNS_HELD_MAX, the answer passes unheld
 * (DNS_UNHELD): the pod resolves, and its new flows to those addresses stay denied.
 */
#ifndef VG_DNS_H
#define VG_DNS_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "events.h"

#define VG_DNS_PORT 53

/* UDP or TCP to (leaving the pod) or from (entering it) port 53. */
static __always_inline int vg_dns_candidate(const struct vg_pkt *p, __u8 dir)
{
	if (p->proto != IPPROTO_UDP && p->proto != IPPROTO_TCP)
		return 0;
	return (dir == DIR_EGRESS ? p->dport : p->sport) == bpf_htons(VG_DNS_PORT);
}

/* Copy the frame to vg_dns_held. 0 on success. */
static __always_inline int vg_dns_copy(struct __sk_buff *skb, __u32 ep_id, __u8 kind)
{
	__u32 zero = 0, len = skb->len;
	struct dns_held *h;

	if (len == 0 || len > VG_DNS_HELD_MAX)
		return -1;
	/* Verifier workaround: 1 + ((len - 1) & (MAX - 1)), the mask in asm so the compiler cannot
	 * drop it as redundant, is len itself here, and shows the verifier a size in 1..MAX (MAX a
	 * power of two) for the copy; a check on len alone is lost on a register copy. */
	len -= 1;
	asm volatile("%[n] &= %[m]" : [n] "+r"(len) : [m] "i"(VG_DNS_HELD_MAX - 1));
	len += 1;
	h = vg_dns_scratch.lookup(&zero);
	if (!h)
		return -1;
	h->ts_ns = bpf_ktime_get_ns();
	h->ifindex = skb->ifindex;
	h->ep_id = ep_id;
	h->len = len;
	h->kind = kind;
	if (bpf_skb_load_bytes(skb, 0, h->data, len) < 0)
		return -1;
	return vg_dns_held.ringbuf_output(h, __builtin_offsetof(struct dns_held, data) + len, 0) == 0 ? 0 : -1;
}

/* Is the agent releasing held answers (it pushes the deadline forward every second)? */
static __always_inline int vg_dns_agent_releasing(__u64 now)
{
	__u32 zero = 0;
	struct dns_state *s = vg_dns_state.lookup(&zero);

	return s && now < s->hold_until_ns;
}

/*
 * An answer entering the pod, a reply of a flow it opened (its query's conntrack entry, which
 * vg_handle found) and allowed: hold it for the agent (1: counted DNS_HELD, the caller drops it),
 * or 0 to let it pass: not DNS, not a pod that learns from DNS, released by the agent (the mark
 * is ours and cleared), or not holdable (DNS_UNHELD: it passes and teaches nothing).
 */
static __always_inline int vg_dns_hold(struct __sk_buff *skb, const struct endpoint_info *ep,
				       const struct vg_pkt *p, __u64 now)
{
	if (!(ep->flags & EP_F_DNS) || !vg_dns_candidate(p, DIR_INGRESS) || p->frag == VG_FRAG_LATER)
		return 0;
	if ((skb->mark & VG_MARK_MASK) == VG_MARK_DNS_RELEASED) {
		skb->mark &= ~VG_MARK_MASK;
		return 0;
	}
	if (!vg_dns_agent_releasing(now) || vg_dns_copy(skb, ep->ep_id, DNS_HELD_ANSWER) != 0) {
		vg_count(ep->ep_id, DNS_UNHELD, DIR_INGRESS, skb->len);
		return 0;
	}
	vg_count(ep->ep_id, DNS_HELD, DIR_INGRESS, skb->len);
	return 1;
}

#endif /* VG_DNS_H */
