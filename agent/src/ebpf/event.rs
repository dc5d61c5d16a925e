//! Decoding of ring-buffer records into typed events.

use agent_common::{
    ATTACH_PATH_LEN, EventKind, FLAG_ATTACH_MEMORY, FLAG_ATTACH_UNIFIED, FLAG_MEMORY_CGROUP,
    RAW_ATTACH_EVENT_SIZE, RAW_EVENT_SIZE, RawAttachEvent, RawEvent,
};

use crate::{
    cgroup::Hierarchy,
    types::{CgroupId, CgroupIds, Comm, ProcKey, StartTime},
};

/// Where a cgroup attach moved its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The hierarchy of the destination.
    pub hierarchy: Hierarchy,
    /// The destination cgroup's id.
    pub cgroup: CgroupId,
    /// Its path relative to the hierarchy's root (the host's view), unless
    /// the kernel's path did not fit or could not be read.
    pub path: Option<String>,
}

/// A process event from the kernel, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    /// What happened.
    pub kind: EventKind,
    /// The subject process.
    pub key: ProcKey,
    /// Its parent process (`real_parent`) at the time of the event.
    pub parent: ProcKey,
    /// The subject's comm (its group leader's; for a rename, the new one).
    pub comm: Comm,
    /// The subject's cgroups at the time of the event.
    pub cgroups: CgroupIds,
    /// For exits: the wait status (`task->exit_code`).
    pub exit_code: Option<i32>,
    /// For cgroup attach: where the subject went.
    pub attach: Option<Attach>,
    /// CLOCK_MONOTONIC nanoseconds when the kernel made the event.
    pub timestamp_ns: u64,
}

/// A ring-buffer record that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than [`RawEvent`].
    #[error("event record of {len} bytes is shorter than {RAW_EVENT_SIZE}")]
    Short { len: usize },
    /// The kind field holds no known [`EventKind`].
    #[error("event record has unknown kind {kind}")]
    UnknownKind { kind: u32 },
    /// A cgroup attach record is shorter than [`RawAttachEvent`] or names
    /// no hierarchy pidmap tracks.
    #[error("cgroup attach record of {len} bytes is malformed")]
    BadAttach { len: usize },
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<KernelEvent, DecodeError> {
    if record.len() < RAW_EVENT_SIZE {
        return Err(DecodeError::Short { len: record.len() });
    }
    let raw: RawEvent = bytemuck::pod_read_unaligned(&record[..RAW_EVENT_SIZE]);
    let mut ev = from_raw(&raw)?;
    if ev.kind == EventKind::CgroupAttach {
        let bad = DecodeError::BadAttach { len: record.len() };
        if record.len() < RAW_ATTACH_EVENT_SIZE {
            return Err(bad);
        }
        let full: RawAttachEvent = bytemuck::pod_read_unaligned(&record[..RAW_ATTACH_EVENT_SIZE]);
        let hierarchy = if raw.flags & FLAG_ATTACH_UNIFIED != 0 {
            Hierarchy::V2
        } else if raw.flags & FLAG_ATTACH_MEMORY != 0 {
            Hierarchy::V1Memory
        } else {
            return Err(bad);
        };
        ev.attach = Some(Attach {
            hierarchy,
            cgroup: CgroupId(raw.attach_cgroup_id),
            path: attach_path(&full),
        });
    }
    Ok(ev)
}

/// The path of an attach record, when it was read whole.
fn attach_path(raw: &RawAttachEvent) -> Option<String> {
    let len = usize::try_from(raw.path_len).ok()?;
    // The helper's length counts the NUL; a full buffer may be a cut path.
    if len == 0 || len >= ATTACH_PATH_LEN {
        return None;
    }
    let bytes = raw.path.get(..len - 1)?;
    let path = std::str::from_utf8(bytes).ok()?;
    path.starts_with('/').then(|| path.to_owned())
}

/// Converts a [`RawEvent`] into a [`KernelEvent`].
pub(crate) fn from_raw(raw: &RawEvent) -> Result<KernelEvent, DecodeError> {
    let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::UnknownKind { kind: raw.kind })?;
    let memory = (raw.flags & FLAG_MEMORY_CGROUP != 0).then_some(CgroupId(raw.memory_cgroup_id));
    Ok(KernelEvent {
        kind,
        key: ProcKey::new(raw.tgid, StartTime::from_boottime_ns(raw.start_boottime_ns)),
        parent: ProcKey::new(
            raw.ppid,
            StartTime::from_boottime_ns(raw.parent_start_boottime_ns),
        ),
        comm: Comm::from_bytes(&raw.comm),
        cgroups: CgroupIds {
            v2: Some(CgroupId(raw.cgroup_id)),
            v1_memory: memory,
        },
        exit_code: (kind == EventKind::Exit).then_some(raw.exit_code),
        attach: None,
        timestamp_ns: raw.timestamp_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> RawEvent {
        let mut r = RawEvent::zeroed();
        r.kind = kind as u32;
        r.tgid = 4711;
        r.ppid = 1;
        r.start_boottime_ns = 5_000_000_000;
        r.parent_start_boottime_ns = 10_000_000;
        r.cgroup_id = 1234;
        r.memory_cgroup_id = 77;
        r.flags = FLAG_MEMORY_CGROUP;
        r.timestamp_ns = 99;
        r.comm[..5].copy_from_slice(b"sleep");
        r
    }

    fn bytes(r: &RawEvent) -> Vec<u8> {
        bytemuck::bytes_of(r).to_vec()
    }

    #[test]
    fn decodes_a_fork_record() {
        let ev = decode(&bytes(&raw(EventKind::Fork))).unwrap();
        assert_eq!(ev.kind, EventKind::Fork);
        assert_eq!(ev.key, ProcKey::new(4711, StartTime(500)));
        assert_eq!(ev.parent, ProcKey::new(1, StartTime(1)));
        assert_eq!(ev.comm.as_string(), "sleep");
        assert_eq!(ev.cgroups.v2, Some(CgroupId(1234)));
        assert_eq!(ev.cgroups.v1_memory, Some(CgroupId(77)));
        assert_eq!(ev.exit_code, None);
        assert_eq!(ev.attach, None);
        assert_eq!(ev.timestamp_ns, 99);
    }

    #[test]
    fn exit_carries_code_and_attach_carries_destination() {
        let mut r = raw(EventKind::Exit);
        r.exit_code = 3 << 8;
        assert_eq!(decode(&bytes(&r)).unwrap().exit_code, Some(768));

        let mut r = raw(EventKind::CgroupAttach);
        r.hierarchy_id = 4;
        r.attach_cgroup_id = 555;
        r.flags |= FLAG_ATTACH_MEMORY;
        let mut a = RawAttachEvent {
            event: r,
            path_len: 11,
            _pad: 0,
            path: [0; ATTACH_PATH_LEN],
        };
        a.path[..10].copy_from_slice(b"/default/x");
        let ev = decode(&attach_bytes(&a)).unwrap();
        assert_eq!(
            ev.attach,
            Some(Attach {
                hierarchy: Hierarchy::V1Memory,
                cgroup: CgroupId(555),
                path: Some("/default/x".into())
            })
        );
        // A path that filled the buffer may be cut: not trusted.
        a.path_len = ATTACH_PATH_LEN as i32;
        assert_eq!(
            decode(&attach_bytes(&a)).unwrap().attach.unwrap().path,
            None
        );
        // A read error, and a record without the path part.
        a.path_len = -14;
        assert_eq!(
            decode(&attach_bytes(&a)).unwrap().attach.unwrap().path,
            None
        );
        assert_eq!(
            decode(&bytes(&r)),
            Err(DecodeError::BadAttach {
                len: RAW_EVENT_SIZE
            })
        );
    }

    fn attach_bytes(a: &RawAttachEvent) -> Vec<u8> {
        bytemuck::bytes_of(a).to_vec()
    }

    #[test]
    fn rename_carries_the_new_comm() {
        let mut r = raw(EventKind::Rename);
        r.comm = [0; 16];
        r.comm[..7].copy_from_slice(b"renamed");
        let ev = decode(&bytes(&r)).unwrap();
        assert_eq!(ev.kind, EventKind::Rename);
        assert_eq!(ev.comm.as_string(), "renamed");
    }

    #[test]
    fn memory_id_absent_without_flag() {
        let mut r = raw(EventKind::Exec);
        r.flags = 0;
        assert_eq!(decode(&bytes(&r)).unwrap().cgroups.v1_memory, None);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let b = bytes(&raw(EventKind::Fork));
        assert_eq!(decode(&b[..40]), Err(DecodeError::Short { len: 40 }));
        let mut r = raw(EventKind::Fork);
        r.kind = 42;
        assert_eq!(
            decode(&bytes(&r)),
            Err(DecodeError::UnknownKind { kind: 42 })
        );
    }

    #[test]
    fn decodes_from_an_unaligned_slice() {
        let mut b = vec![0u8];
        b.extend(bytes(&raw(EventKind::Exec)));
        assert_eq!(decode(&b[1..]).unwrap().key.pid, 4711);
    }
}
