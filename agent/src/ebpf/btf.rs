//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE, so the programs read kernel structures at offsets
//! the agent looks up here, in `/sys/kernel/btf/vmlinux`, and passes in the
//! read-only global [`agent_common::CONFIG_GLOBAL`]. The programs read each
//! member with a fixed width, so the width is checked too: a kernel whose
//! layout differs is refused with an error naming the member.
//!
//! # Minimum kernel version
//!
//! 5.5 (`CONFIG_DEBUG_INFO_BTF` with `/sys/kernel/btf/vmlinux`).

use std::path::{Path, PathBuf};

use agent_common::KernelConfig;
use btf_rs::{Backend, Btf, Type};

pub(crate) use crate::config::VMLINUX_BTF;

/// Errors looking up kernel structure layouts.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read or parsed.
    #[error("cannot read kernel BTF from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    /// The kernel has no struct (or union) of that name.
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: &'static str },
    /// The struct exists but has no such member, even inside anonymous
    /// members.
    #[error("kernel BTF struct {strukt} has no member {member}")]
    NoMember {
        strukt: &'static str,
        member: &'static str,
    },
    /// The member is a bitfield, which the programs cannot read.
    #[error("kernel BTF member {strukt}.{member} is a bitfield")]
    Bitfield {
        strukt: &'static str,
        member: &'static str,
    },
    /// A BTF type reference could not be followed.
    #[error("kernel BTF is inconsistent")]
    Resolve(#[source] btf_rs::Error),
    /// The member has a width other than the one the programs read.
    #[error(
        "kernel BTF member {strukt}.{member} is {found} bytes wide where pidmap's programs read \
         {expected}: this kernel's layout is not supported"
    )]
    Size {
        strukt: &'static str,
        member: &'static str,
        expected: usize,
        found: usize,
    },
    /// The member's type has no fixed size (a function, `void`, …).
    #[error("kernel BTF member {strukt}.{member} has no size")]
    Unsized {
        strukt: &'static str,
        member: &'static str,
    },
}

/// Where a member is and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberLayout {
    /// Byte offset in its struct.
    pub offset: u32,
    /// Width in bytes (for an array: the whole array).
    pub size: usize,
    /// For an array: the width of one element.
    pub element_size: Option<usize>,
}

/// Bytes of a kernel pointer (the agent runs only on 64-bit kernels).
const POINTER: usize = 8;

/// Parsed kernel BTF, for member offset look-ups.
pub(crate) struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Opens the BTF at `path` (normally [`VMLINUX_BTF`]). Mapped into
    /// memory and parsed lazily where the kernel allows it (it does for
    /// sysfs BTF since 6.16), which keeps the agent's start-up peak low;
    /// read and parsed whole otherwise.
    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
            .map_err(|source| BtfError::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { btf })
    }

    /// Byte offset of `member` in `struct strukt`, searching through
    /// anonymous struct and union members.
    #[cfg(test)]
    pub(crate) fn member_offset(
        &self,
        strukt: &'static str,
        member: &'static str,
    ) -> Result<u32, BtfError> {
        self.member(strukt, member).map(|m| m.offset)
    }

    /// Offset and width of `member` in `struct strukt`.
    pub(crate) fn member(
        &self,
        strukt: &'static str,
        member: &'static str,
    ) -> Result<MemberLayout, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct { name: strukt })?;
        let found = types.iter().find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
            _ => None,
        });
        let s = found.ok_or(BtfError::NoStruct { name: strukt })?;
        let (bits, m) = match self.find_member(s, member)? {
            Some((_, _, true)) => return Err(BtfError::Bitfield { strukt, member }),
            Some((bits, m, false)) => (bits, m),
            None => return Err(BtfError::NoMember { strukt, member }),
        };
        let ty = self.strip(
            self.btf
                .resolve_chained_type(&m)
                .map_err(BtfError::Resolve)?,
        )?;
        let (size, element_size) = match &ty {
            Type::Array(a) => {
                let element = self.strip(
                    self.btf
                        .resolve_chained_type(a)
                        .map_err(BtfError::Resolve)?,
                )?;
                let element = self
                    .size_of(&element)
                    .ok_or(BtfError::Unsized { strukt, member })?;
                (element * a.len(), Some(element))
            }
            other => (
                self.size_of(other)
                    .ok_or(BtfError::Unsized { strukt, member })?,
                None,
            ),
        };
        Ok(MemberLayout {
            offset: bits / 8,
            size,
            element_size,
        })
    }

    /// The width of a (stripped) type, if it has one.
    fn size_of(&self, t: &Type) -> Option<usize> {
        match t {
            Type::Int(i) => Some(i.size()),
            Type::Ptr(_) => Some(POINTER),
            Type::Struct(s) | Type::Union(s) => Some(s.size()),
            Type::Enum(e) => Some(e.size()),
            Type::Enum64(e) => Some(e.size()),
            Type::Float(f) => Some(f.size()),
            Type::Array(a) => {
                let element = self.strip(self.btf.resolve_chained_type(a).ok()?).ok()?;
                Some(self.size_of(&element)? * a.len())
            }
            _ => None,
        }
    }

    /// Returns (bit offset, the member, is bitfield) of `member` in `s`.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        member: &str,
    ) -> Result<Option<(u32, btf_rs::Member, bool)>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                let bitfield =
                    m.bitfield_size().is_some_and(|size| size != 0) || m.bit_offset() % 8 != 0;
                return Ok(Some((m.bit_offset(), m.clone(), bitfield)));
            }
            if name.is_empty() {
                let inner = self.strip(
                    self.btf
                        .resolve_chained_type(m)
                        .map_err(BtfError::Resolve)?,
                )?;
                if let Type::Struct(inner) | Type::Union(inner) = inner
                    && let Some((bits, found, bf)) = self.find_member(&inner, member)?
                {
                    return Ok(Some((m.bit_offset() + bits, found, bf)));
                }
            }
        }
        Ok(None)
    }

    /// `t` without typedefs and qualifiers.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        loop {
            let next = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x),
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x)
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x),
                _ => return Ok(t),
            };
            t = next.map_err(BtfError::Resolve)?;
        }
    }

    /// Value of enumerator `name` in `enum enum_name`, if both exist.
    pub(crate) fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(btf_rs::EnumMember::val),
            _ => None,
        })
    }

    /// Offset of `member`, checked to be `width` bytes wide: the width the
    /// programs read it with.
    fn sized(
        &self,
        strukt: &'static str,
        member: &'static str,
        width: usize,
    ) -> Result<u32, BtfError> {
        let m = self.member(strukt, member)?;
        if m.size != width {
            return Err(BtfError::Size {
                strukt,
                member,
                expected: width,
                found: m.size,
            });
        }
        Ok(m.offset)
    }

    /// Every offset the programs need, with `wakeup_bytes` as given. Each
    /// member's width is checked against what the programs read (`pid_t`
    /// and `int` 4 bytes, `u64` and pointers 8, `comm` 16, `atomic_t` 4).
    pub(crate) fn kernel_config(&self, wakeup_bytes: u32) -> Result<KernelConfig, BtfError> {
        use agent_common::COMM_LEN;
        let task = |m, width| self.sized("task_struct", m, width);
        // css_set.subsys is an array of pointers, indexed by controller id.
        let subsys = self.member("css_set", "subsys")?;
        if subsys.element_size != Some(POINTER) {
            return Err(BtfError::Size {
                strukt: "css_set",
                member: "subsys",
                expected: POINTER,
                found: subsys.element_size.unwrap_or(subsys.size),
            });
        }
        let memory_subsys_index = self
            .enum_value("cgroup_subsys_id", "memory_cgrp_id")
            .filter(|&i| (i as usize + 1) * POINTER <= subsys.size)
            .unwrap_or(u32::MAX);
        Ok(KernelConfig {
            ready: 1,
            task_pid: task("pid", 4)?,
            task_tgid: task("tgid", 4)?,
            task_real_parent: task("real_parent", POINTER)?,
            task_group_leader: task("group_leader", POINTER)?,
            task_comm: task("comm", COMM_LEN)?,
            task_cgroups: task("cgroups", POINTER)?,
            task_start_boottime: task("start_boottime", 8)?,
            task_signal: task("signal", POINTER)?,
            task_exit_code: task("exit_code", 4)?,
            signal_live: self.sized("signal_struct", "live", 4)?,
            css_set_dfl_cgrp: self.sized("css_set", "dfl_cgrp", POINTER)?,
            css_set_subsys: subsys.offset,
            css_cgroup: self.sized("cgroup_subsys_state", "cgroup", POINTER)?,
            cgroup_kn: self.sized("cgroup", "kn", POINTER)?,
            cgroup_root: self.sized("cgroup", "root", POINTER)?,
            cgroup_root_hierarchy_id: self.sized("cgroup_root", "hierarchy_id", 4)?,
            kernfs_node_id: self.sized("kernfs_node", "id", 8)?,
            memory_subsys_index,
            wakeup_bytes,
            cgroup_self: self.member("cgroup", "self")?.offset,
            css_parent: self.sized("cgroup_subsys_state", "parent", POINTER)?,
            containers_hierarchy_id: u32::MAX,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipping: {VMLINUX_BTF} not present");
            return None;
        }
        Some(KernelBtf::from_file(path).expect("parse vmlinux BTF"))
    }

    #[test]
    fn finds_task_struct_members_of_the_running_kernel() {
        let Some(btf) = kernel() else { return };
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        // pid_t pid; pid_t tgid; are adjacent in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        let comm = btf.member_offset("task_struct", "comm").unwrap();
        assert!(comm > tgid);
    }

    #[test]
    fn full_config_resolves_and_is_sane() {
        let Some(btf) = kernel() else { return };
        let cfg = btf.kernel_config(4096).unwrap();
        assert_eq!(cfg.ready, 1);
        assert_eq!(cfg.wakeup_bytes, 4096);
        // atomic_t live is somewhere inside signal_struct; kernfs id is u64-aligned.
        assert_eq!(cfg.kernfs_node_id % 8, 0);
        assert_eq!(cfg.task_start_boottime % 8, 0);
        assert!(cfg.memory_subsys_index < 16, "memory controller index");
    }

    #[test]
    fn unknown_struct_and_member_are_clear_errors() {
        let Some(btf) = kernel() else { return };
        let err = btf.member_offset("no_such_struct_pidmap", "x").unwrap_err();
        assert!(matches!(err, BtfError::NoStruct { .. }), "{err}");
        let err = btf
            .member_offset("task_struct", "no_such_member")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF struct task_struct has no member no_such_member"
        );
    }

    #[test]
    fn members_inside_anonymous_unions_are_found() {
        let Some(btf) = kernel() else { return };
        // struct page keeps `mapping` inside an anonymous union of anonymous
        // structs; the offset must include the enclosing member's offset.
        let off = btf.member_offset("page", "mapping").unwrap();
        assert!(off > 0 && off < 64, "page.mapping at {off}");
    }

    #[test]
    fn member_widths_are_known_and_checked() {
        let Some(btf) = kernel() else { return };
        let pid = btf.member("task_struct", "pid").unwrap();
        assert_eq!((pid.size, pid.element_size), (4, None));
        let comm = btf.member("task_struct", "comm").unwrap();
        assert_eq!((comm.size, comm.element_size), (16, Some(1)));
        assert_eq!(btf.member("task_struct", "real_parent").unwrap().size, 8);
        let err = btf.sized("task_struct", "pid", 8).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::Size {
                    expected: 8,
                    found: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "kernel BTF member task_struct.pid is 4 bytes wide where pidmap's programs read 8: \
             this kernel's layout is not supported"
        );
    }

    #[test]
    fn bitfields_are_refused() {
        let Some(btf) = kernel() else { return };
        // task_struct.sched_reset_on_fork is a 1-bit field.
        let err = btf
            .member_offset("task_struct", "sched_reset_on_fork")
            .unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { .. }), "{err}");
    }
}
