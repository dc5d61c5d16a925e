//! Layouts shared by pidmap's eBPF programs (`agent-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding and a compile-time
//! size assert, so the kernel side and the user side cannot drift apart
//! silently. With the `user` feature the types implement [`aya::Pod`].
#![no_std]

/// Name of the ring buffer map carrying [`RawEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array counting ring-buffer reservations that failed.
pub const DROPS_MAP: &str = "DROPS";
/// Name of the read-only global holding the [`KernelConfig`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Name of the hash map of cgroup id → [`ContainerRecord`], and of its pin
/// in the agent's pin directory (`/sys/fs/bpf/pidmap/containers`).
pub const CONTAINERS_MAP: &str = "containers";
/// Entries the containers map holds at most: one per cgroup with processes
/// or per known container; a node this size has a few thousand.
pub const CONTAINERS_MAX_ENTRIES: u32 = 65_536;

/// Default size of the event ring buffer in bytes (a power of two, a
/// multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 * 1024 * 1024;

/// The eBPF programs, as `(program name, BTF tracepoint)` pairs.
pub const PROGRAMS: [(&str, &str); 7] = [
    ("pidmap_fork", "sched_process_fork"),
    ("pidmap_exec", "sched_process_exec"),
    ("pidmap_exit", "sched_process_exit"),
    ("pidmap_cgroup_attach", "cgroup_attach_task"),
    ("pidmap_rename", "task_rename"),
    ("pidmap_cgroup_mkdir", "cgroup_mkdir"),
    ("pidmap_cgroup_rmdir", "cgroup_rmdir"),
];

/// What happened to the subject process of a [`RawEvent`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new process (not a thread) was created; the subject is the child.
    Fork = 1,
    /// The subject called `execve` successfully.
    Exec = 2,
    /// The last thread of the subject's thread group exited.
    Exit = 3,
    /// The subject was moved into another cgroup of the cgroup2 or the v1
    /// memory hierarchy; the record is a [`RawAttachEvent`].
    CgroupAttach = 4,
    /// The subject's thread-group leader was renamed (`prctl(PR_SET_NAME)`,
    /// a write to `/proc/PID/comm`, or exec); `comm` is the new name.
    Rename = 5,
}

impl EventKind {
    /// Decodes the `kind` field of a [`RawEvent`].
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Fork),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            4 => Some(Self::CgroupAttach),
            5 => Some(Self::Rename),
            _ => None,
        }
    }
}

/// [`RawEvent::flags`] bit: `memory_cgroup_id` was read (the kernel has a
/// memory controller and the task has a css for it).
pub const FLAG_MEMORY_CGROUP: u32 = 1;
/// [`RawEvent::flags`] bit of a cgroup attach: the destination is in the
/// cgroup2 (unified) hierarchy.
pub const FLAG_ATTACH_UNIFIED: u32 = 2;
/// [`RawEvent::flags`] bit of a cgroup attach: the destination is in the v1
/// hierarchy of the memory controller.
pub const FLAG_ATTACH_MEMORY: u32 = 4;

/// Length of a task's `comm` including the terminating NUL.
pub const COMM_LEN: usize = 16;

/// One process event, written by the eBPF programs into [`EVENTS_MAP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Thread-group id of the subject.
    pub tgid: u32,
    /// Thread-group id of the subject's `real_parent`.
    pub ppid: u32,
    /// For [`EventKind::CgroupAttach`]: hierarchy id of the destination
    /// cgroup (0 is cgroup2); 0 otherwise.
    pub hierarchy_id: u32,
    /// `start_boottime` (ns since boot) of the subject's group leader.
    pub start_boottime_ns: u64,
    /// `start_boottime` (ns since boot) of the parent's group leader.
    pub parent_start_boottime_ns: u64,
    /// cgroup2 id of the subject (1 on a pure cgroup-v1 host).
    pub cgroup_id: u64,
    /// Id of the subject's cgroup in the memory hierarchy (valid when
    /// `flags & FLAG_MEMORY_CGROUP`).
    pub memory_cgroup_id: u64,
    /// For [`EventKind::CgroupAttach`]: id of the destination cgroup.
    pub attach_cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was made.
    pub timestamp_ns: u64,
    /// For [`EventKind::Exit`]: the task's `exit_code` (wait status form).
    pub exit_code: i32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `comm` of the subject's group leader, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Size of [`RawEvent`] on the wire.
pub const RAW_EVENT_SIZE: usize = 88;
const _: () = assert!(size_of::<RawEvent>() == RAW_EVENT_SIZE);
const _: () = assert!(align_of::<RawEvent>() == 8);

/// Bytes of a cgroup path an attach event carries, NUL included (the
/// kernel's own buffer for it is 1024; longer paths are cut and flagged).
pub const ATTACH_PATH_LEN: usize = 512;

/// A cgroup attach: the event and the destination cgroup's path relative
/// to its hierarchy's root, as the kernel passes it to the
/// `cgroup_attach_task` tracepoint (the host's view, whatever namespace).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttachEvent {
    /// The event; `kind` is [`EventKind::CgroupAttach`].
    pub event: RawEvent,
    /// What `bpf_probe_read_kernel_str` returned: the path's length with
    /// its NUL, or a negative error. `ATTACH_PATH_LEN` means it may be cut.
    pub path_len: i32,
    /// Explicit padding.
    pub _pad: u32,
    /// The path, NUL-terminated.
    pub path: [u8; ATTACH_PATH_LEN],
}

/// Size of [`RawAttachEvent`] on the wire.
pub const RAW_ATTACH_EVENT_SIZE: usize = RAW_EVENT_SIZE + 8 + ATTACH_PATH_LEN;
const _: () = assert!(size_of::<RawAttachEvent>() == RAW_ATTACH_EVENT_SIZE);

impl RawEvent {
    /// An all-zero event, to fill in.
    pub const fn zeroed() -> Self {
        Self {
            kind: 0,
            tgid: 0,
            ppid: 0,
            hierarchy_id: 0,
            start_boottime_ns: 0,
            parent_start_boottime_ns: 0,
            cgroup_id: 0,
            memory_cgroup_id: 0,
            attach_cgroup_id: 0,
            timestamp_ns: 0,
            exit_code: 0,
            flags: 0,
            comm: [0; COMM_LEN],
        }
    }
}

/// Kernel structure member offsets (bytes) and settings, read by the agent
/// from `/sys/kernel/btf/vmlinux` at load time and handed to the programs as
/// the read-only global [`CONFIG_GLOBAL`]. Rust eBPF has no CO-RE; this is
/// how the programs stay portable across kernel builds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelConfig {
    /// Non-zero once the agent filled this in; programs do nothing while 0.
    pub ready: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `signal_struct.live` (an `atomic_t`)
    pub signal_live: u32,
    /// `css_set.dfl_cgrp`
    pub css_set_dfl_cgrp: u32,
    /// `css_set.subsys`
    pub css_set_subsys: u32,
    /// `cgroup_subsys_state.cgroup`
    pub css_cgroup: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `cgroup.root`
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`
    pub cgroup_root_hierarchy_id: u32,
    /// `kernfs_node.id`
    pub kernfs_node_id: u32,
    /// Index of the memory controller in `css_set.subsys`
    /// (`memory_cgrp_id`), or `u32::MAX` when the kernel has none.
    pub memory_subsys_index: u32,
    /// Wake the reader only once this many bytes wait in the ring buffer;
    /// below that, records are submitted without a wake-up and the reader
    /// finds them on its periodic poll. 0 leaves the kernel's default policy.
    pub wakeup_bytes: u32,
    /// `cgroup.self` (the cgroup's own `cgroup_subsys_state`)
    pub cgroup_self: u32,
    /// `cgroup_subsys_state.parent`
    pub css_parent: u32,
    /// Hierarchy id of the cgroups the containers map is keyed by (0: the
    /// cgroup2 hierarchy); `u32::MAX` when no hierarchy is (nothing is
    /// copied to nested cgroups then).
    pub containers_hierarchy_id: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(size_of::<KernelConfig>() == 96);

impl KernelConfig {
    /// The value compiled into the programs: not ready, every offset 0.
    pub const fn zeroed() -> Self {
        Self {
            ready: 0,
            task_pid: 0,
            task_tgid: 0,
            task_real_parent: 0,
            task_group_leader: 0,
            task_comm: 0,
            task_cgroups: 0,
            task_start_boottime: 0,
            task_signal: 0,
            task_exit_code: 0,
            signal_live: 0,
            css_set_dfl_cgrp: 0,
            css_set_subsys: 0,
            css_cgroup: 0,
            cgroup_kn: 0,
            cgroup_root: 0,
            cgroup_root_hierarchy_id: 0,
            kernfs_node_id: 0,
            memory_subsys_index: u32::MAX,
            wakeup_bytes: 0,
            cgroup_self: 0,
            css_parent: 0,
            containers_hierarchy_id: u32::MAX,
            _pad: 0,
        }
    }
}

pub mod containers;
pub use containers::ContainerRecord;

#[cfg(feature = "user")]
mod user {
    // Every type here is repr(C), Copy, has no padding bytes left implicit
    // (sizes asserted above), and every bit pattern (all-zero included) is
    // a valid value of it.

    // SAFETY: see above.
    unsafe impl aya::Pod for super::RawEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RawAttachEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::KernelConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ContainerRecord {}
    // SAFETY: see above.
    unsafe impl bytemuck::Zeroable for super::RawEvent {}
    // SAFETY: see above.
    unsafe impl bytemuck::Pod for super::RawEvent {}
    // SAFETY: see above.
    unsafe impl bytemuck::Zeroable for super::RawAttachEvent {}
    // SAFETY: see above.
    unsafe impl bytemuck::Pod for super::RawAttachEvent {}
}
