//! `skiff registry login`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::images::{post_json, read_json};
use super::Connection;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Store credentials the server uses to pull from a registry.
    Login(LoginArgs),
}

#[derive(Args)]
pub struct LoginArgs {
    /// Registry host as written in image references (e.g. 127.0.0.1:5000, docker.io).
    host: String,
    #[arg(long, short = 'u')]
    username: String,
    /// Read the password from standard input (the only way: it stays out of `ps`).
    #[arg(long, required = true)]
    password_stdin: bool,
}

pub async fn run(command: RegistryCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    let RegistryCommand::Login(args) = command;
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on standard input: pipe it in, e.g. `echo \"$TOKEN\" | skiff registry login HOST -u USER --password-stdin`");
    }
    let client = connection.client()?;
    read_json(
        post_json(
            &client,
            "/skiff/v1/registries/login",
            &json!({"host": args.host, "username": args.username, "password": password}),
        )
        .await?,
    )
    .await?;
    println!("Login stored for {}", args.host);
    Ok(ExitCode::SUCCESS)
}
