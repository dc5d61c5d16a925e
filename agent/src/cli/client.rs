//! The query subcommands: `pidmap resolve|ls|ps|watch|whoami|status`.
//! Connecting and the calls are the `pidmap-client` crate's; printing is
//! this module's, in the JSON shape of [`crate::api::json`].

use std::{path::Path, process::ExitCode};

use pidmap_client::{Client, Settings};
use tonic::{Code, Status, transport::Channel};

use crate::api::{
    convert::{source_name, state_name},
    json,
    proto::{self, pidmap_client::PidmapClient},
};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people (fits 80 columns).
    Table,
    /// One JSON object per line, flat keys, always present (null if unknown).
    Json,
    /// One JSON object per line of OpenTelemetry resource attributes
    /// (container.id, k8s.pod.name, process.pid, …); for resolve, ps,
    /// whoami and ls.
    Otel,
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
async fn client(socket: &Path) -> Result<Client, Failure> {
    Client::connect(&Settings::new(socket))
        .await
        .map_err(|e| unreachable(&e))
}

/// A gRPC channel over the agent's Unix socket (for any of its services:
/// pidmap, health, reflection).
pub async fn channel(socket: &Path) -> Result<Channel, Failure> {
    Settings::new(socket)
        .channel()
        .await
        .map_err(|e| unreachable(&e))
}

/// Connects as the CLI does, with the generated gRPC client itself (for
/// tests and benches that call it directly).
pub async fn connect(socket: &Path) -> Result<PidmapClient<Channel>, Failure> {
    Ok(client(socket).await?.into_grpc())
}

fn unreachable(e: &pidmap_client::ConnectError) -> Failure {
    let error = crate::util::chain(e);
    Failure {
        code: EXIT_UNREACHABLE,
        message: if e.may_be_unreachable() {
            format!(
                "{error} (is `pidmap agent` running? does --socket / PIDMAP_SOCKET point at its socket? are you root or in the socket's group?)"
            )
        } else {
            error
        },
    }
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
        Output::Json => records.iter().for_each(|r| println!("{}", json::record(r))),
        Output::Otel => records
            .iter()
            .for_each(|r| println!("{}", json::otel_record(r))),
        Output::Table => {
            println!("{RECORD_HEADER}");
            records.iter().for_each(|r| println!("{}", record_row(r)));
        }
    }
}

/// `pidmap resolve PID...`
pub async fn resolve(socket: &Path, pids: &[i64], output: Output) -> Result<u8, Failure> {
    let mut client = client(socket).await?;
    let records = client
        .resolve_batch(pids.iter().map(|&pid| (pid, None)))
        .await
        .map_err(|s| Failure::from_status(&s, socket))?;
    print_records(&records, output);
    let unknown = records
        .iter()
        .any(|r| r.state == proto::ProcessState::Unknown as i32);
    Ok(if unknown { EXIT_UNKNOWN } else { EXIT_OK })
}

/// `pidmap whoami`
pub async fn whoami(socket: &Path, output: Output) -> Result<u8, Failure> {
    let mut client = client(socket).await?;
    let r = client
        .who_am_i()
        .await
        .map_err(|s| Failure::from_status(&s, socket))?;
    print_records(std::slice::from_ref(&r), output);
    Ok(if r.state == proto::ProcessState::Unknown as i32 {
        EXIT_UNKNOWN
    } else {
        EXIT_OK
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
    let mut client = client(socket).await?;
    let containers = client
        .list_containers(filter)
        .await
        .map_err(|s| Failure::from_status(&s, socket))?;
    match output {
        Output::Json => containers
            .iter()
            .for_each(|c| println!("{}", json::container(c))),
        Output::Otel => containers
            .iter()
            .for_each(|c| println!("{}", json::otel_container(c))),
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
    let mut client = client(socket).await?;
    let processes = client
        .list_processes(container_id, runtime_namespace)
        .await
        .map_err(|s| Failure::from_status(&s, socket))?;
    print_records(&processes, output);
    Ok(EXIT_OK)
}

/// `pidmap watch`: prints the snapshot, then changes as they happen.
pub async fn watch(socket: &Path, output: Output) -> Result<u8, Failure> {
    use proto::watch_event::Event;
    refuse_otel("watch", output)?;
    let mut client = client(socket).await?;
    let mut stream = client
        .watch()
        .await
        .map_err(|s| Failure::from_status(&s, socket))?;
    if output == Output::Table {
        println!("  {RECORD_HEADER}");
        println!(
            "  (= in the snapshot, ~ changed; C = container: NAMESPACE CONTAINER STATUS PID IMAGE POD)"
        );
    }
    loop {
        let event = match stream.message().await {
            Ok(Some(proto::WatchEvent { event: Some(event) })) => event,
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(EXIT_OK),
            Err(s) => return Err(Failure::from_status(&s, socket)),
        };
        let line = match (&event, output) {
            (_, Output::Json | Output::Otel) => json::watch_event(&event).to_string(),
            (Event::Process(r), Output::Table) => format!("= {}", record_row(r)),
            (Event::ProcessChanged(r), Output::Table) => format!("~ {}", record_row(r)),
            (
                Event::Container(c) | Event::ContainerChanged(c) | Event::ContainerDeleted(c),
                Output::Table,
            ) => format!("C {}", container_row(c)),
            (Event::SnapshotDone(_), Output::Table) => {
                "--- snapshot complete; following changes ---".into()
            }
        };
        println!("{line}");
    }
}

/// `pidmap status`
pub async fn status(socket: &Path, output: Output) -> Result<u8, Failure> {
    refuse_otel("status", output)?;
    let mut client = client(socket).await?;
    let s = client
        .status()
        .await
        .map_err(|st| Failure::from_status(&st, socket))?;
    match output {
        Output::Json | Output::Otel => println!("{}", json::status(&s)),
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
            println!(
                "NRI:                   {}{}",
                match (s.nri_connected, s.nri_synced) {
                    (_, true) => "synchronized",
                    (true, false) => "registered, synchronizing",
                    (false, _) => "not connected",
                },
                if s.nri_runtime.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.nri_runtime)
                }
            );
            println!(
                "/proc rescans:         {}{}",
                s.rescans,
                if s.repairing {
                    " (repairing lost events now)"
                } else {
                    ""
                }
            );
            println!("catch-up timeouts:     {}", s.catch_up_timeouts);
            println!("version:               {}", s.version);
        }
    }
    Ok(if s.ready { EXIT_OK } else { EXIT_UNREACHABLE })
}

/// `-o otel` names resources: records and containers, not events or
/// counters.
fn refuse_otel(command: &str, output: Output) -> Result<(), Failure> {
    if output == Output::Otel {
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!(
                "`pidmap {command}` has no -o otel: it applies to resolve, ps, whoami and ls"
            ),
        });
    }
    Ok(())
}

/// Runs an async query on a small runtime and maps the result to an exit
/// status, printing failures to stderr.
pub fn run_query<F>(fut: F) -> ExitCode
where
    F: Future<Output = Result<u8, Failure>>,
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
