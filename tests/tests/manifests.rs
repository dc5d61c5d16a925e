//! The deployment files under `deploy/`: every Kubernetes document parsed into
//! `k8s-openapi` types and checked against the agent's real configuration
//! defaults and command line; `deploy/pidmap.toml` and the ConfigMap's TOML
//! parsed with `pidmap::Config`; the systemd unit's capabilities and command.
//! Unprivileged and fast: `cargo test -p pidmap-tests --test manifests`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            ConfigMap, Container, Namespace, Pod, PodSpec, Probe, ServiceAccount, Volume,
            VolumeMount,
        },
    },
    serde::{Serialize, de::DeserializeOwned},
};
use pidmap::{
    Config,
    cli::{Cli, Command},
};
use serde_json::Value;

/// The image every manifest runs (the tag is the agent's version).
const IMAGE_NAME: &str = "localhost/pidmap";
/// The binary inside the image.
const BINARY: &str = "/usr/local/bin/pidmap";
/// The capabilities the agent gets, each documented in daemonset.yaml,
/// pidmap.service and docs/deployment.md.
const AGENT_CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHOWN"];
/// The host's cgroupfs, which the agent reads.
const CGROUPFS: &str = "/sys/fs/cgroup";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The agent's version as its `--version` prints it (the agent crate's
/// `CARGO_PKG_VERSION`), checked against agent/Cargo.toml.
fn agent_version() -> String {
    let version = Cli::command()
        .get_version()
        .expect("the CLI has a version")
        .to_owned();
    let manifest = read(&repo().join("agent/Cargo.toml"));
    let in_manifest = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"'))
        .expect("agent/Cargo.toml has a version line");
    assert_eq!(version, in_manifest, "agent/Cargo.toml changed under us");
    version
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Deserializes `doc` into `T` and insists that nothing was dropped on the
/// way: k8s-openapi ignores unknown fields, so a misspelt or misplaced key
/// (`hostPid`, `readonly`) would otherwise pass silently.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let value: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid Kubernetes object: {e}"));
    let back = serde_json::to_value(&value).expect("k8s-openapi types serialize");
    assert_eq!(
        &back, doc,
        "{what}: fields Kubernetes does not know (a typo or a key in the wrong place?)"
    );
    value
}

/// Every document under deploy/kubernetes, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    /// Example client pods, with their file.
    pods: Vec<(PathBuf, Pod)>,
    /// kustomization.yaml, untyped.
    kustomization: Option<Value>,
    /// Every file that holds at least one document.
    files: Vec<PathBuf>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for path in yaml_files(&kube_dir()) {
        let text = read(&path);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        assert!(!docs.is_empty(), "{}: no YAML document", path.display());
        for (i, doc) in docs.iter().enumerate() {
            let what = format!("{} (document {})", path.display(), i + 1);
            let kind = doc["kind"].as_str().unwrap_or_default();
            match kind {
                "Namespace" => m.namespaces.push(typed(doc, &what)),
                "ServiceAccount" => m.service_accounts.push(typed(doc, &what)),
                "ConfigMap" => m.config_maps.push(typed(doc, &what)),
                "DaemonSet" => m.daemon_sets.push(typed(doc, &what)),
                "Pod" => m.pods.push((path.clone(), typed(doc, &what))),
                "Kustomization" => {
                    assert!(m.kustomization.is_none(), "{what}: a second Kustomization");
                    m.kustomization = Some(doc.clone());
                }
                other => panic!("{what}: kind {other:?} is not checked by this test; teach it"),
            }
        }
        m.files.push(path);
    }
    m
}

impl Manifests {
    fn daemon_set(&self) -> &DaemonSet {
        assert_eq!(self.daemon_sets.len(), 1, "exactly one DaemonSet");
        &self.daemon_sets[0]
    }

    fn pod_spec(&self) -> &PodSpec {
        self.daemon_set()
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("the DaemonSet has a pod spec")
    }

    fn agent(&self) -> &Container {
        let spec = self.pod_spec();
        assert_eq!(spec.containers.len(), 1, "one container: the agent");
        &spec.containers[0]
    }

    fn config_map(&self) -> &ConfigMap {
        assert_eq!(self.config_maps.len(), 1, "exactly one ConfigMap");
        &self.config_maps[0]
    }

    /// Every pod spec: the DaemonSet's and the examples'.
    fn pod_specs(&self) -> Vec<(String, &PodSpec)> {
        let mut specs = vec![("the DaemonSet".to_owned(), self.pod_spec())];
        for (path, pod) in &self.pods {
            let spec = pod.spec.as_ref().expect("the pod has a spec");
            specs.push((path.display().to_string(), spec));
        }
        specs
    }
}

/// Every container of a pod, init containers included.
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// The mount that holds `path` in `container` (the deepest one), and its volume.
fn mount_for<'a>(
    spec: &'a PodSpec,
    container: &'a Container,
    path: &Path,
) -> Option<(&'a VolumeMount, &'a Volume)> {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("mount {} names no volume", mount.name));
    Some((mount, volume))
}

/// Asserts that `dir` in the container is the host's `dir`, mounted as a
/// directory, read-only or not; returns the hostPath type.
fn assert_host_dir(spec: &PodSpec, container: &Container, dir: &Path, read_only: bool) -> String {
    let (mount, volume) = mount_for(spec, container, dir)
        .unwrap_or_else(|| panic!("{}: not mounted from the host", dir.display()));
    assert_eq!(
        Path::new(&mount.mount_path),
        dir,
        "{}: mount the directory itself",
        dir.display()
    );
    let host = volume
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{}: not a hostPath volume", dir.display()));
    assert_eq!(Path::new(&host.path), dir, "hostPath and mountPath differ");
    assert_eq!(
        mount.read_only.unwrap_or(false),
        read_only,
        "{}: readOnly should be {read_only}",
        dir.display()
    );
    let kind = host.type_.clone().unwrap_or_default();
    assert!(
        kind == "Directory" || kind == "DirectoryOrCreate",
        "{}: hostPath type {kind:?}, expected a directory type",
        dir.display()
    );
    kind
}

/// Writes `text` to a temporary file and loads it the way the agent does.
fn config_from_text(text: &str) -> Result<Config, pidmap::config::ConfigError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pidmap.toml");
    std::fs::write(&path, text).expect("write temp config");
    Config::from_file(&path)
}

/// The configuration the DaemonSet's agent runs with.
fn daemonset_config(m: &Manifests) -> Config {
    let text = m
        .config_map()
        .data
        .as_ref()
        .and_then(|d| d.get("pidmap.toml"))
        .expect("the ConfigMap holds pidmap.toml");
    config_from_text(text).unwrap_or_else(|e| {
        panic!(
            "the ConfigMap's pidmap.toml is refused by the agent: {e}: {:?}",
            std::error::Error::source(&e)
        )
    })
}

/// The field names of `Config`, from serde's own list (the error for an
/// unknown key names every expected one).
fn config_keys() -> Vec<String> {
    let err = config_from_text("pidmap_no_such_key = 1").expect_err("unknown keys are refused");
    let message = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    let expected = message
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected toml error: {message}"));
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(keys.len() > 10, "too few keys found in {message:?}");
    keys
}

fn parse_cli<I: AsRef<str>>(argv: &[I]) -> Cli {
    let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} is not a pidmap command: {e}"))
}

// ---------------------------------------------------------------------------

#[test]
fn example_config_is_every_default() {
    let path = repo().join("deploy/pidmap.toml");
    let config = Config::from_file(&path).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} (unknown keys make the agent refuse to start)",
            std::error::Error::source(&e)
        )
    });
    assert_eq!(
        config,
        Config::default(),
        "deploy/pidmap.toml must document the real defaults"
    );

    // Every key is documented, set or (for options that are off) commented out.
    let text = read(&path);
    let documented: BTreeSet<&str> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim_start())
        .filter_map(|l| l.split_once(" = ").map(|(key, _)| key))
        .collect();
    for key in config_keys() {
        assert!(
            documented.contains(key.as_str()),
            "deploy/pidmap.toml does not mention {key}"
        );
    }

    // The commented-out examples are valid settings too.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let on = config_from_text(&uncommented).expect("the commented examples parse");
    assert!(on.socket_group.is_some() && on.metrics_addr.is_some());
}

#[test]
fn every_manifest_is_a_kubernetes_object_and_kustomized() {
    let m = manifests();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    m.daemon_set();
    m.config_map();
    assert!(!m.pods.is_empty(), "the example client pod");

    let kustomization = m.kustomization.as_ref().expect("kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("resource is a path").to_owned())
        .collect();
    let dir = kube_dir();
    let expected: BTreeSet<String> = m
        .files
        .iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, expected,
        "kustomization.yaml must list every manifest in deploy/kubernetes and nothing else"
    );
    assert!(
        listed.iter().all(|r| !r.starts_with("examples")),
        "examples are not deployed"
    );

    // One namespace for everything, one service account, one name label.
    let ns = m.namespaces[0]
        .metadata
        .name
        .clone()
        .expect("namespace name");
    assert_eq!(ns, "pidmap-system");
    let ds = m.daemon_set();
    for meta in [
        &ds.metadata,
        &m.config_map().metadata,
        &m.service_accounts[0].metadata,
    ] {
        assert_eq!(meta.namespace.as_deref(), Some(ns.as_str()));
        let name = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/name"));
        assert_eq!(name.map(String::as_str), Some("pidmap"));
    }
    assert_eq!(
        m.pod_spec().service_account_name,
        m.service_accounts[0].metadata.name,
        "the DaemonSet runs as the pidmap service account"
    );
}

#[test]
fn daemonset_is_a_node_agent() {
    let m = manifests();
    let ds = m.daemon_set();
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let pod = m.pod_spec();

    assert_eq!(
        pod.host_pid,
        Some(true),
        "hostPID: the host's /proc and pids"
    );
    assert_ne!(pod.host_network, Some(true), "no host network");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerate every taint: {tolerations:?}"
    );

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let max_unavailable = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_unavailable.as_ref());
    assert_eq!(
        max_unavailable,
        Some(&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    assert_eq!(
        selector.get("app.kubernetes.io/name").map(String::as_str),
        Some("pidmap")
    );
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pods");
    }
}

#[test]
fn agent_runs_with_its_config_and_volumes_match_it() {
    let m = manifests();
    let pod = m.pod_spec();
    let agent = m.agent();
    let config = daemonset_config(&m);

    // The arguments are a real `pidmap agent` command line (the entrypoint
    // is the binary); its --config file comes from the ConfigMap.
    assert!(agent.command.is_none(), "keep the image's entrypoint");
    let args = agent.args.as_deref().unwrap_or_default();
    let argv = [&[BINARY.to_owned()], args].concat();
    let cli = parse_cli(&argv);
    let Command::Agent(agent_args) = cli.command else {
        panic!("the DaemonSet does not run `pidmap agent`: {args:?}")
    };
    let config_path = agent_args.config.clone().expect("--config is given");
    let (mount, volume) = mount_for(pod, agent, &config_path).expect("the config file is mounted");
    let source = volume.config_map.as_ref().expect("from a ConfigMap");
    assert_eq!(Some(&source.name), m.config_map().metadata.name.as_ref());
    assert!(mount.read_only == Some(true));
    assert_eq!(
        config_path.strip_prefix(&mount.mount_path).ok(),
        Some(Path::new("pidmap.toml"))
    );
    // Flags given besides --config would override the file; there are none
    // that change where things are.
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .expect("a pidmap command line");
    let given = pidmap::config::given_options(
        matches
            .subcommand_matches("agent")
            .expect("the agent subcommand"),
    );
    assert!(!given.contains(&"socket") && !given.contains(&"containerd_socket"));
    assert!(!given.contains(&"nri_socket") && !given.contains(&"no_nri"));
    assert!(!given.contains(&"btf_path") && !given.contains(&"proc_root"));

    let defaults = Config::default();
    assert_eq!(config.socket, defaults.socket);
    assert_eq!(config.containerd_socket, defaults.containerd_socket);
    assert_eq!(config.nri_socket, defaults.nri_socket);
    assert!(!config.no_nri, "NRI is on in the DaemonSet");
    assert_eq!(config.btf_path, defaults.btf_path);
    assert_eq!(config.proc_root, defaults.proc_root);

    // The API socket's directory is the host's, created if missing, writable.
    let socket_dir = config.socket.parent().expect("socket dir");
    assert_eq!(socket_dir, Path::new("/run/pidmap"));
    assert_eq!(
        assert_host_dir(pod, agent, socket_dir, false),
        "DirectoryOrCreate"
    );

    // containerd's directory, read-only, never the socket file itself.
    let containerd_dir = config.containerd_socket.parent().expect("containerd dir");
    assert_eq!(containerd_dir, Path::new("/run/containerd"));
    assert_host_dir(pod, agent, containerd_dir, true);
    for v in pod.volumes.iter().flatten() {
        if let Some(host) = &v.host_path {
            assert_ne!(
                Path::new(&host.path),
                config.containerd_socket,
                "mount /run/containerd, not the socket file (it goes stale on restart)"
            );
        }
    }

    // NRI's directory, read-only, never the socket file itself.
    let nri_dir = config.nri_socket.parent().expect("NRI dir");
    assert_eq!(nri_dir, Path::new("/var/run/nri"));
    assert_eq!(
        assert_host_dir(pod, agent, nri_dir, true),
        "DirectoryOrCreate",
        "a node without NRI must still run the agent"
    );
    for v in pod.volumes.iter().flatten() {
        if let Some(host) = &v.host_path {
            assert_ne!(
                Path::new(&host.path),
                config.nri_socket,
                "mount the NRI directory"
            );
        }
    }

    // Kernel BTF and the host's cgroupfs, read-only.
    let btf_dir = config.btf_path.parent().expect("btf dir");
    assert_eq!(btf_dir, Path::new("/sys/kernel/btf"));
    assert_host_dir(pod, agent, btf_dir, true);
    assert_host_dir(pod, agent, Path::new(CGROUPFS), true);

    // The host's bpffs, writable: the containers map is pinned in it (the
    // default pin directory, not set otherwise in the file).
    assert_eq!(config.pin_dir, None);
    assert!(!config.no_pin);
    let pin_parent = Path::new(agent_common::containers::DEFAULT_PIN_DIR)
        .parent()
        .expect("the bpffs");
    assert_eq!(
        assert_host_dir(pod, agent, pin_parent, false),
        "DirectoryOrCreate"
    );

    // /proc is the host's through hostPID, not a mount.
    assert_eq!(config.proc_root, Path::new("/proc"));
    assert!(
        mount_for(pod, agent, &config.proc_root).is_none(),
        "/proc must not be mounted over (hostPID gives the host's)"
    );

    // Metrics: the port named `metrics` is the one the agent serves on.
    let metrics_port = agent
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"));
    match (config.metrics_addr, metrics_port) {
        (Some(addr), Some(port)) => {
            assert_eq!(i32::from(addr.port()), port.container_port);
            assert!(
                addr.ip().is_unspecified(),
                "without hostNetwork, 127.0.0.1 is unreachable from outside the pod"
            );
        }
        (None, None) => {}
        (addr, port) => panic!("metrics_addr {addr:?} and the metrics port {port:?} disagree"),
    }
}

fn assert_status_probe(probe: Option<&Probe>, which: &str) -> i32 {
    let probe = probe.unwrap_or_else(|| panic!("the agent has no {which} probe"));
    let command = probe
        .exec
        .as_ref()
        .and_then(|e| e.command.as_deref())
        .unwrap_or_else(|| panic!("{which} probe: not an exec probe"));
    assert_eq!(command, [BINARY, "status"], "{which} probe");
    assert!(
        matches!(parse_cli(command).command, Command::Status { .. }),
        "{which} probe: not `pidmap status`"
    );
    probe.initial_delay_seconds.unwrap_or(0)
        + probe.period_seconds.unwrap_or(10) * probe.failure_threshold.unwrap_or(3)
}

#[test]
fn probes_ask_pidmap_status() {
    let m = manifests();
    let agent = m.agent();
    assert_status_probe(agent.readiness_probe.as_ref(), "readiness");
    let liveness_window = assert_status_probe(agent.liveness_probe.as_ref(), "liveness");
    assert!(
        liveness_window >= 120,
        "liveness must be generous: {liveness_window} s before a restart"
    );
}

#[test]
fn images_are_the_built_image() {
    let m = manifests();
    let image = format!("{IMAGE_NAME}:{}", agent_version());
    for (what, spec) in m.pod_specs() {
        for c in containers(spec) {
            assert_eq!(
                c.image.as_deref(),
                Some(image.as_str()),
                "{what}: {}",
                c.name
            );
            assert_ne!(
                c.image_pull_policy.as_deref(),
                Some("Always"),
                "{what}: an imported image cannot be pulled"
            );
        }
    }
}

#[test]
fn least_privilege() {
    let m = manifests();
    let agent_caps: BTreeSet<&str> = AGENT_CAPABILITIES.into_iter().collect();
    for (what, spec) in m.pod_specs() {
        for c in containers(spec) {
            let sc = c
                .security_context
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: {} has no securityContext", c.name));
            assert_ne!(
                sc.privileged,
                Some(true),
                "{what}: no privileged containers"
            );
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(
                caps.drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{what}: drop ALL"
            );
            let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
            assert!(added.is_subset(&agent_caps), "{what}: {added:?}");
            // The runtime's default seccomp profile, the agent's included
            // (tests/tests/image.rs proves it runs under containerd's).
            let seccomp = sc
                .seccomp_profile
                .as_ref()
                .or_else(|| spec.security_context.as_ref()?.seccomp_profile.as_ref())
                .unwrap_or_else(|| panic!("{what}: {} has no seccompProfile", c.name));
            assert_eq!(seccomp.type_, "RuntimeDefault", "{what}: {}", c.name);
        }
    }

    let sc = m
        .agent()
        .security_context
        .as_ref()
        .expect("securityContext");
    let added: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added, agent_caps,
        "the agent adds exactly the documented set"
    );
    assert_eq!(sc.run_as_user, Some(0), "the agent runs as root");

    // Docker's socket is not mounted: whoever reaches it controls the node's
    // Docker. Nodes that run Docker can mount it (docs/deployment.md).
    let docker_socket = Config::default().docker_socket;
    for v in m.pod_spec().volumes.iter().flatten() {
        if let Some(host) = &v.host_path {
            let path = Path::new(&host.path);
            assert!(
                !docker_socket.starts_with(path) && !path.ends_with("docker.sock"),
                "volume {} mounts Docker's socket ({})",
                v.name,
                host.path
            );
        }
    }

    // The service account needs no token: pidmap never calls the API.
    assert_eq!(m.pod_spec().automount_service_account_token, Some(false));
}

#[test]
fn every_container_has_resources() {
    let m = manifests();
    for (what, spec) in m.pod_specs() {
        for c in containers(spec) {
            let r = c
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: {} has no resources", c.name));
            for (kind, list) in [("requests", &r.requests), ("limits", &r.limits)] {
                let list = list
                    .as_ref()
                    .unwrap_or_else(|| panic!("{what}: {} has no {kind}", c.name));
                for resource in ["cpu", "memory"] {
                    assert!(
                        list.contains_key(resource),
                        "{what}: {} has no {kind}.{resource}",
                        c.name
                    );
                }
            }
        }
    }
}

#[test]
fn example_client_asks_whoami_over_the_shared_socket() {
    let m = manifests();
    let (path, pod) = m
        .pods
        .iter()
        .find(|(p, _)| p.ends_with("examples/whoami-client.yaml"))
        .expect("deploy/kubernetes/examples/whoami-client.yaml");
    let what = path.display();
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"), "{what}");
    let c = &spec.containers[0];
    let command = c.command.as_deref().expect("command");
    assert_eq!(command, [BINARY, "whoami"], "{what}");
    assert!(matches!(parse_cli(command).command, Command::Whoami { .. }));

    // The socket it uses (PIDMAP_SOCKET or the default) is in a mount of the
    // host's /run/pidmap, the agent's socket directory.
    let socket = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PIDMAP_SOCKET")
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| pidmap::api::DEFAULT_SOCKET.to_owned());
    let agent_socket = daemonset_config(&m).socket;
    assert_eq!(Path::new(&socket), agent_socket, "{what}");
    let dir = agent_socket.parent().expect("socket dir");
    assert_host_dir(spec, c, dir, true);
    assert_ne!(
        spec.host_pid,
        Some(true),
        "{what}: a client needs no hostPID"
    );
}

#[test]
fn systemd_unit_matches_the_daemonset() {
    let unit = read(&repo().join("deploy/systemd/pidmap.service"));
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };

    let exec = value("ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(argv[0], BINARY);
    let Command::Agent(args) = parse_cli(&argv).command else {
        panic!("ExecStart does not run `pidmap agent`")
    };
    assert_eq!(
        args.config.as_deref(),
        Some(Path::new("/etc/pidmap/pidmap.toml"))
    );

    let bounding: BTreeSet<String> = value("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let expected: BTreeSet<String> = AGENT_CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(bounding, expected, "the same capabilities as the DaemonSet");

    for (key, want) in [
        ("RuntimeDirectory", "pidmap"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("LimitMEMLOCK", "infinity"),
    ] {
        assert_eq!(value(key), [want], "{key}");
    }
    // The runtime directory is where the default socket lives.
    assert_eq!(
        Path::new(pidmap::api::DEFAULT_SOCKET).parent(),
        Some(Path::new("/run/pidmap"))
    );
}
