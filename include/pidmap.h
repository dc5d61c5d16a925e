/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pidmap.h: the contract of pidmap's pinned containers map, for eBPF
 * programs and userspace tools that want a cgroup's container and pod
 * without a resolver of their own.
 *
 * The map: BPF_MAP_TYPE_HASH, pinned at PIDMAP_CONTAINERS_PIN (the agent's
 * --pin-dir, /sys/fs/bpf/pidmap by default, plus "/containers"), root only.
 * Key: __u64 cgroup id. On cgroup v2 and hybrid hosts it is the cgroup2 id,
 * what bpf_get_current_cgroup_id() returns; on pure cgroup v1 hosts it is
 * the id of the task's memory cgroup (records then carry
 * PIDMAP_FLAG_V1_MEMORY). Value: struct pidmap_container_record.
 *
 * Who writes it: the pidmap agent, for every cgroup that holds processes
 * and every container it knows (from containerd's records, before the
 * container's first process runs); its kernel side copies a container's
 * entry to every cgroup made inside it (PIDMAP_FLAG_NESTED) at
 * cgroup_mkdir, and deletes an entry at cgroup_rmdir. The map is reused,
 * never emptied, across agent restarts. No entry: pidmap has not seen the
 * cgroup (yet).
 *
 * Version rule: version == PIDMAP_RECORD_VERSION. Within one version the
 * size and every field's place and meaning never change; new flags, states
 * and runtimes may be added (ignore flags you do not know, treat states and
 * runtimes you do not know as unknown). Any other change is a new version
 * with a new pin name beside this one.
 *
 * agent-common/src/containers.rs is the same contract in Rust; a test
 * compares the two byte for byte.
 */
#ifndef PIDMAP_H
#define PIDMAP_H

#include <linux/types.h>

#define PIDMAP_PIN_DIR "/sys/fs/bpf/pidmap"
#define PIDMAP_CONTAINERS_PIN PIDMAP_PIN_DIR "/containers"
#define PIDMAP_CONTAINERS_MAX_ENTRIES 65536

#define PIDMAP_RECORD_VERSION 1

/* state */
#define PIDMAP_STATE_HOST 1      /* a cgroup pidmap knows holds no container */
#define PIDMAP_STATE_PENDING 2   /* may be a container's; not confirmed yet */
#define PIDMAP_STATE_CONTAINER 3 /* a container's cgroup */

/* runtime */
#define PIDMAP_RUNTIME_UNKNOWN 0
#define PIDMAP_RUNTIME_CONTAINERD 1
#define PIDMAP_RUNTIME_DOCKER 2
#define PIDMAP_RUNTIME_CRIO 3
#define PIDMAP_RUNTIME_PODMAN 4

/* flags */
#define PIDMAP_FLAG_CONTAINER_ID (1u << 0) /* container_id is set */
#define PIDMAP_FLAG_ID_NOT_HEX (1u << 1)   /* container_id: first 32 bytes of a non-hex id */
#define PIDMAP_FLAG_POD_UID (1u << 2)      /* pod_uid is set */
#define PIDMAP_FLAG_SANDBOX (1u << 3)      /* the pod's sandbox (pause) container */
#define PIDMAP_FLAG_NESTED (1u << 4)       /* a cgroup made inside a container's */
#define PIDMAP_FLAG_V1_MEMORY (1u << 5)    /* the key is a v1 memory-cgroup id */

struct pidmap_container_record {
	__u16 version;           /* PIDMAP_RECORD_VERSION */
	__u8 state;              /* PIDMAP_STATE_* */
	__u8 runtime;            /* PIDMAP_RUNTIME_* */
	__u32 flags;             /* PIDMAP_FLAG_* */
	__u64 generation;        /* changes whenever the entry does */
	__u8 container_id[32];   /* the 64 hex digits of the id, as bytes */
	__u8 pod_uid[16];        /* the pod's UUID, as bytes */
};

_Static_assert(sizeof(struct pidmap_container_record) == 64,
	       "struct pidmap_container_record is 64 bytes");

#endif /* PIDMAP_H */
