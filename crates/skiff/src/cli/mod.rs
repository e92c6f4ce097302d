//! The `skiff` client commands. Each talks to a server's ECS API (or Skiff's native
//! endpoints beside it) with the standard AWS credential chain, renders tables for
//! people and JSON for scripts, and turns errors into what to do next.

mod images;
mod lb;
mod network;
mod registry;
mod run;
mod services;
mod tasks;

use std::process::ExitCode;

use anyhow::Context;
use api::client::EcsClient;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Args, Clone)]
pub struct Connection {
    /// Skiff server URL.
    #[arg(
        long,
        global = true,
        env = "SKIFF_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Region to sign requests for.
    #[arg(long, global = true, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Run a container as a task, stream its output, exit with its exit code.
    Run(run::RunArgs),
    /// List tasks.
    Ps(tasks::PsArgs),
    /// Stop a task.
    Stop(tasks::StopArgs),
    /// Show a task's container logs.
    Logs(tasks::LogsArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Manage registry credentials.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Manage the built-in load balancer.
    #[command(subcommand)]
    Lb(lb::LbCommand),
    /// Manage services: N copies of a task kept running, rolled out by deployments.
    #[command(subcommand)]
    Service(services::ServiceCommand),
    /// Manage VPCs, subnets and security groups.
    #[command(subcommand)]
    Network(network::NetworkCommand),
}

pub async fn run(command: ClientCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    match command {
        ClientCommand::Run(args) => run::run(args, &connection).await,
        ClientCommand::Ps(args) => tasks::ps(args, &connection).await,
        ClientCommand::Stop(args) => tasks::stop(args, &connection).await,
        ClientCommand::Logs(args) => tasks::logs(args, &connection).await,
        ClientCommand::Image(command) => images::run(command, &connection).await,
        ClientCommand::Registry(command) => registry::run(command, &connection).await,
        ClientCommand::Lb(command) => lb::run(command, &connection).await,
        ClientCommand::Service(command) => services::run(command, &connection).await,
        ClientCommand::Network(command) => network::run(command, &connection).await,
    }
}

impl Connection {
    /// A signed client for the server, with keys from the standard AWS chain and,
    /// failing that, the default state directory's credentials file.
    pub fn client(&self) -> anyhow::Result<EcsClient> {
        let credentials = api::credentials::resolve(&crate::serve::default_state_dir())?;
        Ok(EcsClient::new(
            &self.endpoint,
            credentials,
            self.region.clone(),
        )?)
    }
}

/// Calls an ECS operation with a JSON body.
pub async fn call(client: &EcsClient, operation: &str, body: Value) -> anyhow::Result<Value> {
    client
        .call::<Value, Value>(operation, &body)
        .await
        .with_context(|| format!("{operation} failed"))
}

/// Every item of a paginated List operation: the `key` arrays of all its pages.
pub async fn list_all(
    client: &EcsClient,
    operation: &str,
    mut body: Value,
    key: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    loop {
        let page = call(client, operation, body.clone()).await?;
        items.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["nextToken"].as_str() {
            Some(token) => body["nextToken"] = Value::from(token),
            None => return Ok(items),
        }
    }
}

/// Prints an error and its causes on one line, each cause once.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The elements of a list in a Query-protocol answer; an empty XML list arrives as `""`.
pub fn query_list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A text field of a Query-protocol answer; empty when missing.
pub fn query_text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default()
}

/// A table with a header row, in the house style.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    table
}
