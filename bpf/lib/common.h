/* SPDX-License-Identifier: Apache-2.0 */
/* Constants and tiny helpers shared by every part of the tc programs. */
#ifndef VG_COMMON_H
#define VG_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/in.h>

#include "structs.h"
#include "reasons.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define VG_ETH_HLEN 14
#define VG_ETH_P_IP 0x0800
#define VG_ETH_P_IPV6 0x86DD
#define VG_ETH_P_8021Q 0x8100
#define VG_ETH_P_8021AD 0x88A8

#define VG_NSEC_PER_SEC 1000000000ULL

/*
 * Written into every new conntrack entry (ct_value.marker). Normal builds leave it 0; an upgrade
 * test builds with VETHGUARD_EXTRA_CFLAGS=-DVG_UPGRADE_MARKER=2 to get a program with different
 * code (a different tag) whose new flows are recognisable in vg_ct.
 */
#ifndef VG_UPGRADE_MARKER
#define VG_UPGRADE_MARKER 0
#endif

/* Conntrack timeouts (see docs/INTERNALS.md). */
#define CT_TIMEOUT_TCP_SYN (60ULL * VG_NSEC_PER_SEC)        /* before the reply was seen */
#define CT_TIMEOUT_TCP_EST (6ULL * 3600 * VG_NSEC_PER_SEC)  /* after the reply was seen */
#define CT_TIMEOUT_TCP_CLOSE (10ULL * VG_NSEC_PER_SEC)      /* after FIN or RST */
#define CT_TIMEOUT_OTHER (60ULL * VG_NSEC_PER_SEC)          /* UDP, SCTP, ICMP, ... */
/* Refresh a CT deadline only when it moves by more than this: no map write per packet. */
#define CT_REFRESH_SLACK VG_NSEC_PER_SEC
/* Linux keeps reassembly queues for 30 s (net.ipv4.ipfrag_time); so do we. */
#define FRAG_TIMEOUT (30ULL * VG_NSEC_PER_SEC)

static __always_inline __u32 vg_isolated_flag(__u8 dir)
{
	return dir == DIR_EGRESS ? EP_F_EGRESS_ISOLATED : EP_F_INGRESS_ISOLATED;
}

static __always_inline __u32 vg_audit_flag(__u8 dir)
{
	return dir == DIR_EGRESS ? EP_F_EGRESS_AUDIT : EP_F_INGRESS_AUDIT;
}

static __always_inline __u32 vg_tiered_flag(__u8 dir)
{
	return dir == DIR_EGRESS ? EP_F_EGRESS_TIERED : EP_F_INGRESS_TIERED;
}

static __always_inline __u32 vg_calico_flag(__u8 dir)
{
	return dir == DIR_EGRESS ? EP_F_EGRESS_CALICO : EP_F_INGRESS_CALICO;
}

/*
 * Is the direction policed: isolated by NetworkPolicy, or selected by a ClusterNetworkPolicy
 * (whose Deny rules must not be passed by a malformed packet or an unknown fragment)? A pending
 * endpoint counts as policed in both directions: fail closed until realized.
 */
static __always_inline int vg_dir_isolated(const struct endpoint_info *ep, __u8 dir)
{
	return (ep->flags & (vg_isolated_flag(dir) | vg_tiered_flag(dir) | EP_F_PENDING)) != 0;
}

static __always_inline void vg_copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline int vg_addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

#endif /* VG_COMMON_H */
