//! What pidmap needs from a container's OCI runtime spec: the cgroup path
//! and the annotations.

use std::collections::BTreeMap;

/// The parts of an OCI spec pidmap uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecInfo {
    /// `linux.cgroupsPath` as written (cgroupfs or systemd form).
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// Parses the JSON OCI spec containerd stores in `Container.spec.value`.
/// An unparsable spec yields no information rather than an error: the
/// container still resolves through its task pid's cgroup.
pub fn parse_spec(json: &[u8]) -> SpecInfo {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return SpecInfo::default();
    };
    let cgroups_path = value
        .pointer("/linux/cgroupsPath")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let annotations = value
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    SpecInfo {
        cgroups_path,
        annotations,
    }
}

/// The cgroup directory (relative to a hierarchy's root, leading `/`) that
/// runc uses for an OCI `cgroupsPath`.
///
/// - cgroupfs driver: `/kubepods/besteffort/pod<uid>/<id>` is the path
///   itself; a relative path is taken from the root.
/// - systemd driver: `slice:prefix:name`, e.g.
///   `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`, becomes
///   `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
pub fn cgroup_dir(cgroups_path: &str) -> Option<String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    match parts.as_slice() {
        [path] if !path.is_empty() => Some(if path.starts_with('/') {
            (*path).to_owned()
        } else {
            format!("/{path}")
        }),
        [slice, prefix, name] if !name.is_empty() => {
            let mut dir = expand_slice(if slice.is_empty() {
                "system.slice"
            } else {
                slice
            })?;
            let unit = if name.ends_with(".slice") {
                // A slice as the unit: runc nests it under the parent.
                return Some(format!("{dir}/{}", name));
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            dir.push('/');
            dir.push_str(&unit);
            Some(dir)
        }
        _ => None,
    }
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice` (systemd's nesting);
/// `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<String> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(String::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push('/');
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1a9c2b7e5d4a6f8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

    #[test]
    fn cgroupfs_paths_are_taken_as_they_are() {
        assert_eq!(
            cgroup_dir("/default/long1").as_deref(),
            Some("/default/long1")
        );
        assert_eq!(
            cgroup_dir("/kubepods/besteffort/pod1234/abc").as_deref(),
            Some("/kubepods/besteffort/pod1234/abc")
        );
        assert_eq!(cgroup_dir("relative/x").as_deref(), Some("/relative/x"));
        assert_eq!(cgroup_dir(""), None);
    }

    #[test]
    fn systemd_paths_expand_slices() {
        let uid = "5a7c1e2d_0b3f_4c6d_8e9f_0a1b2c3d4e5f";
        let got = cgroup_dir(&format!(
            "kubepods-besteffort-pod{uid}.slice:cri-containerd:{ID}"
        ));
        assert_eq!(
            got.as_deref(),
            Some(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope"
                )
                .as_str()
            )
        );
        assert_eq!(
            cgroup_dir("system.slice:docker:abc").as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(cgroup_dir("-.slice:p:x").as_deref(), Some("/p-x.scope"));
        assert_eq!(
            cgroup_dir(":p:x").as_deref(),
            Some("/system.slice/p-x.scope")
        );
        assert_eq!(cgroup_dir("bad:p:x"), None, "a slice must end in .slice");
        assert_eq!(cgroup_dir("a--b.slice:p:x"), None);
        assert_eq!(cgroup_dir("a:b"), None);
    }

    #[test]
    fn spec_yields_cgroups_path_and_annotations() {
        let json = br#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/default/c1"},
            "annotations":{"io.kubernetes.cri.sandbox-name":"web","n":"1"}}"#;
        let s = parse_spec(json);
        assert_eq!(s.cgroups_path.as_deref(), Some("/default/c1"));
        assert_eq!(
            s.annotations
                .get("io.kubernetes.cri.sandbox-name")
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(parse_spec(b"not json"), SpecInfo::default());
        assert_eq!(
            parse_spec(br#"{"linux":{"cgroupsPath":""}}"#).cgroups_path,
            None
        );
    }
}
