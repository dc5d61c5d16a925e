//! The `pidmap` binary: parses the command line, sets up logging and
//! signals, and hands over to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser;
use pidmap::cli::{Cli, Command};
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
    let Command::Agent(args) = cli.command;
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
