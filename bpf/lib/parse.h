/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet parsing. Every read goes through vg_load() after an explicit check that the header
 * fits ("check that a header fits before reading it"). vg_load copies the header to the stack:
 * straight from the skb's linear head when it is there (nearly always: the stack builds
 * headers linear), else with bpf_skb_load_bytes(), which also works on non-linear skbs without
 * bpf_skb_pull_data(). Copies on the stack keep the verifier happy with variable offsets (IPv4
 * options, IPv6 extension headers).
 *
 * "Fits" means within the IP datagram, not within the frame: a frame may carry link-layer
 * padding after the datagram (Ethernet pads to 60 bytes; a pod can append anything), and bytes
 * read from there would make a truncated L4 header look complete, while the node trims the frame
 * to its IP length and forwards the truncated header. So the fixed IP header is bounded by
 * skb->len, and everything after it by p->end = 14 + IPv4 total length / 14 + 40 + IPv6 payload
 * length, which must itself lie within the frame. (IPv6 jumbograms and BIG TCP GSO packets, whose
 * length fields are 0, are therefore malformed: neither is enabled on pod veths by default.)
 */
#ifndef VG_PARSE_H
#define VG_PARSE_H

#include "common.h"

#define VG_FRAG_NONE 0
#define VG_FRAG_FIRST 1 /* offset 0, more fragments follow: carries the L4 header */
#define VG_FRAG_LATER 2 /* offset != 0: no L4 header; ports come from vg_frag */

enum vg_parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP = 1,
	PARSE_MALFORMED = 2,
};

/* IPv6 extension headers walked before the upper-layer header. */
#define VG_NEXTHDR_HOP 0
#define VG_NEXTHDR_ROUTING 43
#define VG_NEXTHDR_FRAGMENT 44
#define VG_NEXTHDR_AUTH 51
#define VG_NEXTHDR_DEST 60
#define VG_MAX_EXT_HDRS 8

#define VG_IPPROTO_ICMPV6 58
#define VG_IPPROTO_SCTP 132

#define VG_TCP_FIN 0x01
#define VG_TCP_SYN 0x02
#define VG_TCP_RST 0x04
#define VG_TCP_ACK 0x10

struct vg_pkt {
	__u8 saddr[16]; /* IPv4: first 4 bytes */
	__u8 daddr[16];
	__be16 sport; /* ICMP echo: identifier */
	__be16 dport;
	__u32 frag_id;
	__u32 l4_off;
	__u8 family; /* 4 / 6, 0 = not IP */
	__u8 proto;
	__u8 frag; /* VG_FRAG_* */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 icmp_err;    /* an ICMP error whose embedded header was parsed into inner_* */
	__u8 inner_proto; /* the embedded packet: the one this error answers */
	__u8 hop_limit;   /* IPv6 hop limit / IPv4 TTL */
	__u32 end; /* offset just past the IP datagram: every read after the IP header stays below */
	__be16 inner_sport;
	__be16 inner_dport;
	__u8 inner_saddr[16];
	__u8 inner_daddr[16];
};

/* The fixed IPv4 header, read as bytes to avoid bitfield layouts. */
struct vg_ip4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 proto;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct vg_ip6 {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct vg_ip6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3 | M flag */
	__be32 id;
};

/* The highest offset vg_load reads directly: every header we parse starts well below it. */
#define VG_DIRECT_MAX_OFF 1024

/*
 * Copy n (a constant) bytes at offset off of the frame to *to; 0 on success. Directly when they
 * lie in the linear head: a bpf_skb_load_bytes() call per header cost as much as the rest of an
 * established packet's parsing together (bpf/bench_parts.c, step "parse"). The caller has
 * already checked that the bytes lie within the IP datagram; this only decides how to read.
 */
static __always_inline int vg_load(struct __sk_buff *skb, __u32 off, void *to, const __u32 n)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *from;

	/* Verifier: a packet pointer may only move by a bounded amount, hence the first test. */
	if (off <= VG_DIRECT_MAX_OFF) {
		from = (__u8 *)data + off;
		if ((void *)(from + n) <= data_end) {
			__builtin_memcpy(to, from, n);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, n);
}

/* Does [off, off + n) lie within the frame? Only for the fixed IP header itself. */
static __always_inline int vg_fits_frame(const struct __sk_buff *skb, __u32 off, __u32 n)
{
	return off + n <= skb->len;
}

/* Does [off, off + n) lie within the IP datagram (p->end, set by the IP header parser)? */
static __always_inline int vg_fits(const struct vg_pkt *p, __u32 off, __u32 n)
{
	return off + n <= p->end;
}

static __always_inline int vg_parse_ip4(struct __sk_buff *skb, struct vg_pkt *p)
{
	struct vg_ip4 ip;
	__u32 ihl;
	__u16 frag_off;

	__u32 tot;

	if (!vg_fits_frame(skb, VG_ETH_HLEN, sizeof(ip)) ||
	    vg_load(skb, VG_ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	if ((ip.ver_ihl >> 4) != 4)
		return PARSE_MALFORMED;
	/* Addresses first: the anti-spoofing check also judges packets that turn out malformed. */
	p->family = 4;
	__builtin_memcpy(p->saddr, &ip.saddr, 4);
	__builtin_memcpy(p->daddr, &ip.daddr, 4);
	p->hop_limit = ip.ttl;
	ihl = ip.ver_ihl & 0x0f;
	if (ihl < 5) /* a header shorter than 20 bytes cannot be valid */
		return PARSE_MALFORMED;
	tot = bpf_ntohs(ip.tot_len);
	if (tot < ihl * 4 || VG_ETH_HLEN + tot > skb->len)
		return PARSE_MALFORMED;
	p->end = VG_ETH_HLEN + tot;
	/* Options are skipped by trusting IHL, never by assuming 20 bytes. */
	p->l4_off = VG_ETH_HLEN + ihl * 4;

	p->proto = ip.proto;
	p->frag_id = bpf_ntohs(ip.id);
	frag_off = bpf_ntohs(ip.frag_off);
	if (frag_off & 0x1fff)
		p->frag = VG_FRAG_LATER;
	else if (frag_off & 0x2000)
		p->frag = VG_FRAG_FIRST;
	return PARSE_OK;
}

static __always_inline int vg_parse_ip6(struct __sk_buff *skb, struct vg_pkt *p)
{
	struct vg_ip6 ip;
	__u32 off = VG_ETH_HLEN + sizeof(struct vg_ip6);
	__u8 nh;
	int i;

	if (!vg_fits_frame(skb, VG_ETH_HLEN, sizeof(ip)) ||
	    vg_load(skb, VG_ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	if ((bpf_ntohl(ip.ver_tc_flow) >> 28) != 6)
		return PARSE_MALFORMED;
	p->family = 6;
	vg_copy16(p->saddr, ip.saddr);
	vg_copy16(p->daddr, ip.daddr);
	p->hop_limit = ip.hop_limit;
	p->end = off + bpf_ntohs(ip.payload_len);
	if (p->end > skb->len)
		return PARSE_MALFORMED;
	nh = ip.nexthdr;

	/*
	 * Walk the extension header chain to the upper-layer header. Verifier workaround: the
	 * loop is fully unrolled with a fixed bound so it also loads on kernels without bounded
	 * loop support (< 5.3); a chain longer than VG_MAX_EXT_HDRS is treated as malformed
	 * (fail closed) rather than guessed at.
	 */
#pragma unroll
	for (i = 0; i < VG_MAX_EXT_HDRS; i++) {
		__u8 hdr[2];

		if (nh == VG_NEXTHDR_FRAGMENT) {
			struct vg_ip6_frag fh;
			__u16 fo;

			if (!vg_fits(p, off, sizeof(fh)) ||
			    vg_load(skb, off, &fh, sizeof(fh)) < 0)
				return PARSE_MALFORMED;
			fo = bpf_ntohs(fh.frag_off);
			p->frag_id = bpf_ntohl(fh.id);
			nh = fh.nexthdr;
			off += sizeof(fh);
			if (fo & 0xfff8) {
				/* A later fragment: its payload is not a header, stop here. */
				p->frag = VG_FRAG_LATER;
				p->proto = nh;
				p->l4_off = off;
				return PARSE_OK;
			}
			if (fo & 1)
				p->frag = VG_FRAG_FIRST;
			/* offset 0 without M is an atomic fragment: an ordinary packet. */
			continue;
		}
		if (nh != VG_NEXTHDR_HOP && nh != VG_NEXTHDR_ROUTING && nh != VG_NEXTHDR_DEST &&
		    nh != VG_NEXTHDR_AUTH)
			break;
		if (!vg_fits(p, off, sizeof(hdr)) || vg_load(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_MALFORMED;
		if (nh == VG_NEXTHDR_AUTH)
			off += ((__u32)hdr[1] + 2) * 4; /* AH length is in 4-byte units minus 2 */
		else
			off += ((__u32)hdr[1] + 1) * 8; /* others: 8-byte units, not counting the first */
		nh = hdr[0];
	}
	if (nh == VG_NEXTHDR_HOP || nh == VG_NEXTHDR_ROUTING || nh == VG_NEXTHDR_DEST ||
	    nh == VG_NEXTHDR_AUTH || nh == VG_NEXTHDR_FRAGMENT)
		return PARSE_MALFORMED; /* chain too long to follow */
	if (!vg_fits(p, off, 0))
		return PARSE_MALFORMED;
	p->proto = nh;
	p->l4_off = off;
	return PARSE_OK;
}

static __always_inline int vg_is_icmp_echo(const struct vg_pkt *p)
{
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type == 8 || p->icmp_type == 0;
	if (p->proto == VG_IPPROTO_ICMPV6)
		return p->icmp_type == 128 || p->icmp_type == 129;
	return 0;
}

static __always_inline int vg_is_icmp_error(const struct vg_pkt *p)
{
	if (p->proto == IPPROTO_ICMP) /* destination unreachable (incl. fragmentation needed), time
				       * exceeded, parameter problem */
		return p->icmp_type == 3 || p->icmp_type == 11 || p->icmp_type == 12;
	if (p->proto == VG_IPPROTO_ICMPV6) /* destination unreachable, packet too big, time exceeded,
					    * parameter problem */
		return p->icmp_type >= 1 && p->icmp_type <= 4;
	return 0;
}

/*
 * The packet an ICMP error answers: its IP header and the first 8 bytes of its L4 header follow
 * the 8-byte ICMP header. Fills p->inner_* and sets p->icmp_err when the embedded packet is a
 * TCP/UDP/SCTP segment or an ICMP echo of the same family (ports / identifier readable, not a
 * later fragment, no IPv6 extension headers); otherwise the error is judged like any other ICMP.
 */
static __always_inline void vg_parse_icmp_error(struct __sk_buff *skb, struct vg_pkt *p)
{
	__u32 off = p->l4_off + 8;
	__u32 l4;
	__u8 proto;
	__be16 ports[2];

	if (p->family == 4) {
		struct vg_ip4 ip;
		__u32 ihl;

		if (!vg_fits(p, off, sizeof(ip)) || vg_load(skb, off, &ip, sizeof(ip)) < 0)
			return;
		ihl = ip.ver_ihl & 0x0f;
		if ((ip.ver_ihl >> 4) != 4 || ihl < 5 || (bpf_ntohs(ip.frag_off) & 0x1fff))
			return;
		proto = ip.proto;
		l4 = off + ihl * 4;
		__builtin_memcpy(p->inner_saddr, &ip.saddr, 4);
		__builtin_memcpy(p->inner_daddr, &ip.daddr, 4);
	} else {
		struct vg_ip6 ip;

		if (!vg_fits(p, off, sizeof(ip)) || vg_load(skb, off, &ip, sizeof(ip)) < 0)
			return;
		if ((bpf_ntohl(ip.ver_tc_flow) >> 28) != 6)
			return;
		proto = ip.nexthdr;
		l4 = off + sizeof(ip);
		vg_copy16(p->inner_saddr, ip.saddr);
		vg_copy16(p->inner_daddr, ip.daddr);
	}
	if (!vg_fits(p, l4, 8) || vg_load(skb, l4, ports, sizeof(ports)) < 0)
		return;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case VG_IPPROTO_SCTP:
		p->inner_sport = ports[0];
		p->inner_dport = ports[1];
		break;
	case IPPROTO_ICMP:
	case VG_IPPROTO_ICMPV6: {
		/* An echo request/reply: type in the first byte, identifier at +4 (both ends). */
		__u8 type = ((__u8 *)ports)[0];
		__be16 id;

		if (p->family == 4 ? (proto != IPPROTO_ICMP || (type != 8 && type != 0))
				   : (proto != VG_IPPROTO_ICMPV6 || (type != 128 && type != 129)))
			return;
		if (vg_load(skb, l4 + 4, &id, 2) < 0)
			return;
		p->inner_sport = id;
		p->inner_dport = id;
		break;
	}
	default:
		return;
	}
	p->inner_proto = proto;
	p->icmp_err = 1;
}

/* Ports (or the ICMP echo identifier) from the L4 header; requires the whole fixed header. */
static __always_inline int vg_parse_l4(struct __sk_buff *skb, struct vg_pkt *p)
{
	__u32 off = p->l4_off;
	__be16 ports[2];

	switch (p->proto) {
	case IPPROTO_TCP: {
		/* Ports and flags in one read: the first 14 bytes of the header. */
		__u8 tcp[14];

		if (!vg_fits(p, off, 20) || vg_load(skb, off, tcp, sizeof(tcp)) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(ports, tcp, sizeof(ports));
		p->tcp_flags = tcp[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
		if (!vg_fits(p, off, 8) || vg_load(skb, off, ports, sizeof(ports)) < 0)
			return PARSE_MALFORMED;
		break;
	case VG_IPPROTO_SCTP:
		if (!vg_fits(p, off, 12) || vg_load(skb, off, ports, sizeof(ports)) < 0)
			return PARSE_MALFORMED;
		break;
	case IPPROTO_ICMP:
	case VG_IPPROTO_ICMPV6: {
		__u8 tc[2];

		if (!vg_fits(p, off, 4) || vg_load(skb, off, tc, 2) < 0)
			return PARSE_MALFORMED;
		p->icmp_type = tc[0];
		p->icmp_code = tc[1];
		if (vg_is_icmp_echo(p)) {
			__be16 id;

			if (!vg_fits(p, off, 8) || vg_load(skb, off + 4, &id, 2) < 0)
				return PARSE_MALFORMED;
			p->sport = id;
			p->dport = id;
		} else if (vg_is_icmp_error(p) && p->frag == VG_FRAG_NONE) {
			vg_parse_icmp_error(skb, p);
		}
		return PARSE_OK;
	}
	default:
		return PARSE_OK; /* no ports: policy port 0 */
	}
	p->sport = ports[0];
	p->dport = ports[1];
	return PARSE_OK;
}

/* Fill *p from the frame; the caller decides what MALFORMED means for its direction. */
static __always_inline int vg_parse(struct __sk_buff *skb, struct vg_pkt *p)
{
	int ret;

	if (skb->protocol == bpf_htons(VG_ETH_P_IP))
		ret = vg_parse_ip4(skb, p);
	else if (skb->protocol == bpf_htons(VG_ETH_P_IPV6))
		ret = vg_parse_ip6(skb, p);
	else if (skb->protocol == bpf_htons(VG_ETH_P_8021Q) || skb->protocol == bpf_htons(VG_ETH_P_8021AD))
		return PARSE_MALFORMED; /* a tagged frame could hide IP from us: not "non-IP" */
	else
		return PARSE_NON_IP;
	if (ret != PARSE_OK || p->frag == VG_FRAG_LATER)
		return ret;
	return vg_parse_l4(skb, p);
}

/* Port used for policy lookups: ICMP identifiers are not ports. */
/* The policy key's port of a packet: the destination port, or for ICMP its type and code
 * (type << 8 | code, so a type is a /8 prefix: Calico's icmp {type, code} rules). */
static __always_inline __be16 vg_policy_port(const struct vg_pkt *p)
{
	if (p->proto == IPPROTO_ICMP || p->proto == VG_IPPROTO_ICMPV6)
		return bpf_htons(((__u16)p->icmp_type << 8) | p->icmp_code);
	return p->dport;
}

/* The same for a tracked flow's key: only echo requests open ICMP flows (code 0). */
static __always_inline __be16 vg_ct_policy_port(__u8 proto, __u8 family, __be16 dport)
{
	if (proto == IPPROTO_ICMP || proto == VG_IPPROTO_ICMPV6)
		return bpf_htons((family == 4 ? 8 : 128) << 8);
	return dport;
}

/* IPv6 neighbour discovery, router messages and MLD (130-137, 143), unfragmented (RFC 6980):
 * candidates for ALLOW_ICMP6_CTRL, which lib/trust.h grants only as the link allows them. */
static __always_inline int vg_is_icmp6_ctrl(const struct vg_pkt *p)
{
	if (p->family != 6 || p->proto != VG_IPPROTO_ICMPV6 || p->frag != VG_FRAG_NONE)
		return 0;
	return (p->icmp_type >= 130 && p->icmp_type <= 137) || p->icmp_type == 143;
}

/* A TCP segment that opens a connection: SYN without ACK. */
static __always_inline int vg_tcp_opens(const struct vg_pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (VG_TCP_SYN | VG_TCP_ACK)) == VG_TCP_SYN;
}

/* Non-echo ICMP (errors, control, unknown types): no ports, no connection. It never creates a
 * conntrack entry, and none lets it pass: an entry with ports 0 would let any ICMP of the
 * peer back in as a "reply". Errors about tracked flows are ALLOW_RELATED (lib/conntrack.h);
 * everything else is judged by policy, packet by packet. */
static __always_inline int vg_icmp_untracked(const struct vg_pkt *p)
{
	return (p->proto == IPPROTO_ICMP || p->proto == VG_IPPROTO_ICMPV6) && !vg_is_icmp_echo(p);
}

/*
 * Anti-spoofing: may a packet leaving endpoint `ep` carry this source address? Only the pod's
 * own address of that family, plus what IPv6 needs before and besides a global address: the
 * unspecified address (duplicate address detection) and link-local fe80::/10 (neighbour and
 * router discovery, MLD). Link-local packets are never routed beyond the node, so they cannot
 * borrow another pod's identity; what they may reach on the node is still judged by policy.
 * IPv4 has no exemption (no DHCP in a pod; 0.0.0.0 is dropped too). A family the pod has no
 * address of (zero in the endpoint entry) has no valid source at all.
 */
static __always_inline int vg_source_is_own(const struct endpoint_info *ep, const struct vg_pkt *p)
{
	if (p->family == 4) {
		__be32 src;

		__builtin_memcpy(&src, p->saddr, 4);
		return ep->ipv4 && src == ep->ipv4;
	}
	if (p->saddr[0] == 0xfe && (p->saddr[1] & 0xc0) == 0x80)
		return 1;
	{
		__u64 s0, s1;

		__builtin_memcpy(&s0, p->saddr, 8);
		__builtin_memcpy(&s1, p->saddr + 8, 8);
		if (!s0 && !s1) /* :: */
			return 1;
	}
	return vg_addr_eq(p->saddr, ep->ipv6);
}

#endif /* VG_PARSE_H */
