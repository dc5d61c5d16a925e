//! Small helpers every module may use. A leaf: it imports nothing from the
//! crate, so no module cycle can run through it.

use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`, so
/// user-space times compare with the kernel's event timestamps.
pub fn monotonic_ns() -> u64 {
    clock_ns(rustix::time::ClockId::Monotonic)
}

/// `CLOCK_BOOTTIME` in nanoseconds: increasing across agent restarts (and
/// through suspend) on one boot.
pub(crate) fn boottime_ns() -> u64 {
    clock_ns(rustix::time::ClockId::Boottime)
}

fn clock_ns(clock: rustix::time::ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(clock);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds in `d`, saturating at `u64::MAX`.
pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An error and its causes on one line, `outer: inner: innermost`, the way
/// logs and the command line print them. A cause that only repeats what
/// the line already ends with (errors that print their source) is left
/// out.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// The name of a gRPC status code as Prometheus gRPC metrics spell it
/// (`OK`, `NotFound`, `InvalidArgument`, …).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Pause after a failed accept (out of file descriptors, …) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection from `accept` (a listener's `accept()`); a failure
/// (EMFILE and friends) is logged, with `what` the listener, and retried
/// after a pause. `None` once `shutdown` fires. Shared by the API's and
/// the metrics endpoint's accept loops.
pub(crate) async fn accept_next<T, E, F>(
    shutdown: &tokio_util::sync::CancellationToken,
    what: &str,
    mut accept: impl FnMut() -> F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(error) => {
                tracing::warn!(%error, "{what}: accept failed; pausing {ACCEPT_BACKOFF:?}");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn chain_joins_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        assert_eq!(duration_ns(Duration::from_micros(3)), 3_000);
    }

    #[test]
    fn chain_leaves_out_causes_already_printed() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error: {0}")]
        struct Loud(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect")]
        struct Outer(#[source] Loud);
        let e = Outer(Loud(std::io::Error::other("path too long")));
        assert_eq!(chain(&e), "cannot connect: transport error: path too long");
    }
}
