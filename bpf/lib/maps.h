/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the datapath, next to the struct it stores (structs.h).
 *
 * All maps are pinned under PIN_DIR (given at compile time by the loader, e.g.
 * -DPIN_DIR="\"/sys/fs/bpf/vethguard/node-1\"") so an agent restart or a program swap reuses
 * endpoints, policy and conntrack: bcc opens a pinned map when it exists and creates + pins it
 * otherwise.
 *
 * User space includes this file only for the struct layouts (the map definitions need bcc).
 */
#ifndef VG_MAPS_H
#define VG_MAPS_H

#include "structs.h"

/* bcc pre-includes its helpers.h, which defines BPF_TABLE; plain user-space compilers do not. */
#ifdef BPF_TABLE

#ifndef PIN_DIR
#error "PIN_DIR must be defined by the loader (-DPIN_DIR=\"\\\"/sys/fs/bpf/vethguard/<node>\\\"\")"
#endif

#define VG_PIN(name) PIN_DIR "/" #name

#ifndef VG_MAX_ENDPOINTS
#define VG_MAX_ENDPOINTS 4096
#endif
#ifndef VG_MAX_IPCACHE
#define VG_MAX_IPCACHE 65536
#endif
#ifndef VG_MAX_POLICY
#define VG_MAX_POLICY 262144
#endif
#ifndef VG_MAX_CT
#define VG_MAX_CT 65536
#endif
#ifndef VG_MAX_DNS_LEARNED
#define VG_MAX_DNS_LEARNED 65536
#endif
#ifndef VG_MAX_DNS_NAMES
#define VG_MAX_DNS_NAMES 8192 /* names kept for the debug views; an evicted one shows as unknown */
#endif
#ifndef VG_DNS_HELD_PAGES
#define VG_DNS_HELD_PAGES 256 /* 1 MiB: ~250 held frames of the longest kind */
#endif
#ifndef VG_MAX_FRAG
#define VG_MAX_FRAG 8192
#endif
#ifndef VG_MAX_COUNTERS
#define VG_MAX_COUNTERS 16384
#endif
#ifndef VG_MAX_SVC
#define VG_MAX_SVC 16384
#endif
#ifndef VG_MAX_LOCAL
#define VG_MAX_LOCAL (2 * VG_MAX_ENDPOINTS + 256) /* two addresses per pod, the node's */
#endif
#ifndef VG_EVENTS_PAGES
#define VG_EVENTS_PAGES 64 /* 256 KiB */
#endif

/* ifindex of the host-side veth -> endpoint */
BPF_TABLE_PINNED7("hash", __u32, struct endpoint_info, vg_endpoints, VG_MAX_ENDPOINTS,
		  VG_PIN(vg_endpoints), 0);

/* peer address -> (identity, cidr identity), longest prefix match */
BPF_TABLE_PINNED7("lpm_trie", struct ipcache4_key, struct ipcache_value, vg_ipcache4, VG_MAX_IPCACHE,
		  VG_PIN(vg_ipcache4), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED7("lpm_trie", struct ipcache6_key, struct ipcache_value, vg_ipcache6, VG_MAX_IPCACHE,
		  VG_PIN(vg_ipcache6), BPF_F_NO_PREALLOC);

/* (ep, peer identity, dir, proto, dport prefix) -> verdict */
BPF_TABLE_PINNED7("lpm_trie", struct policy_key, struct policy_value, vg_policy, VG_MAX_POLICY,
		  VG_PIN(vg_policy), BPF_F_NO_PREALLOC);

/* node interface ifindex -> its Calico host endpoint's policy profiles */
BPF_TABLE_PINNED7("hash", __u32, struct hostep_info, vg_hosteps, 64, VG_PIN(vg_hosteps), 0);

/* failsafe (port, protocol, direction) of host endpoints -> 1 */
BPF_TABLE_PINNED7("hash", struct failsafe_key, __u8, vg_failsafe, 256, VG_PIN(vg_failsafe), 0);

/* endpoint slot (in skb->mark of deferred packets) -> ep_id */
BPF_TABLE_PINNED7("hash", __u32, __u32, vg_slots, VG_MAX_ENDPOINTS, VG_PIN(vg_slots), 0);

/* Service frontends DNATed on this node: a pod's flow to one is judged after DNAT */
BPF_TABLE_PINNED7("hash", struct svc_key, struct svc_value, vg_svc, VG_MAX_SVC, VG_PIN(vg_svc), 0);

/* addresses of this node (-> 0) and of its pods (-> host-side veth): where each is believed */
BPF_TABLE_PINNED7("hash", struct local_key, struct local_value, vg_local, VG_MAX_LOCAL, VG_PIN(vg_local), 0);

/* conntrack: per endpoint and hook direction */
BPF_TABLE_PINNED7("lru_hash", struct ct_key, struct ct_value, vg_ct, VG_MAX_CT, VG_PIN(vg_ct), 0);

/* ports of fragmented datagrams, from their first fragment */
BPF_TABLE_PINNED7("lru_hash", struct frag_key, struct frag_value, vg_frag, VG_MAX_FRAG, VG_PIN(vg_frag), 0);

/* [0]: policy revision */
BPF_TABLE_PINNED7("array", __u32, struct config, vg_config, 1, VG_PIN(vg_config), 0);

/* per-CPU packet/byte counters by (ep, reason, dir) */
BPF_TABLE_PINNED7("percpu_hash", struct counter_key, struct counter_value, vg_counters, VG_MAX_COUNTERS,
		  VG_PIN(vg_counters), 0);

/* per-CPU ALLOW_CT / ALLOW_REPLY counts of the established fast path, by endpoint slot (structs.h) */
BPF_TABLE_PINNED7("percpu_array", __u32, struct counter_value, vg_est_counters, (VG_MAX_ENDPOINTS + 1) * VG_EST_ROW,
		  VG_PIN(vg_est_counters), 0);

/* addresses pods learned from DNS answers, for domainNames rules (lib/dns.h) */
BPF_TABLE_PINNED7("lru_hash", struct dns_learned_key, struct dns_learned_value, vg_dns_learned, VG_MAX_DNS_LEARNED,
		  VG_PIN(vg_dns_learned), 0);

/* the names of vg_dns_learned's entries (written by the agent, read by debug views only) */
BPF_TABLE_PINNED7("lru_hash", __u32, struct dns_name, vg_dns_names, VG_MAX_DNS_NAMES, VG_PIN(vg_dns_names), 0);

/* the agent's DNS thread's state (lib/dns.h) */
BPF_TABLE_PINNED7("array", __u32, struct dns_state, vg_dns_state, 1, VG_PIN(vg_dns_state), 0);

/* per-CPU scratch where a DNS frame is copied before it goes to vg_dns_held. Internal. */
BPF_TABLE_PINNED7("percpu_array", __u32, struct dns_held, vg_dns_scratch, 1, VG_PIN(vg_dns_scratch), 0);

/* per-CPU tick clock reading of the current jiffy (lib/clock.h) */
BPF_TABLE_PINNED7("percpu_array", __u32, struct clock_cache, vg_clock, 1, VG_PIN(vg_clock), 0);

/* to_pod's tail-call targets by slot (VG_TAIL_*, structs.h): filled by the agent's loader with
 * the programs of the build it runs (controller/datapath/build.py), before any is attached */
BPF_TABLE_PINNED7("prog", __u32, __u32, vg_tail, VG_TAIL_SLOTS, VG_PIN(vg_tail), 0);

/* per-CPU token bucket for vg_events */
BPF_TABLE_PINNED7("percpu_array", __u32, struct evrate_state, vg_evrate, 1, VG_PIN(vg_evrate), 0);

/* per-CPU counts of the events vg_emit could not write */
BPF_TABLE_PINNED7("percpu_array", __u32, struct evlost_state, vg_evlost, 1, VG_PIN(vg_evlost), 0);

/*
 * Flow/drop events. bcc 0.26 has no pinned variant of BPF_RINGBUF_OUTPUT; its front end
 * accepts the "maps/<type>:<pin path>" section convention for every map type, so this is
 * BPF_RINGBUF_OUTPUT with a pin path, letting `vethguard observe` open the pinned ring.
 */
struct vg_events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" VG_PIN(vg_events))))
struct vg_events_table_t vg_events = {.max_entries = ((VG_EVENTS_PAGES) * PAGE_SIZE)};

/* DNS frames for the agent (lib/dns.h): queries copied, answers held. Pinned the same way. */
__attribute__((section("maps/ringbuf:" VG_PIN(vg_dns_held))))
struct vg_events_table_t vg_dns_held = {.max_entries = ((VG_DNS_HELD_PAGES) * PAGE_SIZE)};

#endif /* BPF_TABLE */

#endif /* VG_MAPS_H */
