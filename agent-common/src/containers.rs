//! The record of the pinned containers map: what pidmap publishes, per
//! cgroup, for every eBPF program on the node.
//!
//! The map is a `BPF_MAP_TYPE_HASH` pinned at `<pin dir>/containers`
//! (`/sys/fs/bpf/pidmap/containers` by default), keyed by a `u64` cgroup id
//! — what `bpf_get_current_cgroup_id()` returns where containers live in
//! the cgroup2 hierarchy (cgroup v2 and hybrid hosts), the v1 memory
//! cgroup's id on pure v1 hosts ([`FLAG_V1_MEMORY`] says which) — with a
//! [`ContainerRecord`] as value. `include/pidmap.h` is the same contract in
//! C; a test compares the two byte for byte.
//!
//! # Version rule
//!
//! [`ContainerRecord::version`] is [`RECORD_VERSION`]. Within one version
//! the size and every field's place and meaning never change; new flags,
//! states and runtimes may be added (a consumer ignores flags it does not
//! know and treats a state or runtime it does not know as unknown). Any
//! other change is a new version with a new pin name beside the old one.

/// Where the agent pins its maps unless told otherwise (`--pin-dir`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pidmap";

/// [`ContainerRecord::version`] of this layout.
pub const RECORD_VERSION: u16 = 1;

/// [`ContainerRecord::state`]: a cgroup pidmap knows holds no container.
pub const STATE_HOST: u8 = 1;
/// [`ContainerRecord::state`]: a cgroup that may be a container's, not
/// confirmed yet (its runtime's metadata is not in; what the path says may
/// be filled in).
pub const STATE_PENDING: u8 = 2;
/// [`ContainerRecord::state`]: a container's cgroup.
pub const STATE_CONTAINER: u8 = 3;

/// [`ContainerRecord::runtime`]: not known (a Kubernetes cgroup layout with
/// no runtime in it).
pub const RUNTIME_UNKNOWN: u8 = 0;
/// [`ContainerRecord::runtime`]: containerd (CRI, `ctr`, nerdctl).
pub const RUNTIME_CONTAINERD: u8 = 1;
/// [`ContainerRecord::runtime`]: Docker (through containerd, or its cgroup
/// layout).
pub const RUNTIME_DOCKER: u8 = 2;
/// [`ContainerRecord::runtime`]: CRI-O.
pub const RUNTIME_CRIO: u8 = 3;
/// [`ContainerRecord::runtime`]: podman.
pub const RUNTIME_PODMAN: u8 = 4;

/// [`ContainerRecord::flags`]: `container_id` is set.
pub const FLAG_CONTAINER_ID: u32 = 1;
/// [`ContainerRecord::flags`]: the runtime's id is not 64 hex digits;
/// `container_id` holds its first 32 bytes, NUL-padded.
pub const FLAG_ID_NOT_HEX: u32 = 2;
/// [`ContainerRecord::flags`]: `pod_uid` is set.
pub const FLAG_POD_UID: u32 = 4;
/// [`ContainerRecord::flags`]: the container is its pod's sandbox (pause).
pub const FLAG_SANDBOX: u32 = 8;
/// [`ContainerRecord::flags`]: a cgroup made inside a container's cgroup;
/// the kernel side copied its parent's record when it was made.
pub const FLAG_NESTED: u32 = 16;
/// [`ContainerRecord::flags`]: the key is a v1 memory-cgroup id (pure
/// cgroup v1 host), not a cgroup2 id.
pub const FLAG_V1_MEMORY: u32 = 32;

/// One cgroup's entry in the containers map. 64 bytes, no implicit
/// padding, little-endian like the kernel it runs on.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRecord {
    /// [`RECORD_VERSION`].
    pub version: u16,
    /// `STATE_*`.
    pub state: u8,
    /// `RUNTIME_*`.
    pub runtime: u8,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Changes whenever the entry does (CLOCK_BOOTTIME ns of the write, kept
    /// increasing): a consumer that cached an entry compares it.
    pub generation: u64,
    /// The container id: its 64 hex digits as 32 bytes (see
    /// [`FLAG_ID_NOT_HEX`]).
    pub container_id: [u8; 32],
    /// The pod's uid (a UUID) as 16 bytes.
    pub pod_uid: [u8; 16],
}

/// Size of [`ContainerRecord`] in the map.
pub const RECORD_SIZE: usize = 64;
const _: () = assert!(size_of::<ContainerRecord>() == RECORD_SIZE);
const _: () = assert!(align_of::<ContainerRecord>() == 8);

impl ContainerRecord {
    /// An empty record of this version in `state`.
    pub const fn new(state: u8) -> Self {
        Self {
            version: RECORD_VERSION,
            state,
            runtime: RUNTIME_UNKNOWN,
            flags: 0,
            generation: 0,
            container_id: [0; 32],
            pod_uid: [0; 16],
        }
    }

    /// Sets the container id: 64 hex digits packed into 32 bytes, anything
    /// else kept as its first 32 bytes with [`FLAG_ID_NOT_HEX`].
    pub fn set_container_id(&mut self, id: &str) {
        self.container_id = [0; 32];
        self.flags |= FLAG_CONTAINER_ID;
        if let Some(bytes) = unhex::<32>(id.as_bytes()) {
            self.container_id = bytes;
            self.flags &= !FLAG_ID_NOT_HEX;
        } else {
            let n = id.len().min(32);
            self.container_id[..n].copy_from_slice(&id.as_bytes()[..n]);
            self.flags |= FLAG_ID_NOT_HEX;
        }
    }

    /// Sets the pod uid from its text form (`8-4-4-4-12` hex digits, or the
    /// same with `_` as systemd's cgroup names write it); anything else is
    /// left out.
    pub fn set_pod_uid(&mut self, uid: &str) {
        let mut digits = [0u8; 32];
        let mut n = 0;
        for (i, &b) in uid.as_bytes().iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) && (b == b'-' || b == b'_') {
                continue;
            }
            if n == 32 {
                return;
            }
            digits[n] = b;
            n += 1;
        }
        if uid.len() != 36 || n != 32 {
            return;
        }
        if let Some(bytes) = unhex::<16>(&digits) {
            self.pod_uid = bytes;
            self.flags |= FLAG_POD_UID;
        }
    }
}

/// `2 * N` hex digits as `N` bytes.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(text[2 * i])? << 4 | digit(text[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

    #[test]
    fn hex_ids_are_packed() {
        let mut r = ContainerRecord::new(STATE_CONTAINER);
        r.set_container_id(ID);
        assert_eq!(r.flags, FLAG_CONTAINER_ID);
        assert_eq!(r.container_id[..4], [0x01, 0x23, 0x45, 0x67]);
        assert_eq!(r.container_id[31], 0xef);
    }

    #[test]
    fn other_ids_are_kept_cut_and_flagged() {
        let mut r = ContainerRecord::new(STATE_CONTAINER);
        r.set_container_id("web");
        assert_eq!(r.flags, FLAG_CONTAINER_ID | FLAG_ID_NOT_HEX);
        assert_eq!(&r.container_id[..4], b"web\0");
        r.set_container_id(&ID[1..]); // 63 digits
        assert_eq!(r.flags & FLAG_ID_NOT_HEX, FLAG_ID_NOT_HEX);
        assert_eq!(&r.container_id[..], &ID.as_bytes()[1..33]);
        r.set_container_id(ID);
        assert_eq!(r.flags, FLAG_CONTAINER_ID);
    }

    #[test]
    fn pod_uids_in_both_spellings() {
        for uid in [
            "6b1f2a3c-0d4e-4f5a-8b9c-0d1e2f3a4b5c",
            "6b1f2a3c_0d4e_4f5a_8b9c_0d1e2f3a4b5c",
        ] {
            let mut r = ContainerRecord::new(STATE_CONTAINER);
            r.set_pod_uid(uid);
            assert_eq!(r.flags, FLAG_POD_UID, "{uid}");
            assert_eq!(r.pod_uid[..3], [0x6b, 0x1f, 0x2a]);
            assert_eq!(r.pod_uid[15], 0x5c);
        }
        for bad in [
            "",
            "6b1f2a3c-0d4e-4f5a-8b9c-0d1e2f3a4b5",
            "6b1f2a3c-0d4e-4f5a-8b9c-0d1e2f3a4b5cc",
            "6b1f2a3c0d4e4f5a8b9c0d1e2f3a4b5c",
            "zb1f2a3c-0d4e-4f5a-8b9c-0d1e2f3a4b5c",
            "6b1f2a3c-0d4e-4f5a-8b9c--d1e2f3a4b5c",
        ] {
            let mut r = ContainerRecord::new(STATE_CONTAINER);
            r.set_pod_uid(bad);
            assert_eq!(r.flags, 0, "{bad}");
        }
    }
}
