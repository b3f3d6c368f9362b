/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The time of conntrack and fragment deadlines: CLOCK_MONOTONIC at tick resolution (the clock
 * user space reads as CLOCK_MONOTONIC_COARSE; at most a tick behind CLOCK_MONOTONIC).
 * bpf_ktime_get_ns() reads the clocksource on every call, about 35 ns on these KVM machines,
 * a sixth of an established packet (bpf/bench_parts.c, step "clock"); the coarse clock reads
 * the time of the last tick. Deadlines are seconds to hours, so a tick (1-10 ms) is nothing.
 */
#ifndef VG_CLOCK_H
#define VG_CLOCK_H

#include "common.h"
#include "maps.h"

/*
 * The coarse clock only moves when jiffies do (both advance at the tick), so each CPU keeps the
 * reading of the current jiffy in vg_clock and calls the helper (~15 ns of an established
 * packet, issue 19) only on its first packet of a tick; bpf_jiffies64() itself is inlined by
 * the verifier into one load on 64-bit JITs. A reading taken between the tick's jiffies update
 * and its timekeeping update is one tick old for the rest of that jiffy: still at most a tick
 * or two behind CLOCK_MONOTONIC. tc programs run with migration disabled and do not nest on a
 * CPU, and ns is written before jiffies, so a reader never pairs a new jiffy with an old ns.
 */
static __always_inline __u64 vg_now(void)
{
	__u32 zero = 0;
	__u64 jiffies = bpf_jiffies64(), now;
	struct clock_cache *c = vg_clock.lookup(&zero);

	if (c && c->jiffies == jiffies)
		return c->ns;
	now = bpf_ktime_get_coarse_ns();
	if (c) {
		c->ns = now;
		__asm__ __volatile__("" ::: "memory"); /* ns before jiffies (see above) */
		c->jiffies = jiffies;
	}
	return now;
}

#endif /* VG_CLOCK_H */
