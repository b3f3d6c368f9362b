/* SPDX-License-Identifier: Apache-2.0 */
/* Counters (every exit path) and rate-limited flow/drop events. */
#ifndef VG_EVENTS_H
#define VG_EVENTS_H

#include "common.h"
#include "maps.h"
#include "parse.h"

#ifndef VG_EVENTS_PER_SEC
#define VG_EVENTS_PER_SEC 1000 /* per CPU */
#endif
#define VG_EVENTS_BURST VG_EVENTS_PER_SEC
#define VG_NS_PER_TOKEN (VG_NSEC_PER_SEC / VG_EVENTS_PER_SEC)

static __always_inline void vg_count(__u32 ep_id, __u8 reason, __u8 dir, __u32 len)
{
	struct counter_key k = {.ep_id = ep_id, .reason = reason, .dir = dir};
	struct counter_value *v;

	v = vg_counters.lookup(&k);
	if (v) {
		/* Per-CPU value: no other CPU writes it, a plain add is enough. */
		v->packets += 1;
		v->bytes += len;
		return;
	}
	struct counter_value init = {.packets = 1, .bytes = len};

	vg_counters.update(&k, &init);
}

/* Token bucket per CPU: an event storm (port scan, flood) must not cost more than this. */
static __always_inline int vg_event_allowed(__u64 now)
{
	__u32 zero = 0;
	struct evrate_state *s = vg_evrate.lookup(&zero);
	__u64 add;

	if (!s)
		return 0;
	add = (now - s->last_ns) / VG_NS_PER_TOKEN;
	if (add) {
		s->tokens = s->tokens + add > VG_EVENTS_BURST ? VG_EVENTS_BURST : s->tokens + add;
		s->last_ns = now;
	}
	if (!s->tokens)
		return 0;
	s->tokens--;
	return 1;
}

/* An event not written: counted where the flood happens, so the agent can say what it missed. */
static __always_inline void vg_event_lost(int ring_full)
{
	__u32 zero = 0;
	struct evlost_state *l = vg_evlost.lookup(&zero);

	if (!l)
		return;
	if (ring_full)
		l->ring_full += 1;
	else
		l->rate_limited += 1;
}

/*
 * Events are stamped with the precise clock, not vg_now()'s tick: they come only with new flows
 * and drops, which cost a microsecond anyway, and a reader orders and correlates them by time.
 */
static __always_inline void vg_emit(const struct vg_pkt *p, __u32 ep_id, __u8 dir, __u8 reason,
				    const struct ipcache_value *peer, __u32 rule_ref)
{
	__u64 now = bpf_ktime_get_ns();
	struct flow_event *e;

	if (!vg_event_allowed(now)) {
		vg_event_lost(0);
		return;
	}
	e = vg_events.ringbuf_reserve(sizeof(struct flow_event));
	if (!e) {
		vg_event_lost(1);
		return;
	}
	e->ts_ns = now;
	e->ep_id = ep_id;
	e->peer_identity = peer->identity;
	e->peer_cidr_identity = peer->cidr_identity;
	e->rule_ref = rule_ref;
	e->dir = dir;
	e->reason = reason;
	e->family = p->family;
	e->proto = p->proto;
	vg_copy16(e->saddr, p->saddr);
	vg_copy16(e->daddr, p->daddr);
	e->sport = p->sport;
	e->dport = p->dport;
	vg_events.ringbuf_submit(e, 0);
}

#endif /* VG_EVENTS_H */
