//! The `pidmap` binary: parses the command line, sets up logging and
//! signals, and hands over to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser;
use pidmap::cli::{client, Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{util::SubscriberInitExt as _, EnvFilter};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .init();
    let socket_of = |c: &pidmap::cli::Conn| c.socket.clone();
    let args = match cli.command {
        Command::Agent(args) => args,
        Command::Resolve { conn, pids } => {
            return client::run_query(async move {
                client::resolve(&socket_of(&conn), &pids, conn.output).await
            })
        }
        Command::Ls {
            conn,
            namespace,
            pod,
            label,
        } => {
            let filter = pidmap::api::proto::ListContainersRequest {
                runtime_namespace: namespace,
                pod_name: pod,
                pod_namespace: None,
                labels: label,
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
            })
        }
        Command::Watch { conn } => {
            return client::run_query(
                async move { client::watch(&socket_of(&conn), conn.output).await },
            )
        }
        Command::Whoami { conn } => {
            return client::run_query(async move {
                client::whoami(&socket_of(&conn), conn.output).await
            })
        }
        Command::Status { conn } => {
            return client::run_query(async move {
                client::status(&socket_of(&conn), conn.output).await
            })
        }
    };
    let config = match args.to_config() {
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
    eprintln!("pidmap: error: {}", pidmap::error::chain(error));
    ExitCode::from(code)
}
