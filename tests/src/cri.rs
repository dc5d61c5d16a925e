//! A kubelet-like client of containerd's CRI plugin (`runtime.v1`, compiled by `build.rs`
//! from the `.proto` Debian ships), for [`Containerd::start_cri`]. Like the rest of the
//! fixture it is synchronous: each call runs on a thread of its own with a small runtime,
//! so async tests may call it from their multi-threaded runtime.
//!
//! Pods run with the host's network (no CNI here), no hostname (that would be the
//! host's), in the kubelet's cgroupfs layout `/kubepods/besteffort/pod<uid>/<id>`.
//!
//! # Examples
//!
//! ```no_run
//! use pidmap_tests::{containerd::{Containerd, CRI_IMAGE}, cri::PodSpec};
//!
//! let ctrd = Containerd::start_cri();
//! let cri = ctrd.cri();
//! let pod = cri.run_pod(&PodSpec::new("web-0", "shop", "0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b"));
//! let id = cri.create_container(&pod, "nginx", CRI_IMAGE, &["/bin/sleep", "1000"]);
//! cri.start_container(&id);
//! assert!(cri.container_pid(&id) > 0);
//! cri.remove_pod(&pod);
//! ```

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use containerd_client::tonic::transport::Channel;

use crate::containerd::Containerd;

/// The generated CRI API (`runtime.v1`).
#[allow(clippy::all, missing_docs, unused_qualifications, unreachable_pub)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

use api::{image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one CRI call may take (RunPodSandbox and StopPodSandbox are the slow ones).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Cri::wait_for_image`] waits for CRI to learn an imported image.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the fixture's cleanup waits for CRI to finish recovering its pods after a
/// containerd restart.
const CRI_RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds StopContainer gives a container after SIGTERM before SIGKILL.
const STOP_TIMEOUT_SECONDS: i64 = 2;

/// The pod a sandbox is made for: its Kubernetes identity, and labels (kubelet's own
/// `io.kubernetes.*` labels are left out on purpose: the identity must come from the CRI
/// metadata itself).
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str, uid: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            labels: Vec::new(),
        }
    }

    /// Adds a pod label (on the sandbox, as kubelet passes the pod's own labels).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The pod's cgroup, the kubelet's cgroupfs layout for a best-effort pod.
    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }
}

/// A running pod sandbox: its id and the config it was made with (CreateContainer needs
/// it again).
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    config: api::PodSandboxConfig,
}

/// See the [module docs](self).
pub struct Cri<'a> {
    ctrd: &'a Containerd,
}

impl<'a> Cri<'a> {
    pub(crate) fn new(ctrd: &'a Containerd) -> Self {
        Self { ctrd }
    }

    /// Runs one call against the runtime service on a fresh connection; panics with
    /// `what` and the status if it fails.
    fn runtime<T, F, Fut>(&self, what: &str, call: F) -> T
    where
        T: Send,
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut + Send,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        self.try_call(|channel| call(RuntimeServiceClient::new(channel)))
            .unwrap_or_else(|e| panic!("CRI {what}: {e:#}"))
    }

    /// Runs `call` on a fresh connection, on a thread with its own runtime.
    fn try_call<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        T: Send,
        F: FnOnce(Channel) -> Fut + Send,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        let socket = self.ctrd.socket().to_path_buf();
        let task = async move {
            let channel =
                tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&socket))
                    .await
                    .context("connect timed out")?
                    .context("connect")?;
            let response = tokio::time::timeout(CALL_TIMEOUT, call(channel))
                .await
                .context("timed out")??;
            Ok(response.into_inner())
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("build a runtime for a CRI call")?
                        .block_on(task)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Waits (at most 20 s) until CRI's image service knows `image` (it learns of
    /// images imported with ctr from containerd's events).
    pub fn wait_for_image(&self, image: &str) {
        let deadline = Instant::now() + IMAGE_TIMEOUT;
        loop {
            let request = api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let status = self.try_call(|channel| async move {
                ImageServiceClient::new(channel).image_status(request).await
            });
            match status {
                Ok(status) if status.image.is_some() => return,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(_) => panic!("CRI does not know image {image} after {IMAGE_TIMEOUT:?}"),
                Err(e) => panic!("CRI ImageStatus {image}: {e:#}"),
            }
        }
    }

    /// RunPodSandbox, as kubelet does for a host-network pod.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod {
        let cgroup_parent = spec.cgroup_parent();
        self.ctrd.note_cgroup(&cgroup_parent);
        let log_directory = self
            .ctrd
            .dir()
            .join("pods")
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        let node = api::NamespaceMode::Node as i32;
        let pod = api::NamespaceMode::Pod as i32;
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: spec.labels.iter().cloned().collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: node,
                        pid: pod,
                        ipc: pod,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .runtime("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(request).await
            })
            .pod_sandbox_id;
        self.ctrd
            .note_cgroup(&format!("{}/{id}", spec.cgroup_parent()));
        Pod {
            id,
            spec: spec.clone(),
            config,
        }
    }

    /// CreateContainer `name` in `pod` from `image`, running `command`.
    pub fn create_container(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> String {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: name.to_owned(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                command: command.iter().map(|&arg| arg.to_owned()).collect(),
                log_path: format!("{name}/0.log"),
                linux: Some(api::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .runtime("CreateContainer", |mut c| async move {
                c.create_container(request).await
            })
            .container_id;
        self.ctrd
            .note_cgroup(&format!("{}/{id}", pod.spec.cgroup_parent()));
        id
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) {
        let request = api::StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.runtime("StartContainer", |mut c| async move {
            c.start_container(request).await
        });
    }

    /// StopContainer (SIGTERM, SIGKILL 2 s later).
    pub fn stop_container(&self, id: &str) {
        let request = api::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: STOP_TIMEOUT_SECONDS,
        };
        self.runtime("StopContainer", |mut c| async move {
            c.stop_container(request).await
        });
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) {
        let request = api::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.runtime("RemoveContainer", |mut c| async move {
            c.remove_container(request).await
        });
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, pod: &Pod) {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        self.runtime("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(request).await
        });
    }

    /// Kubelet's teardown of a pod with one container: StopContainer, RemoveContainer,
    /// StopPodSandbox, RemovePodSandbox.
    pub fn tear_down(&self, pod: &Pod, id: &str) {
        self.stop_container(id);
        self.remove_container(id);
        self.stop_pod(pod);
        self.remove_pod(pod);
    }

    /// RemovePodSandbox (stopping it first, as kubelet always does).
    pub fn remove_pod(&self, pod: &Pod) {
        self.stop_pod(pod);
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        self.runtime("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(request).await
        });
    }

    /// The host pid of a container's init process (from ContainerStatus's verbose info).
    pub fn container_pid(&self, id: &str) -> u32 {
        let request = api::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let status = self.runtime("ContainerStatus", |mut c| async move {
            c.container_status(request).await
        });
        pid_from_info(&status.info).unwrap_or_else(|| panic!("no pid for container {id}"))
    }

    /// The host pid of a sandbox's (pause) process (from PodSandboxStatus's verbose info).
    pub fn pod_pid(&self, pod: &Pod) -> u32 {
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: true,
        };
        let status = self.runtime("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(request).await
        });
        pid_from_info(&status.info).unwrap_or_else(|| panic!("no pid for sandbox {}", pod.id))
    }

    /// Stops and removes every pod sandbox and container CRI has (the fixture's drop);
    /// says what went wrong.
    pub(crate) fn remove_everything(&self) -> Vec<String> {
        let mut errors = Vec::new();
        // Right after a containerd restart CRI answers "server is not initialized yet"
        // while it recovers its pods (seconds with hundreds of them): wait for it.
        let deadline = Instant::now() + CRI_RECOVERY_TIMEOUT;
        let pods = loop {
            let pods = self.try_call(|channel| async move {
                RuntimeServiceClient::new(channel)
                    .list_pod_sandbox(api::ListPodSandboxRequest::default())
                    .await
            });
            match pods {
                Err(e)
                    if format!("{e:#}").contains("not initialized")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other,
            }
        };
        let pods = match pods {
            Ok(list) => list.items,
            Err(e) => return vec![format!("CRI ListPodSandbox: {e:#}")],
        };
        for pod in pods {
            let id = pod.id;
            let stop = api::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            let remove = api::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            let result = self
                .try_call(|channel| async move {
                    RuntimeServiceClient::new(channel)
                        .stop_pod_sandbox(stop)
                        .await
                })
                .and_then(|_| {
                    self.try_call(|channel| async move {
                        RuntimeServiceClient::new(channel)
                            .remove_pod_sandbox(remove)
                            .await
                    })
                });
            if let Err(e) = result {
                errors.push(format!("remove pod sandbox {id} through CRI: {e:#}"));
            }
        }
        errors
    }
}

/// The `pid` in the JSON of a verbose status's `info["info"]`.
fn pid_from_info(info: &std::collections::HashMap<String, String>) -> Option<u32> {
    let info: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    info.get("pid")?.as_u64()?.try_into().ok()
}

/// The files the first process of container `id` in `pod` shows up in: its cgroup's
/// `cgroup.procs` in each hierarchy runc may use on this host (v2, hybrid's unified, v1
/// memory).
pub fn procs_files(pod: &Pod, id: &str) -> Vec<PathBuf> {
    let cgroup = format!("{}/{id}", pod.spec.cgroup_parent());
    [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/memory",
    ]
    .iter()
    .map(|root| {
        Path::new(root)
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs")
    })
    .collect()
}

/// The first pid to appear in any of `files`, looked for every `poll` for at most `within`,
/// and when it was seen.
pub fn first_pid(files: &[PathBuf], within: Duration, poll: Duration) -> Option<(u32, Instant)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for f in files {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                return Some((pid, Instant::now()));
            }
        }
        std::thread::sleep(poll);
    }
    None
}
