//! Full lists of containerd's namespaces, containers and tasks, and the
//! conversion of its container records into pidmap's.

use std::{collections::HashMap, time::Duration};

use containerd_client::{
    services::v1::{
        containers_client::ContainersClient, namespaces_client::NamespacesClient,
        tasks_client::TasksClient, Container as CtrdContainer, GetContainerRequest,
        ListContainersRequest, ListNamespacesRequest, ListPidsRequest, ListTasksRequest,
    },
    tonic::{transport::Channel, Request, Status},
    types::v1::Process,
};
use prost::Message as _;

use super::spec::{cgroup_dir, parse_spec};
use crate::{
    cgroup::{CgroupFs, Hierarchy},
    state::container::{pod_identity, Container, ContainerKey, TaskStatus},
    state::containers::Snapshot,
};

/// Longest a single list call may take before the connection is deemed
/// unhealthy.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A list that failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
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

/// runc's per-process details in `ListPids` answers.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
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
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ListError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(source)) => Err(ListError::Call { call: name, source }),
        Err(_) => Err(ListError::Timeout { call: name }),
    }
}

/// Lists every namespace, its containers and their tasks (with exec pids).
pub async fn list_all(channel: &Channel, fs: &CgroupFs) -> Result<Snapshot, ListError> {
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
        containers.extend(list_namespace(channel, fs, ns).await?);
    }
    Ok(Snapshot {
        namespaces,
        containers,
    })
}

async fn list_namespace(
    channel: &Channel,
    fs: &CgroupFs,
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
        let mut c = convert(ns, record);
        if let Some(task) = tasks.get(&c.key.id) {
            apply_task(&mut c, task);
            if c.status == TaskStatus::Running || c.status == TaskStatus::Paused {
                // A task may exit between the two calls: then it has no pids.
                let pids = call(
                    "tasks list-pids",
                    tasks_client.list_pids(with_ns(
                        ListPidsRequest {
                            container_id: c.key.id.clone(),
                        },
                        ns,
                    )),
                )
                .await;
                if let Ok(pids) = pids {
                    for p in pids.processes {
                        let exec_id = p
                            .info
                            .and_then(|any| ProcessDetails::decode(any.value.as_slice()).ok())
                            .map(|d| d.exec_id)
                            .filter(|id| !id.is_empty());
                        if let Some(exec_id) = exec_id {
                            c.exec_pids.insert(exec_id, p.pid);
                        }
                    }
                }
            }
        }
        resolve_cgroup_ids(&mut c, fs);
        out.push(c);
    }
    Ok(out)
}

/// Fetches one container's metadata.
pub async fn get_container(
    channel: &Channel,
    key: &ContainerKey,
) -> Result<Option<Container>, ListError> {
    let req = with_ns(GetContainerRequest { id: key.id.clone() }, &key.namespace);
    match tokio::time::timeout(
        CALL_TIMEOUT,
        ContainersClient::new(channel.clone()).get(req),
    )
    .await
    {
        Ok(Ok(resp)) => Ok(resp
            .into_inner()
            .container
            .map(|r| convert(&key.namespace, r))),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Ok(Err(source)) => Err(ListError::Call {
            call: "containers get",
            source,
        }),
        Err(_) => Err(ListError::Timeout {
            call: "containers get",
        }),
    }
}

/// containerd's record → pidmap's container (task state not included).
pub fn convert(namespace: &str, r: CtrdContainer) -> Container {
    let key = ContainerKey::new(namespace, r.id);
    let labels = r.labels.into_iter().collect();
    let spec = r.spec.map(|any| parse_spec(&any.value)).unwrap_or_default();
    let pod = pod_identity(&key, &labels, &spec.annotations);
    let mut c = Container::placeholder(key);
    c.image = r.image;
    c.labels = labels;
    c.runtime = r.runtime.map(|rt| rt.name).unwrap_or_default();
    c.created_at = r.created_at.map(|t| t.seconds);
    c.cgroup_path = spec.cgroups_path.as_deref().and_then(cgroup_dir);
    c.pod = pod;
    c
}

/// Copies a listed task's state into `c`.
pub fn apply_task(c: &mut Container, task: &Process) {
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
pub fn resolve_cgroup_ids(c: &mut Container, fs: &CgroupFs) {
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
