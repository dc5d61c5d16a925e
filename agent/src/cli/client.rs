//! The query subcommands: `pidmap resolve|ls|ps|watch|whoami|status`.

use std::{collections::BTreeMap, path::Path, process::ExitCode};

use serde_json::{json, Value};
use tonic::{transport::Channel, Code, Status};

use crate::api::{
    convert::{source_name, state_name},
    proto::{self, pidmap_client::PidmapClient},
};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people (fits 80 columns).
    Table,
    /// One JSON object per line, flat keys, always present (null if unknown).
    Json,
}

/// Exit status: every pid answered running/exited/pending.
pub const EXIT_OK: u8 = 0;
/// The agent could not be reached or failed.
pub const EXIT_UNREACHABLE: u8 = 1;
/// A usage error (bad pid, bad arguments).
pub const EXIT_USAGE: u8 = 2;
/// Some pid is unknown to the agent.
pub const EXIT_UNKNOWN: u8 = 3;

/// A failure to report and the exit status it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn from_status(status: &Status, socket: &Path) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::NotFound => Self {
                code: EXIT_USAGE,
                message: status.message().to_owned(),
            },
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => Self {
                code: EXIT_UNREACHABLE,
                message: format!(
                    "cannot talk to the pidmap agent at {}: {} (is `pidmap agent` running, and is this the socket it serves? set --socket or PIDMAP_SOCKET)",
                    socket.display(),
                    status.message()
                ),
            },
            _ => Self {
                code: EXIT_UNREACHABLE,
                message: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }
}

/// Connects to the agent's Unix socket.
pub async fn connect(socket: &Path) -> Result<PidmapClient<Channel>, Failure> {
    channel(socket).await.map(PidmapClient::new)
}

/// A gRPC channel over the agent's Unix socket (for any of its services:
/// pidmap, health, reflection).
pub async fn channel(socket: &Path) -> Result<Channel, Failure> {
    let path = socket.to_path_buf();
    let endpoint = tonic::transport::Endpoint::try_from("http://[::]").map_err(|e| Failure {
        code: EXIT_UNREACHABLE,
        message: e.to_string(),
    })?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| Failure {
            code: EXIT_UNREACHABLE,
            message: format!(
                "cannot connect to the pidmap agent at {}: {} (is `pidmap agent` running? does --socket / PIDMAP_SOCKET point at its socket? are you root or in the socket's group?)",
                socket.display(),
                crate::error::chain(&e)
            ),
        })?;
    Ok(channel)
}

/// The flat JSON object of a record (every key present).
pub fn record_json(r: &proto::ProcessRecord) -> Value {
    let c = r.container.as_ref();
    let labels: BTreeMap<&str, &str> = c
        .map(|c| {
            c.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "pid": r.pid,
        "start_time": r.start_time,
        "state": state_name(r.state),
        "source": source_name(r.source),
        "container_id": c.map(|c| c.id.clone()).or_else(|| r.path_container_id.clone()),
        "runtime_namespace": c.map(|c| c.runtime_namespace.clone()),
        "image": c.map(|c| c.image.clone()).filter(|i| !i.is_empty()),
        "pod_name": c.and_then(|c| c.pod_name.clone()),
        "pod_namespace": c.and_then(|c| c.pod_namespace.clone()),
        "pod_uid": c.and_then(|c| c.pod_uid.clone()).or_else(|| r.path_pod_uid.clone()),
        "container_name": c.and_then(|c| c.container_name.clone()),
        "cgroup_id": r.cgroup_id,
        "cgroup_hierarchy": r.cgroup_hierarchy,
        "cgroup_path": r.cgroup_path,
        "ppid": r.ppid,
        "comm": r.comm,
        "labels": labels,
    })
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn record_row(r: &proto::ProcessRecord) -> String {
    let c = r.container.as_ref();
    let container = c
        .map(|c| c.id.clone())
        .or_else(|| r.path_container_id.clone())
        .unwrap_or_else(|| "-".into());
    let pod = c
        .and_then(|c| {
            Some(format!(
                "{}/{}",
                c.pod_namespace.as_deref()?,
                c.pod_name.as_deref()?
            ))
        })
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<7} {:<8} {:<11} {:<12} {:<20} {}",
        r.pid,
        state_name(r.state).unwrap_or("-"),
        source_name(r.source).unwrap_or("-"),
        short(&container, 12),
        short(&pod, 20),
        short(r.comm.as_deref().unwrap_or("-"), 15)
    )
}

const RECORD_HEADER: &str = "PID     STATE    SOURCE      CONTAINER    POD                  COMM";

fn print_records(records: &[proto::ProcessRecord], output: Output) {
    match output {
        Output::Json => records.iter().for_each(|r| println!("{}", record_json(r))),
        Output::Table => {
            println!("{RECORD_HEADER}");
            records.iter().for_each(|r| println!("{}", record_row(r)));
        }
    }
}

/// `pidmap resolve PID...`
pub async fn resolve(socket: &Path, pids: &[i64], output: Output) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let requests = pids
        .iter()
        .map(|&pid| proto::ResolveRequest {
            pid,
            start_time: None,
        })
        .collect();
    let records = client
        .resolve_batch(proto::ResolveBatchRequest { requests })
        .await
        .map_err(|s| Failure::from_status(&s, socket))?
        .into_inner()
        .records;
    print_records(&records, output);
    let unknown = records
        .iter()
        .any(|r| r.state == proto::ProcessState::Unknown as i32);
    Ok(if unknown { EXIT_UNKNOWN } else { EXIT_OK })
}

/// `pidmap whoami`
pub async fn whoami(socket: &Path, output: Output) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let r = client
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .map_err(|s| Failure::from_status(&s, socket))?
        .into_inner();
    print_records(std::slice::from_ref(&r), output);
    Ok(if r.state == proto::ProcessState::Unknown as i32 {
        EXIT_UNKNOWN
    } else {
        EXIT_OK
    })
}

fn container_json(c: &proto::Container) -> Value {
    json!({
        "container_id": c.id,
        "runtime_namespace": c.runtime_namespace,
        "image": (!c.image.is_empty()).then_some(&c.image),
        "status": c.status,
        "task_pid": c.task_pid,
        "exit_code": c.exit_code,
        "pod_name": c.pod_name,
        "pod_namespace": c.pod_namespace,
        "pod_uid": c.pod_uid,
        "container_name": c.container_name,
        "sandbox_id": c.sandbox_id,
        "is_sandbox": c.is_sandbox,
        "cgroup_id": c.cgroup_id,
        "cgroup_hierarchy": c.cgroup_hierarchy,
        "cgroup_path": c.cgroup_path,
        "runtime": (!c.runtime.is_empty()).then_some(&c.runtime),
        "source": source_name(c.source),
        "labels": c.labels.iter().collect::<BTreeMap<_, _>>(),
    })
}

const CONTAINER_HEADER: &str = "NAMESPACE  CONTAINER    STATUS   PID     IMAGE              POD";

fn container_row(c: &proto::Container) -> String {
    let pod = match (&c.pod_namespace, &c.pod_name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => "-".into(),
    };
    format!(
        "{:<10} {:<12} {:<8} {:<7} {:<18} {}",
        short(&c.runtime_namespace, 10),
        short(&c.id, 12),
        short(&c.status, 8),
        c.task_pid.map_or_else(|| "-".into(), |p| p.to_string()),
        short(if c.image.is_empty() { "-" } else { &c.image }, 18),
        short(&pod, 18)
    )
}

/// `pidmap ls`
pub async fn ls(
    socket: &Path,
    filter: proto::ListContainersRequest,
    output: Output,
) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let containers = client
        .list_containers(filter)
        .await
        .map_err(|s| Failure::from_status(&s, socket))?
        .into_inner()
        .containers;
    match output {
        Output::Json => containers
            .iter()
            .for_each(|c| println!("{}", container_json(c))),
        Output::Table => {
            println!("{CONTAINER_HEADER}");
            containers
                .iter()
                .for_each(|c| println!("{}", container_row(c)));
        }
    }
    Ok(EXIT_OK)
}

/// `pidmap ps CONTAINER`
pub async fn ps(
    socket: &Path,
    container_id: String,
    runtime_namespace: Option<String>,
    output: Output,
) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let processes = client
        .list_processes(proto::ListProcessesRequest {
            container_id,
            runtime_namespace,
        })
        .await
        .map_err(|s| Failure::from_status(&s, socket))?
        .into_inner()
        .processes;
    print_records(&processes, output);
    Ok(EXIT_OK)
}

/// `pidmap watch`: prints the snapshot, then changes as they happen.
pub async fn watch(socket: &Path, output: Output) -> Result<u8, Failure> {
    use proto::watch_event::Event;
    let mut client = connect(socket).await?;
    let mut stream = client
        .watch(proto::WatchRequest {})
        .await
        .map_err(|s| Failure::from_status(&s, socket))?
        .into_inner();
    if output == Output::Table {
        println!("  {RECORD_HEADER}");
        println!("  (= in the snapshot, ~ changed; C = container: NAMESPACE CONTAINER STATUS PID IMAGE POD)");
    }
    loop {
        let msg = match stream.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(EXIT_OK),
            Err(s) => return Err(Failure::from_status(&s, socket)),
        };
        let line = match (msg.event, output) {
            (Some(Event::Process(r)), Output::Table) => format!("= {}", record_row(&r)),
            (Some(Event::ProcessChanged(r)), Output::Table) => {
                format!("~ {}", record_row(&r))
            }
            (Some(Event::Container(c)), Output::Table) => {
                format!("C {}", container_row(&c))
            }
            (Some(Event::ContainerChanged(c)), Output::Table) => {
                format!("C {}", container_row(&c))
            }
            (Some(Event::ContainerDeleted(c)), Output::Table) => {
                format!("C {}", container_row(&c))
            }
            (Some(Event::SnapshotDone(_)), Output::Table) => {
                "--- snapshot complete; following changes ---".into()
            }
            (Some(Event::Process(r)), Output::Json) => {
                json!({"event": "process", "record": record_json(&r)}).to_string()
            }
            (Some(Event::ProcessChanged(r)), Output::Json) => {
                json!({"event": "process_changed", "record": record_json(&r)}).to_string()
            }
            (Some(Event::Container(c)), Output::Json) => {
                json!({"event": "container", "container": container_json(&c)}).to_string()
            }
            (Some(Event::ContainerChanged(c)), Output::Json) => {
                json!({"event": "container_changed", "container": container_json(&c)}).to_string()
            }
            (Some(Event::ContainerDeleted(c)), Output::Json) => {
                json!({"event": "container_deleted", "container": container_json(&c)}).to_string()
            }
            (Some(Event::SnapshotDone(_)), Output::Json) => {
                json!({"event": "snapshot_done"}).to_string()
            }
            (None, _) => continue,
        };
        println!("{line}");
    }
}

/// `pidmap status`
pub async fn status(socket: &Path, output: Output) -> Result<u8, Failure> {
    let mut client = connect(socket).await?;
    let s = client
        .status(proto::StatusRequest {})
        .await
        .map_err(|st| Failure::from_status(&st, socket))?
        .into_inner();
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "ready": s.ready,
                "processes": s.processes,
                "exited_processes": s.exited_processes,
                "containers": s.containers,
                "events_received": s.events_received,
                "events_lost": s.events_lost,
                "containerd_connected": s.containerd_connected,
                "containerd_synced": s.containerd_synced,
                "containerd_reconnects": s.containerd_reconnects,
                "rescans": s.rescans,
                "version": s.version,
            })
        ),
        Output::Table => {
            println!("ready:                 {}", s.ready);
            println!(
                "processes:             {} live, {} exited",
                s.processes, s.exited_processes
            );
            println!("containers:            {}", s.containers);
            println!(
                "events received/lost:  {} / {}",
                s.events_received, s.events_lost
            );
            println!(
                "containerd connected:  {} ({} reconnects)",
                s.containerd_connected, s.containerd_reconnects
            );
            println!("containerd synced:     {}", s.containerd_synced);
            println!("/proc rescans:         {}", s.rescans);
            println!("version:               {}", s.version);
        }
    }
    Ok(if s.ready { EXIT_OK } else { EXIT_UNREACHABLE })
}

/// Runs an async query on a small runtime and maps the result to an exit
/// status, printing failures to stderr.
pub fn run_query<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<u8, Failure>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pidmap: error: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match rt.block_on(fut) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("pidmap: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
