//! `skiff`: the server, the agent's supervisor entry point, and the CLI.

mod cli;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: serverless containers with the ECS API, on your own machines"
)]
struct Args {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and a local agent.
    Server(serve::ServerArgs),
    /// Run a task's supervisor (started by the agent; not for direct use).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        task_dir: PathBuf,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        // The supervisor daemonizes (forks) first: it must not start a runtime before.
        Command::Supervise { task_dir } => supervisor::run(&task_dir),
        Command::Server(server) => block_on(serve::run(server)),
        Command::Client(client) => block_on(cli::run(client, args.connection)),
    }
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", cli::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
