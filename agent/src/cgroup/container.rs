//! Container ids recognised in cgroup paths: a fallback for runtimes pidmap
//! does not watch. The containerd watcher, which learns cgroup paths from
//! containerd itself, is the main source.

/// The runtime whose cgroup layout a path follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRuntime {
    /// containerd: `cri-containerd-<id>.scope` (CRI, systemd driver) or
    /// `/<namespace>/<id>` (its default cgroupfs layout).
    Containerd,
    /// CRI-O: `crio-<id>.scope` (systemd driver) or `crio-<id>` (cgroupfs).
    CriO,
    /// Docker: `docker-<id>.scope` (systemd driver) or `/docker/<id>`.
    Docker,
    /// Podman: `libpod-<id>.scope` (systemd driver) or `libpod-<id>`.
    Podman,
    /// The kubelet's cgroupfs layout `/kubepods/<qos>/pod<uid>/<id>`, which
    /// does not say which runtime made the container.
    Kubepods,
}

/// A container recognised in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathContainer {
    /// Whose layout the path follows.
    pub runtime: PathRuntime,
    /// The container id: 64 lowercase hex digits.
    pub container_id: String,
    /// The Kubernetes pod uid with dashes, when the path shows one.
    pub pod_uid: Option<String>,
    /// The containerd namespace, for the `/<namespace>/<id>` layout.
    pub namespace: Option<String>,
}

/// Recognises the container a cgroup path belongs to.
///
/// Looks at the path's components from the last to the first; the first one
/// (deepest) that names a container wins, so sub-cgroups a container creates
/// inside its own (`crio-<id>.scope/container`, nested Docker) resolve to
/// the innermost container. Container ids must be 64 lowercase hex digits;
/// conmon scopes (`crio-conmon-…`, `libpod-conmon-…`), pod-level and QoS
/// cgroups do not match. A trailing ` (deleted)`, which the kernel adds for
/// a removed cgroup, is ignored.
///
/// The bare `/<namespace>/<id>` layout is only recognised at the top of the
/// path, under a name that is a valid containerd namespace and not a
/// systemd unit, to keep unrelated 64-hex directories from matching.
///
/// # Examples
///
/// ```
/// use pidmap::testing::cgroup::{container_from_path, PathRuntime};
///
/// let path = "/kubepods.slice/kubepods-besteffort.slice/\
///     kubepods-besteffort-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice/\
///     cri-containerd-826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7.scope";
/// let c = container_from_path(path).unwrap();
/// assert_eq!(c.runtime, PathRuntime::Containerd);
/// assert_eq!(c.pod_uid.as_deref(), Some("66154caf-d25f-4fba-ae7b-0615dab9b194"));
/// assert!(container_from_path("/system.slice/containerd.service").is_none());
/// ```
pub fn container_from_path(path: &str) -> Option<PathContainer> {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    (0..components.len())
        .rev()
        .find_map(|i| container_at(&components, i))
}

/// Scope prefixes and the runtime each belongs to.
const PREFIXES: [(&str, PathRuntime); 4] = [
    ("cri-containerd-", PathRuntime::Containerd),
    ("crio-", PathRuntime::CriO),
    ("docker-", PathRuntime::Docker),
    ("libpod-", PathRuntime::Podman),
];

/// Names that are never containerd namespaces in a `/<ns>/<id>` path.
const NOT_NAMESPACES: [&str; 2] = ["kubepods", "docker"];

/// systemd unit suffixes: a top-level directory with one is a unit, not a
/// containerd namespace.
const UNIT_SUFFIXES: [&str; 4] = [".slice", ".scope", ".service", ".mount"];

/// The container named by `components[i]`, if any, with what its ancestors
/// say about its pod or namespace.
fn container_at(components: &[&str], i: usize) -> Option<PathContainer> {
    let name = components.get(i)?;
    let parent = i.checked_sub(1).and_then(|p| components.get(p).copied());
    let found = |runtime, pod_uid, namespace| {
        Some(PathContainer {
            runtime,
            container_id: (*name).to_owned(),
            pod_uid,
            namespace,
        })
    };
    for (prefix, runtime) in PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let id = rest.strip_suffix(".scope").unwrap_or(rest);
            if !is_container_id(id) {
                return None;
            }
            return Some(PathContainer {
                runtime,
                container_id: id.to_owned(),
                pod_uid: i.checked_sub(1).and_then(|p| pod_uid_at(components, p)),
                namespace: None,
            });
        }
    }
    if !is_container_id(name) {
        return None;
    }
    let parent = parent?;
    if parent == "docker" {
        return found(PathRuntime::Docker, None, None);
    }
    if let Some(uid) = i
        .checked_sub(1)
        .and_then(|p| cgroupfs_pod_uid(components, p))
    {
        return found(PathRuntime::Kubepods, Some(uid), None);
    }
    if i == 1 && is_containerd_namespace(parent) {
        return found(PathRuntime::Containerd, None, Some(parent.to_owned()));
    }
    None
}

/// The pod uid of pod-level cgroup `components[j]`, in either driver's
/// layout.
fn pod_uid_at(components: &[&str], j: usize) -> Option<String> {
    systemd_pod_uid(components.get(j)?).or_else(|| cgroupfs_pod_uid(components, j))
}

/// The pod uid of a systemd pod slice such as
/// `kubepods-burstable-pod<uid with _>.slice` (or `kubepods-pod….slice` for
/// guaranteed pods), with dashes restored.
fn systemd_pod_uid(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    let (prefix, uid) = stem.rsplit_once("-pod")?;
    if !prefix.contains("kubepods") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// The pod uid of `components[j]` if it is `pod<uid>` directly under
/// `kubepods` or under `kubepods/besteffort|burstable` (cgroupfs driver).
fn cgroupfs_pod_uid(components: &[&str], j: usize) -> Option<String> {
    let uid = components.get(j)?.strip_prefix("pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    let up = |n: usize| j.checked_sub(n).and_then(|k| components.get(k).copied());
    let under_kubepods = match up(1)? {
        "kubepods" => true,
        "besteffort" | "burstable" => up(2) == Some("kubepods"),
        _ => false,
    };
    under_kubepods.then(|| uid.to_owned())
}

/// 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// A Kubernetes pod uid: a lowercase UUID (`8-4-4-4-12`), or 32 lowercase
/// hex digits (the hash the kubelet uses for static pods).
fn is_pod_uid(s: &str) -> bool {
    if s.len() == 32 {
        return is_lower_hex(s);
    }
    let mut groups = s.split('-');
    [8, 4, 4, 4, 12].iter().all(|&len| {
        groups
            .next()
            .is_some_and(|g| g.len() == len && is_lower_hex(g))
    }) && groups.next().is_none()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A valid containerd namespace name (`[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`,
/// at most 76 characters) that is not a systemd unit or a name another
/// layout owns.
fn is_containerd_namespace(s: &str) -> bool {
    if s.is_empty() || s.len() > 76 || NOT_NAMESPACES.contains(&s) {
        return false;
    }
    if UNIT_SUFFIXES.iter().any(|suffix| s.ends_with(suffix)) {
        return false;
    }
    s.split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::PathRuntime::*;
    use super::*;

    type Expected = Option<(
        PathRuntime,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    )>;

    const ID1: &str = "826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7";
    const ID2: &str = "70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796";
    const ID3: &str = "7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510";
    const ID4: &str = "b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5";
    const ID5: &str = "29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba";
    const UID1: &str = "bfb28676-99f9-462e-b1cb-1e16de1f09c0";
    const UID2: &str = "66154caf-d25f-4fba-ae7b-0615dab9b194";
    const UID3: &str = "792b1013-a911-4412-96d8-1e6405efaf50";
    const STATIC_UID: &str = "8eeff1eb930d736dfba1775985635be4";

    #[rustfmt::skip]
    const TABLE: &[(&str, Expected)] = &[
        // systemd driver, kubelet
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podbfb28676_99f9_462e_b1cb_1e16de1f09c0.slice/cri-containerd-826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7.scope",
            Some((Containerd, ID1, Some(UID1), None))),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice/cri-containerd-70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796.scope",
            Some((Containerd, ID2, Some(UID2), None))),
        ("/kubepods.slice/kubepods-pod792b1013_a911_4412_96d8_1e6405efaf50.slice/cri-containerd-7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510.scope",
            Some((Containerd, ID3, Some(UID3), None))),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice/crio-b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5.scope",
            Some((CriO, ID4, Some(UID2), None))),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice/crio-b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5.scope/container",
            Some((CriO, ID4, Some(UID2), None))),
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8eeff1eb930d736dfba1775985635be4.slice/docker-29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba.scope",
            Some((Docker, ID5, Some(STATIC_UID), None))),
        ("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podbfb28676_99f9_462e_b1cb_1e16de1f09c0.slice/cri-containerd-826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7.scope",
            Some((Containerd, ID1, Some(UID1), None))),
        // systemd driver, no Kubernetes
        ("/system.slice/docker-29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba.scope",
            Some((Docker, ID5, None, None))),
        ("/machine.slice/libpod-70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796.scope",
            Some((Podman, ID2, None, None))),
        ("/machine.slice/libpod-70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796.scope/container",
            Some((Podman, ID2, None, None))),
        ("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510.scope",
            Some((Podman, ID3, None, None))),
        ("/system.slice/crio-b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5.scope",
            Some((CriO, ID4, None, None))),
        // cgroupfs driver
        ("/kubepods/besteffort/podbfb28676-99f9-462e-b1cb-1e16de1f09c0/826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7",
            Some((Kubepods, ID1, Some(UID1), None))),
        ("/kubepods/burstable/pod66154caf-d25f-4fba-ae7b-0615dab9b194/70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796",
            Some((Kubepods, ID2, Some(UID2), None))),
        ("/kubepods/pod792b1013-a911-4412-96d8-1e6405efaf50/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510",
            Some((Kubepods, ID3, Some(UID3), None))),
        ("/kubepods/pod8eeff1eb930d736dfba1775985635be4/29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba",
            Some((Kubepods, ID5, Some(STATIC_UID), None))),
        ("/kubepods/burstable/pod66154caf-d25f-4fba-ae7b-0615dab9b194/crio-b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5",
            Some((CriO, ID4, Some(UID2), None))),
        ("/docker/29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba",
            Some((Docker, ID5, None, None))),
        ("/docker/826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7/docker/70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796",
            Some((Docker, ID2, None, None))),
        ("/k8s.io/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510",
            Some((Containerd, ID3, None, Some("k8s.io")))),
        ("/default/b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5",
            Some((Containerd, ID4, None, Some("default")))),
        ("/moby/29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba/init",
            Some((Containerd, ID5, None, Some("moby")))),
        // podman 4.3 with the cgroupfs manager (tests/tests/podman.rs runs it)
        ("/libpod_parent/libpod-826c97a3135044e49e7e41cba74b997a67011725d1c09e3458a98c6f073a98c7",
            Some((Podman, ID1, None, None))),
        ("/docker/29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2ba (deleted)",
            Some((Docker, ID5, None, None))),
        // must not match
        ("", None),
        ("/", None),
        ("/init.scope", None),
        ("/system.slice/containerd.service", None),
        ("/user.slice/user-0.slice/session-1.scope", None),
        ("/process_api/7d3463dfea2602ef2806174009a1f474", None),
        ("/default/long1", None),
        ("/kubepods/besteffort/podbfb28676-99f9-462e-b1cb-1e16de1f09c0", None),
        ("/kubepods.slice/kubepods-burstable.slice", None),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice", None),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod66154caf_d25f_4fba_ae7b_0615dab9b194.slice/crio-conmon-b56835e4ee0e1765d812ffc6775105434a632abe1e4c96b15a866000d9f46ce5.scope", None),
        ("/machine.slice/libpod-conmon-70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796.scope", None),
        // podman's conmon with the cgroupfs manager
        ("/libpod_parent/conmon", None),
        // 63 digits, uppercase, non-hex
        ("/docker/29f552ad9460631560a99a36aa757b0bfccdc318ef502d30e1c27ce113dff2b", None),
        ("/system.slice/docker-29F552AD9460631560A99A36AA757B0BFCCDC318EF502D30E1C27CE113DFF2BA.scope", None),
        ("/k8s.io/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be51g", None),
        // a 64-hex directory in places no layout puts one
        ("/system.slice/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510", None),
        ("/a/b/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510", None),
        ("/kubepods/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510", None),
        ("/ns..bad/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510", None),
        ("/guaranteed/pod792b1013-a911-4412-96d8-1e6405efaf50/7c51e0f96984b193990404534ba17359e1b226e62bf69b0ae8415b5b4a3be510", None),
        ("/kubepods/burstable/pod66154CAF-d25f-4fba-ae7b-0615dab9b194/70bda1ac79191374207954e9360a4607da6b74a0df6a15093a7e5376fd6d7796", None),
    ];

    #[test]
    fn recognises_real_layouts() {
        let mut positives = 0;
        for (path, expected) in TABLE {
            let got = container_from_path(path);
            let expected = expected.map(|(runtime, id, uid, ns)| PathContainer {
                runtime,
                container_id: id.to_owned(),
                pod_uid: uid.map(str::to_owned),
                namespace: ns.map(str::to_owned),
            });
            positives += usize::from(expected.is_some());
            assert_eq!(got, expected, "path {path:?}");
        }
        assert!(positives >= 20, "only {positives} positive cases");
    }

    #[test]
    fn pod_uid_forms() {
        assert!(is_pod_uid(UID1));
        assert!(is_pod_uid(STATIC_UID));
        assert!(!is_pod_uid("bfb28676-99f9-462e-b1cb-1e16de1f09c0-"));
        assert!(!is_pod_uid("bfb2867699f9-462e-b1cb-1e16de1f09c0"));
        assert!(!is_pod_uid("BFB28676-99F9-462E-B1CB-1E16DE1F09C0"));
        assert!(!is_pod_uid(""));
    }

    #[test]
    fn containerd_namespace_names() {
        for good in ["default", "k8s.io", "moby", "buildkit", "a-b_c.d", "X1"] {
            assert!(is_containerd_namespace(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "system.slice",
            "kubepods",
            "docker",
            "a b",
        ] {
            assert!(!is_containerd_namespace(bad), "{bad}");
        }
        assert!(!is_containerd_namespace(&"a".repeat(77)));
    }
}
