//! Full lists of containerd's namespaces, containers and tasks, and the
//! conversion of its container records into pidmap's. Docker's containers
//! (namespace `moby`) get their image name and labels from Docker itself
//! ([`Docker`]), which containerd does not have.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use containerd_client::{
    services::v1::{
        Container as CtrdContainer, GetContainerRequest, ListContainersRequest,
        ListNamespacesRequest, ListTasksRequest, containers_client::ContainersClient,
        namespaces_client::NamespacesClient, tasks_client::TasksClient,
    },
    tonic::{Request, Status, transport::Channel},
    types::v1::Process,
};

use super::spec::{cgroup_dir, parse_spec};
use crate::{
    cgroup::{CgroupFs, Hierarchy},
    runtime::docker::{Docker, DockerInfo},
    state::container::{Container, ContainerKey, TaskStatus, namespaces, pod_identity},
    state::containers::Snapshot,
};

/// Longest a single list call may take before the connection is deemed
/// unhealthy.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A list that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    /// containerd answered with an error.
    #[error("containerd {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: Status,
    },
    /// containerd did not answer in time.
    #[error("containerd {call} timed out after {CALL_TIMEOUT:?}")]
    Timeout { call: &'static str },
}

fn with_ns<T>(msg: T, namespace: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(value) = namespace.parse() {
        req.metadata_mut().insert("containerd-namespace", value);
    }
    req
}

async fn call<T>(
    name: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ListError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(source)) => Err(ListError::Call { call: name, source }),
        Err(_) => Err(ListError::Timeout { call: name }),
    }
}

/// Lists every namespace, its containers and their tasks: three calls per namespace,
/// whatever the number of containers (a call per container, such as `ListPids`, costs a
/// round trip through the container's shim to runc, ~9 ms each).
pub(crate) async fn list_all(
    channel: &Channel,
    fs: &CgroupFs,
    docker: &Docker,
) -> Result<Snapshot, ListError> {
    let namespaces = call(
        "namespaces list",
        NamespacesClient::new(channel.clone()).list(ListNamespacesRequest::default()),
    )
    .await?
    .namespaces
    .into_iter()
    .map(|n| n.name)
    .collect::<Vec<_>>();
    let mut containers = Vec::new();
    for ns in &namespaces {
        containers.extend(list_namespace(channel, fs, docker, ns).await?);
    }
    Ok(Snapshot {
        namespaces,
        containers,
    })
}

async fn list_namespace(
    channel: &Channel,
    fs: &CgroupFs,
    docker: &Docker,
    ns: &str,
) -> Result<Vec<Container>, ListError> {
    let records = call(
        "containers list",
        ContainersClient::new(channel.clone()).list(with_ns(ListContainersRequest::default(), ns)),
    )
    .await?
    .containers;
    let mut tasks_client = TasksClient::new(channel.clone());
    let tasks: HashMap<String, Process> = call(
        "tasks list",
        tasks_client.list(with_ns(ListTasksRequest::default(), ns)),
    )
    .await?
    .tasks
    .into_iter()
    // containerd 1.6 fills only `id` (the container id) in task lists.
    .map(|t| {
        let id = if t.container_id.is_empty() {
            t.id.clone()
        } else {
            t.container_id.clone()
        };
        (id, t)
    })
    .collect();
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let from_docker = docker_info(docker, ns, &record.id).await;
        let mut c = convert(ns, record, from_docker.as_deref());
        if let Some(task) = tasks.get(&c.key.id) {
            apply_task(&mut c, task);
        }
        resolve_cgroup_ids(&mut c, fs);
        out.push(c);
    }
    Ok(out)
}

/// Docker's metadata for container `id` of namespace `ns`, if it is Docker's
/// (and Docker answers).
async fn docker_info(docker: &Docker, ns: &str, id: &str) -> Option<std::sync::Arc<DockerInfo>> {
    if ns == namespaces::DOCKER {
        docker.info(id).await
    } else {
        None
    }
}

/// Fetches one container's metadata.
pub(crate) async fn get_container(
    channel: &Channel,
    docker: &Docker,
    key: &ContainerKey,
) -> Result<Option<Container>, ListError> {
    let req = with_ns(GetContainerRequest { id: key.id.clone() }, &key.namespace);
    let record = match tokio::time::timeout(
        CALL_TIMEOUT,
        ContainersClient::new(channel.clone()).get(req),
    )
    .await
    {
        Ok(Ok(resp)) => resp.into_inner().container,
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => None,
        Ok(Err(source)) => {
            return Err(ListError::Call {
                call: "containers get",
                source,
            });
        }
        Err(_) => {
            return Err(ListError::Timeout {
                call: "containers get",
            });
        }
    };
    let Some(record) = record else {
        return Ok(None);
    };
    let from_docker = docker_info(docker, &key.namespace, &record.id).await;
    Ok(Some(convert(
        &key.namespace,
        record,
        from_docker.as_deref(),
    )))
}

/// containerd's record → pidmap's container (task state not included), with
/// what Docker knows of it: its image when containerd has none, and its
/// labels (containerd's win where both have a key), from which its pod
/// identity is read too (cri-dockerd's pods carry kubelet's labels there).
pub(crate) fn convert(namespace: &str, r: CtrdContainer, docker: Option<&DockerInfo>) -> Container {
    let key = ContainerKey::new(namespace, r.id);
    let mut labels: BTreeMap<String, String> = r.labels.into_iter().collect();
    let mut image = r.image;
    if let Some(docker) = docker {
        for (k, v) in &docker.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if image.is_empty() {
            image.clone_from(&docker.image);
        }
    }
    let spec = r.spec.map(|any| parse_spec(&any.value)).unwrap_or_default();
    let pod = pod_identity(&key, &labels, &spec.annotations);
    let mut c = Container::placeholder(key);
    c.image = image;
    c.labels = labels;
    c.runtime = r.runtime.map(|rt| rt.name).unwrap_or_default();
    c.created_at = r.created_at.map(|t| t.seconds);
    c.cgroup_path = spec.cgroups_path.as_deref().and_then(cgroup_dir);
    c.pod = pod;
    c
}

/// Copies a listed task's state into `c`.
pub(crate) fn apply_task(c: &mut Container, task: &Process) {
    // containerd.v1.types.Status: 1 created, 2 running, 3 stopped,
    // 4 paused, 5 pausing.
    c.status = match task.status {
        1 => TaskStatus::Created,
        2 => TaskStatus::Running,
        3 => TaskStatus::Stopped,
        4 | 5 => TaskStatus::Paused,
        _ => TaskStatus::Unknown,
    };
    if task.pid != 0 {
        c.task_pid = Some(task.pid);
    }
    if c.status == TaskStatus::Stopped {
        c.exit_code = Some(task.exit_status);
        c.exited_at = task.exited_at.as_ref().map(|t| t.seconds);
    }
}

/// Looks up the ids of the container's cgroup directory in each hierarchy
/// (they exist once the task is created).
pub(crate) fn resolve_cgroup_ids(c: &mut Container, fs: &CgroupFs) {
    let Some(path) = c.cgroup_path.as_deref() else {
        return;
    };
    if c.cgroup_v2.is_none() && fs.root(Hierarchy::V2).is_some() {
        c.cgroup_v2 = fs.id_of(Hierarchy::V2, path).ok();
    }
    if c.cgroup_v1_memory.is_none() && fs.root(Hierarchy::V1Memory).is_some() {
        c.cgroup_v1_memory = fs.id_of(Hierarchy::V1Memory, path).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::container::labels;

    fn moby_record(labels: &[(&str, &str)]) -> CtrdContainer {
        CtrdContainer {
            id: "3971c08dfacd".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn docker_fills_in_the_image_and_labels_containerd_lacks() {
        let record = moby_record(&[("com.docker/engine.bundle.path", "/run/x")]);
        let docker = DockerInfo {
            image: "nginx:1.27".into(),
            labels: [
                ("team", "infra"),
                ("com.docker/engine.bundle.path", "docker's"),
                // cri-dockerd's pods carry kubelet's labels on Docker's side.
                (labels::POD_NAME, "web-0"),
                (labels::CONTAINER_NAME, "nginx"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        };
        let c = convert(namespaces::DOCKER, record.clone(), Some(&docker));
        assert_eq!(c.image, "nginx:1.27");
        assert_eq!(c.labels.get("team").map(String::as_str), Some("infra"));
        assert_eq!(
            c.labels
                .get("com.docker/engine.bundle.path")
                .map(String::as_str),
            Some("/run/x"),
            "containerd's label wins"
        );
        assert_eq!(c.pod.pod_name.as_deref(), Some("web-0"));
        assert_eq!(c.pod.container_name.as_deref(), Some("nginx"));

        let without = convert(namespaces::DOCKER, record, None);
        assert_eq!(without.image, "");
        assert_eq!(without.labels.len(), 1);
        assert!(without.pod.is_empty());
    }

    #[test]
    fn containerds_own_image_is_kept() {
        let mut record = moby_record(&[]);
        record.image = "registry.test/app:1".into();
        let docker = DockerInfo {
            image: "app:1".into(),
            labels: BTreeMap::new(),
        };
        let c = convert(namespaces::DOCKER, record, Some(&docker));
        assert_eq!(c.image, "registry.test/app:1");
    }
}
