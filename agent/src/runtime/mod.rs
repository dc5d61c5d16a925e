//! Container runtimes the agent correlates processes with.
//!
//! For now the agent only watches whether containerd's socket exists: on a
//! machine without containerd it says so once, keeps serving host processes
//! and cgroup-path answers, and keeps checking quietly.

use std::{path::PathBuf, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How often the socket's presence is checked.
pub const PRESENCE_CHECK: Duration = Duration::from_secs(5);

/// Logs once when containerd is absent and once when it (re)appears.
pub async fn watch_containerd_presence(socket: PathBuf, shutdown: CancellationToken) {
    let mut present: Option<bool> = None;
    let mut tick = tokio::time::interval(PRESENCE_CHECK);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = tokio::fs::metadata(&socket).await.is_ok();
        match (present, now) {
            (None | Some(true), false) => info!(
                socket = %socket.display(),
                "containerd not found; resolving host processes and cgroup paths only, will keep checking"
            ),
            (None | Some(false), true) => {
                info!(socket = %socket.display(), "containerd socket present")
            }
            _ => debug!(present = now, "containerd presence unchanged"),
        }
        present = Some(now);
    }
}
