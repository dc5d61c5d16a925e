//! The `pidmap` binary: parses the command line, sets up logging and
//! signals, and hands over to the library.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
};

use pidmap::cli::{Cli, Command, client};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, util::SubscriberInitExt as _};

fn main() -> ExitCode {
    let (cli, matches) = Cli::parse_with_matches();
    if !matches!(cli.command, Command::Agent(_)) {
        restore_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written is dropped. By default tracing-subscriber says
        // so with `eprintln!`, which panics when stderr is a closed pipe (a collector that
        // died, `| head`): the task that logged died, and with it the signal task.
        .log_internal_errors(false)
        .finish()
        .init();
    let socket_of = |c: &pidmap::cli::Conn| c.socket.clone();
    let args = match cli.command {
        Command::Agent(args) => args,
        Command::Resolve { conn, pids } => {
            return client::run_query(async move {
                client::resolve(&socket_of(&conn), &pids, conn.output).await
            });
        }
        Command::Ls {
            conn,
            all,
            namespace,
            pod,
            label,
        } => {
            let filter = pidmap::api::proto::ListContainersRequest {
                runtime_namespace: namespace,
                pod_name: pod,
                pod_namespace: None,
                labels: label,
                include_deleted: all,
            };
            return client::run_query(async move {
                client::ls(&socket_of(&conn), filter, conn.output).await
            });
        }
        Command::Ps {
            conn,
            container,
            namespace,
        } => {
            return client::run_query(async move {
                client::ps(&socket_of(&conn), container, namespace, conn.output).await
            });
        }
        Command::Watch { conn } => {
            return client::run_query(async move {
                client::watch(&socket_of(&conn), conn.output).await
            });
        }
        Command::Whoami { conn } => {
            return client::run_query(async move {
                client::whoami(&socket_of(&conn), conn.output).await
            });
        }
        Command::Status { conn } => {
            return client::run_query(async move {
                client::status(&socket_of(&conn), conn.output).await
            });
        }
    };
    let agent_matches = matches.subcommand_matches("agent").unwrap_or(&matches);
    let config = match args.to_config(agent_matches) {
        Ok(config) => config,
        Err(error) => return fail(&error, 2),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => return fail(&error, 1),
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(pidmap::signals::cancel_on_signal(shutdown.clone()));
        match pidmap::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error, 1),
        }
    })
}

/// Prints an error with its causes, the way a person reads them.
fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    // Not eprintln!: it panics when stderr is closed, and the exit status says it anyway.
    let _ = writeln!(
        std::io::stderr(),
        "pidmap: error: {}",
        pidmap::error::chain(error)
    );
    ExitCode::from(code)
}

/// Lets a query subcommand die quietly of SIGPIPE when its reader goes
/// away (`pidmap watch | head -3`), like other Unix tools, instead of
/// failing to print (Rust ignores SIGPIPE by default). The agent keeps
/// ignoring it: a client closing its socket must never kill it.
fn restore_sigpipe() {
    // SAFETY: resetting a signal's disposition to its default has no
    // memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
