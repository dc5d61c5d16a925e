/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Counts execs per Kubernetes pod, in the kernel, with pidmap's pinned
 * containers map as the only source of pod identity: no resolver, no
 * userspace round trip. An example for authors of other eBPF tools; the
 * pidmap agent never loads it (tests/tests/pinned.rs does).
 *
 * Build: clang -O2 -g -target bpf -I include -c execs_per_pod.bpf.c -o execs_per_pod.bpf.o
 * Load it with the map "containers" bound to pidmap's pin (libbpf:
 * bpf_map__reuse_fd / bpf_map__set_pin_path; aya: EbpfLoader::map_pin_path;
 * bpftool: `prog load ... map name containers pinned /sys/fs/bpf/pidmap/containers`).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "pidmap.h"

/* pidmap's map: the definition must match the pinned one (include/pidmap.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PIDMAP_CONTAINERS_MAX_ENTRIES);
	__type(key, __u64);
	__type(value, struct pidmap_container_record);
} containers SEC(".maps");

struct pod {
	__u8 uid[16];
};

/* Execs counted per pod uid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pod);
	__type(value, __u64);
} execs_per_pod SEC(".maps");

/* A BTF tracepoint: no tracefs needed. */
SEC("tp_btf/sched_process_exec")
int count_exec(unsigned long long *ctx)
{
	__u64 cgroup = bpf_get_current_cgroup_id();
	struct pidmap_container_record *r = bpf_map_lookup_elem(&containers, &cgroup);

	if (!r || r->version != PIDMAP_RECORD_VERSION || r->state != PIDMAP_STATE_CONTAINER ||
	    !(r->flags & PIDMAP_FLAG_POD_UID))
		return 0;
	struct pod pod;
	__builtin_memcpy(pod.uid, r->pod_uid, sizeof pod.uid);
	__u64 *n = bpf_map_lookup_elem(&execs_per_pod, &pod);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else {
		__u64 one = 1;
		/* Two first execs at once: the loser adds to the winner's entry. */
		if (bpf_map_update_elem(&execs_per_pod, &pod, &one, BPF_NOEXIST)) {
			n = bpf_map_lookup_elem(&execs_per_pod, &pod);
			if (n)
				__sync_fetch_and_add(n, 1);
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
