//! pidmap's kernel programs.
//!
//! Five BTF tracepoints report every process's life into one ring buffer:
//! fork (new processes only, not threads), exec, exit (once the whole thread
//! group is dead), cgroup attach (the moved task is the subject, whatever
//! task wrote to `cgroup.procs`; only moves in the cgroup2 and v1 memory
//! hierarchies, with the destination's path) and rename (of a thread-group
//! leader: `prctl(PR_SET_NAME)`, `/proc/PID/comm`, exec). Every event
//! carries the subject's key (tgid + group leader start time), parent, comm
//! and cgroup ids, so any one event is enough to put a process into the
//! agent's table.
//!
//! Two more keep the pinned containers map (cgroup id → container record,
//! written by the agent for other eBPF tools) right about cgroups made and
//! removed inside containers: `cgroup_mkdir` copies a container's (or a
//! pending cgroup's) record to a cgroup made inside it, `cgroup_rmdir`
//! deletes a removed cgroup's entry.
//!
//! Rust eBPF has no CO-RE, so kernel structures are read with
//! `bpf_probe_read_kernel` at offsets that the agent took from the running
//! kernel's BTF and stored in the read-only global `CONFIG`.
//!
//! # Minimum kernel version
//!
//! 5.8 (BPF ring buffer; BTF tracepoints need 5.5).
#![no_std]
#![no_main]
// The programs are `pub` as aya's macros expect; a binary exports nothing else.
#![allow(unreachable_pub)]

use agent_common::{
    ATTACH_PATH_LEN, COMM_LEN, CONTAINERS_MAX_ENTRIES, ContainerRecord, EventKind,
    FLAG_ATTACH_MEMORY, FLAG_ATTACH_UNIFIED, FLAG_MEMORY_CGROUP, KernelConfig, RawAttachEvent,
    RawEvent,
    containers::{FLAG_NESTED, STATE_CONTAINER, STATE_PENDING},
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str},
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;

/// Process events for the agent.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::DEFAULT_RING_BYTES, 0);

/// Count of events lost because the ring buffer was full (index 0).
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// cgroup id → container record: the agent writes it (and pins it for other
/// tools); the programs below keep nested cgroups in it.
#[map(name = "containers")]
static CONTAINERS: HashMap<u64, ContainerRecord> =
    HashMap::with_max_entries(CONTAINERS_MAX_ENTRIES, 0);

/// Offsets and settings; overridden by the agent at load time.
#[unsafe(no_mangle)]
static CONFIG: KernelConfig = KernelConfig::zeroed();

/// Error from a kernel read: the helper's negative return value.
type ReadError = i32;

#[inline(always)]
fn config() -> KernelConfig {
    // SAFETY: CONFIG is a plain static; the volatile read keeps the compiler
    // from constant-folding the zeroed initialiser the agent overrides.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, ReadError> {
    if base.is_null() {
        return Err(-14); // EFAULT
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an Err.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// Reads `cgroup->kn->id`.
#[inline(always)]
fn cgroup_id(cfg: &KernelConfig, cgroup: *const u8) -> Result<u64, ReadError> {
    let kn: *const u8 = read(cgroup, cfg.cgroup_kn)?;
    read(kn, cfg.kernfs_node_id)
}

/// The cgroups a task is in: its cgroup2 cgroup and, when the kernel has a
/// memory controller, its memory cgroup (null otherwise).
struct Cgroups {
    unified: *const u8,
    memory: *const u8,
}

/// Fills `ev` with everything about `task`'s thread group; returns the
/// task's cgroups.
#[inline(always)]
fn fill(cfg: &KernelConfig, ev: &mut RawEvent, task: *const u8) -> Result<Cgroups, ReadError> {
    ev.tgid = read(task, cfg.task_tgid)?;
    let leader: *const u8 = read(task, cfg.task_group_leader)?;
    ev.start_boottime_ns = read(leader, cfg.task_start_boottime)?;
    ev.comm = read::<[u8; COMM_LEN]>(leader, cfg.task_comm)?;

    let parent: *const u8 = read(task, cfg.task_real_parent)?;
    ev.ppid = read(parent, cfg.task_tgid)?;
    let parent_leader: *const u8 = read(parent, cfg.task_group_leader)?;
    ev.parent_start_boottime_ns = read(parent_leader, cfg.task_start_boottime)?;

    let css_set: *const u8 = read(task, cfg.task_cgroups)?;
    let dfl: *const u8 = read(css_set, cfg.css_set_dfl_cgrp)?;
    ev.cgroup_id = cgroup_id(cfg, dfl)?;
    let mut memory = core::ptr::null();
    if cfg.memory_subsys_index != u32::MAX {
        let slot = cfg.css_set_subsys + cfg.memory_subsys_index * 8;
        let css: *const u8 = read(css_set, slot)?;
        if !css.is_null() {
            memory = read(css, cfg.css_cgroup)?;
            ev.memory_cgroup_id = cgroup_id(cfg, memory)?;
            ev.flags |= FLAG_MEMORY_CGROUP;
        }
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    ev.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    Ok(Cgroups {
        unified: dfl,
        memory,
    })
}

/// Counts one event lost because the ring buffer was full.
#[inline(always)]
fn count_drop() {
    if let Some(count) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *count += 1 };
    }
}

/// The submit flags: with `wakeup_bytes` 0 the kernel's own policy (wake
/// the reader when this is the first record it has not consumed), else a
/// wake-up only once that many bytes wait.
#[inline(always)]
fn wakeup_flags(cfg: &KernelConfig) -> u64 {
    if cfg.wakeup_bytes == 0 {
        0
    } else if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(cfg.wakeup_bytes) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Puts `ev` into the ring buffer, counting a drop when it is full.
#[inline(always)]
fn submit(cfg: &KernelConfig, ev: &RawEvent) {
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        count_drop();
        return;
    };
    entry.write(*ev);
    entry.submit(wakeup_flags(cfg));
}

#[inline(always)]
fn report(cfg: &KernelConfig, kind: EventKind, task: *const u8) -> Result<(), ReadError> {
    let mut ev = RawEvent::zeroed();
    ev.kind = kind as u32;
    fill(cfg, &mut ev, task)?;
    submit(cfg, &ev);
    Ok(())
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
#[btf_tracepoint(function = "sched_process_fork")]
pub fn pidmap_fork(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_fork(&ctx) {
        warn!(&ctx, "pidmap: fork event not reported: read error {}", err);
    }
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    let pid: i32 = read(child, cfg.task_pid)?;
    let tgid: i32 = read(child, cfg.task_tgid)?;
    if pid != tgid {
        return Ok(()); // a new thread, not a new process
    }
    // The child's own cgroups: clone3(CLONE_INTO_CGROUP) places it without
    // any attach event.
    report(&cfg, EventKind::Fork, child)
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[btf_tracepoint(function = "sched_process_exec")]
pub fn pidmap_exec(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_exec(&ctx) {
        warn!(&ctx, "pidmap: exec event not reported: read error {}", err);
    }
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(0);
    report(&cfg, EventKind::Exec, task)
}

/// `sched_process_exit(struct task_struct *p, ...)`: reported only when the
/// whole thread group is dead (`signal->live` already dropped to 0).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn pidmap_exit(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_exit(&ctx) {
        warn!(&ctx, "pidmap: exit event not reported: read error {}", err);
    }
    0
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(0);
    let signal: *const u8 = read(task, cfg.task_signal)?;
    let live: i32 = read(signal, cfg.signal_live)?;
    if live != 0 {
        return Ok(()); // other threads of the group still run
    }
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::Exit as u32;
    fill(&cfg, &mut ev, task)?;
    ev.exit_code = read(task, cfg.task_exit_code)?;
    submit(&cfg, &ev);
    Ok(())
}

/// `cgroup_attach_task(struct cgroup *dst_cgrp, const char *path,
/// struct task_struct *task, bool threadgroup)`: runs in the writer's
/// context after the move, once per hierarchy.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn pidmap_cgroup_attach(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_cgroup_attach(&ctx) {
        warn!(
            &ctx,
            "pidmap: cgroup attach event not reported: read error {}", err
        );
    }
    0
}

fn try_cgroup_attach(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let dst: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let task: *const u8 = ctx.arg(2);
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::CgroupAttach as u32;
    // The tracepoint fires after the move: the task's own cgroups tell
    // which hierarchy `dst` belongs to. Moves in other v1 hierarchies change
    // nothing the agent tracks and are not reported.
    let cgroups = fill(&cfg, &mut ev, task)?;
    if dst == cgroups.unified {
        ev.flags |= FLAG_ATTACH_UNIFIED;
    } else if !cgroups.memory.is_null() && dst == cgroups.memory {
        ev.flags |= FLAG_ATTACH_MEMORY;
    } else {
        return Ok(());
    }
    ev.attach_cgroup_id = cgroup_id(&cfg, dst)?;
    let root: *const u8 = read(dst, cfg.cgroup_root)?;
    let hierarchy: i32 = read(root, cfg.cgroup_root_hierarchy_id)?;
    ev.hierarchy_id = hierarchy as u32;
    // Too big for the BPF stack: written in place in the ring buffer.
    let Some(mut entry) = EVENTS.reserve::<RawAttachEvent>(0) else {
        count_drop();
        return Ok(());
    };
    let out = entry.as_mut_ptr();
    // SAFETY: `out` points at the reserved record, valid for writes of a
    // whole RawAttachEvent until it is submitted; `path` is a kernel string
    // that bpf_probe_read_kernel_str checks and bounds.
    unsafe {
        core::ptr::addr_of_mut!((*out).event).write(ev);
        core::ptr::addr_of_mut!((*out)._pad).write(0);
        let len = bpf_probe_read_kernel_str(
            core::ptr::addr_of_mut!((*out).path).cast(),
            ATTACH_PATH_LEN as u32,
            path.cast(),
        );
        core::ptr::addr_of_mut!((*out).path_len).write(len as i32);
    }
    entry.submit(wakeup_flags(&cfg));
    Ok(())
}

/// `task_rename(struct task_struct *task, const char *comm)`: fires before
/// the new name is copied in, so the name comes from the argument.
/// Reported only for thread-group leaders, whose comm is the process's.
#[btf_tracepoint(function = "task_rename")]
pub fn pidmap_rename(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_rename(&ctx) {
        warn!(
            &ctx,
            "pidmap: rename event not reported: read error {}", err
        );
    }
    0
}

fn try_rename(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(0);
    let comm: *const u8 = ctx.arg(1);
    let pid: i32 = read(task, cfg.task_pid)?;
    let tgid: i32 = read(task, cfg.task_tgid)?;
    if pid != tgid {
        return Ok(()); // a thread's name; /proc/PID/comm shows the leader's
    }
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::Rename as u32;
    fill(&cfg, &mut ev, task)?;
    let mut name = [0u8; COMM_LEN];
    // SAFETY: `name` is ours and COMM_LEN bytes long; the helper bounds the
    // read and checks the kernel address.
    let len = unsafe {
        bpf_probe_read_kernel_str(name.as_mut_ptr().cast(), COMM_LEN as u32, comm.cast())
    };
    if len < 0 {
        return Err(len as i32);
    }
    if name == ev.comm {
        return Ok(()); // the same name again: nothing changes
    }
    ev.comm = name;
    submit(&cfg, &ev);
    Ok(())
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`: a cgroup made
/// inside a container's (or a pending cgroup's) cgroup gets a copy of its
/// parent's record, marked nested, before anything can run in it.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn pidmap_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_cgroup_mkdir(&ctx) {
        warn!(&ctx, "pidmap: nested cgroup not recorded: error {}", err);
    }
    0
}

/// The cgroup's id when it is in the hierarchy the containers map is keyed
/// by.
#[inline(always)]
fn keyed_id(cfg: &KernelConfig, cgroup: *const u8) -> Result<Option<u64>, ReadError> {
    let root: *const u8 = read(cgroup, cfg.cgroup_root)?;
    let hierarchy: i32 = read(root, cfg.cgroup_root_hierarchy_id)?;
    if hierarchy as u32 != cfg.containers_hierarchy_id {
        return Ok(None);
    }
    cgroup_id(cfg, cgroup).map(Some)
}

fn try_cgroup_mkdir(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let cgroup: *const u8 = ctx.arg(0);
    let Some(id) = keyed_id(&cfg, cgroup)? else {
        return Ok(());
    };
    // cgroup->self.parent->cgroup
    let parent_css: *const u8 = read(cgroup, cfg.cgroup_self + cfg.css_parent)?;
    if parent_css.is_null() {
        return Ok(());
    }
    let parent: *const u8 = read(parent_css, cfg.css_cgroup)?;
    let parent_id = cgroup_id(&cfg, parent)?;
    let Some(record) = CONTAINERS.get_ptr(parent_id) else {
        return Ok(());
    };
    // SAFETY: a map value pointer is valid for the program's run; the copy
    // is taken at once.
    let mut record = unsafe { *record };
    if record.state != STATE_CONTAINER && record.state != STATE_PENDING {
        return Ok(());
    }
    record.flags |= FLAG_NESTED;
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    record.generation = unsafe { bpf_ktime_get_boot_ns() };
    // An entry the agent wrote first stays.
    match CONTAINERS.insert(id, record, u64::from(BPF_NOEXIST)) {
        Ok(()) | Err(-17) => Ok(()), // EEXIST
        Err(err) => Err(err),
    }
}

/// `cgroup_rmdir(struct cgroup *cgrp, const char *path)`: a removed cgroup
/// leaves the containers map at once (its id is never used again).
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn pidmap_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_cgroup_rmdir(&ctx) {
        warn!(&ctx, "pidmap: removed cgroup not forgotten: error {}", err);
    }
    0
}

fn try_cgroup_rmdir(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let cfg = config();
    if cfg.ready == 0 {
        return Ok(());
    }
    let cgroup: *const u8 = ctx.arg(0);
    if let Some(id) = keyed_id(&cfg, cgroup)? {
        match CONTAINERS.remove(id) {
            Ok(()) | Err(-2) => {} // ENOENT: it had no entry
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
