//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE, so the programs read kernel structures at offsets
//! the agent looks up here, in `/sys/kernel/btf/vmlinux`, and passes in the
//! read-only global [`agent_common::CONFIG_GLOBAL`].
//!
//! # Minimum kernel version
//!
//! 5.5 (`CONFIG_DEBUG_INFO_BTF` with `/sys/kernel/btf/vmlinux`).

use std::path::{Path, PathBuf};

use agent_common::KernelConfig;
use btf_rs::{Btf, Type};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

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
}

/// Parsed kernel BTF, for member offset look-ups.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Parses the BTF at `path` (normally [`VMLINUX_BTF`]).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `member` in `struct strukt`, searching through
    /// anonymous struct and union members.
    pub fn member_offset(
        &self,
        strukt: &'static str,
        member: &'static str,
    ) -> Result<u32, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct { name: strukt })?;
        let found = types.iter().find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
            _ => None,
        });
        let s = found.ok_or(BtfError::NoStruct { name: strukt })?;
        match self.find_member(s, member)? {
            Some((bits, false)) => Ok(bits / 8),
            Some((_, true)) => Err(BtfError::Bitfield { strukt, member }),
            None => Err(BtfError::NoMember { strukt, member }),
        }
    }

    /// Returns (bit offset, is bitfield) of `member` in `s`.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        member: &str,
    ) -> Result<Option<(u32, bool)>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                let bitfield =
                    m.bitfield_size().is_some_and(|size| size != 0) || m.bit_offset() % 8 != 0;
                return Ok(Some((m.bit_offset(), bitfield)));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.strip(m)? {
                    if let Some((bits, bf)) = self.find_member(&inner, member)? {
                        return Ok(Some((m.bit_offset() + bits, bf)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The type a member refers to, through typedefs and qualifiers.
    fn strip(&self, member: &btf_rs::Member) -> Result<Type, BtfError> {
        let mut t = self
            .btf
            .resolve_chained_type(member)
            .map_err(BtfError::Resolve)?;
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
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(|m| m.val()),
            _ => None,
        })
    }

    /// Every offset the programs need, with `wakeup_bytes` as given.
    pub fn kernel_config(&self, wakeup_bytes: u32) -> Result<KernelConfig, BtfError> {
        let task = |m| self.member_offset("task_struct", m);
        Ok(KernelConfig {
            ready: 1,
            task_pid: task("pid")?,
            task_tgid: task("tgid")?,
            task_real_parent: task("real_parent")?,
            task_group_leader: task("group_leader")?,
            task_comm: task("comm")?,
            task_cgroups: task("cgroups")?,
            task_start_boottime: task("start_boottime")?,
            task_signal: task("signal")?,
            task_exit_code: task("exit_code")?,
            signal_live: self.member_offset("signal_struct", "live")?,
            css_set_dfl_cgrp: self.member_offset("css_set", "dfl_cgrp")?,
            css_set_subsys: self.member_offset("css_set", "subsys")?,
            css_cgroup: self.member_offset("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            cgroup_root: self.member_offset("cgroup", "root")?,
            cgroup_root_hierarchy_id: self.member_offset("cgroup_root", "hierarchy_id")?,
            kernfs_node_id: self.member_offset("kernfs_node", "id")?,
            memory_subsys_index: self
                .enum_value("cgroup_subsys_id", "memory_cgrp_id")
                .unwrap_or(u32::MAX),
            wakeup_bytes,
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
    fn bitfields_are_refused() {
        let Some(btf) = kernel() else { return };
        // task_struct.sched_reset_on_fork is a 1-bit field.
        let err = btf
            .member_offset("task_struct", "sched_reset_on_fork")
            .unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { .. }), "{err}");
    }
}
