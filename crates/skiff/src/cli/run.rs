//! `skiff run`: `docker run` for Skiff. Registers (or reuses) a task definition for the
//! image, runs one task, streams its output, and exits with the container's exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use model::task::{Task, TaskStatus};
use serde_json::{json, Value};

use super::tasks::stream_logs;
use super::{call, Connection, Output};

/// Exit code when the task never ran its container (docker's is 125 too).
const EXIT_NOT_STARTED: u8 = 125;

#[derive(Args)]
pub struct RunArgs {
    /// Image reference, as `skiff image ls` shows it.
    image: String,
    /// Task CPU units (1024 = 1 vCPU) or "0.5 vCPU".
    #[arg(long, default_value = "256")]
    cpu: String,
    /// Task memory in MiB or "1 GB".
    #[arg(long, default_value = "512")]
    memory: String,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Container name (also names the task definition family `skiff-run-NAME`).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Print the task ARN and return at once.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Command and arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{value}' is not NAME=VALUE")),
    }
}

/// A family name from the container name or the image's repository.
fn family_for(name: Option<&str>, image: &str) -> String {
    let base = name.unwrap_or_else(|| {
        let without_tag = image.split(['@']).next().unwrap_or(image);
        let last = without_tag.rsplit('/').next().unwrap_or(without_tag);
        last.split(':').next().unwrap_or(last)
    });
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("skiff-run-{clean}")
}

pub async fn run(args: RunArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let container = args.name.clone().unwrap_or_else(|| "main".into());
    let family = family_for(args.name.as_deref(), &args.image);
    call(
        &client,
        "CreateCluster",
        json!({"clusterName": args.cluster}),
    )
    .await?;
    let definition = definition_for(&client, &family, &container, &args).await?;

    let mut container_override = json!({"name": container});
    if !args.command.is_empty() {
        container_override["command"] = json!(args.command);
    }
    if !args.env.is_empty() {
        container_override["environment"] = Value::Array(
            args.env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect(),
        );
    }
    let out = call(
        &client,
        "RunTask",
        json!({
            "cluster": args.cluster,
            "taskDefinition": definition,
            "launchType": "FARGATE",
            "startedBy": "skiff-run",
            "overrides": {"containerOverrides": [container_override]},
        }),
    )
    .await?;
    let task: Task =
        serde_json::from_value(out["tasks"][0].clone()).context("RunTask returned no task")?;
    if args.detach {
        println!("{}", task.task_arn);
        return Ok(ExitCode::SUCCESS);
    }

    let started = wait_for(&client, &args.cluster, &task.task_arn, TaskStatus::Running).await?;
    // Only a task that started has logs: one that failed to start may be seen here on
    // its way to STOPPED (DEPROVISIONING), with no container ever run.
    if started.started_at.is_some() {
        stream_logs(&client, &task.task_arn, None, true, connection.output).await?;
    }
    let stopped = wait_for(&client, &args.cluster, &task.task_arn, TaskStatus::Stopped).await?;
    let exit = stopped
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.exit_code);
    match exit {
        Some(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        None => {
            eprintln!(
                "skiff: task {} did not run: {}",
                stopped.id(),
                stopped
                    .stopped_reason
                    .as_deref()
                    .unwrap_or("no reason given")
            );
            if connection.output == Output::Json {
                super::print_json(&serde_json::to_value(&stopped)?)?;
            }
            Ok(ExitCode::from(EXIT_NOT_STARTED))
        }
    }
}

/// The latest revision of `family` if it runs this image with this size; otherwise a
/// newly registered one.
async fn definition_for(
    client: &api::client::EcsClient,
    family: &str,
    container: &str,
    args: &RunArgs,
) -> anyhow::Result<String> {
    let wanted_cpu = model::validate::parse_cpu(&args.cpu)?.to_string();
    let wanted_memory = model::validate::parse_memory(&args.memory)?.to_string();
    if let Ok(existing) = client
        .call::<Value, Value>("DescribeTaskDefinition", &json!({"taskDefinition": family}))
        .await
    {
        let d = &existing["taskDefinition"];
        let c = &d["containerDefinitions"];
        let same = d["cpu"] == wanted_cpu.as_str()
            && d["memory"] == wanted_memory.as_str()
            && c.as_array().map(Vec::len) == Some(1)
            && c[0]["name"] == container
            && c[0]["image"] == args.image.as_str();
        if same {
            return Ok(d["taskDefinitionArn"]
                .as_str()
                .unwrap_or(family)
                .to_string());
        }
    }
    let registered = call(
        client,
        "RegisterTaskDefinition",
        json!({
            "family": family,
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": wanted_cpu,
            "memory": wanted_memory,
            "containerDefinitions": [{"name": container, "image": args.image, "essential": true}],
        }),
    )
    .await?;
    Ok(registered["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap_or(family)
        .to_string())
}

/// Polls until the task reaches `status` (or stops).
async fn wait_for(
    client: &api::client::EcsClient,
    cluster: &str,
    arn: &str,
    status: TaskStatus,
) -> anyhow::Result<Task> {
    loop {
        let out = call(
            client,
            "DescribeTasks",
            json!({"cluster": cluster, "tasks": [arn]}),
        )
        .await?;
        let task: Task = serde_json::from_value(out["tasks"][0].clone())
            .with_context(|| format!("task {arn} disappeared"))?;
        if task.last_status >= status {
            return Ok(task);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_valid_names() {
        assert_eq!(
            family_for(None, "127.0.0.1:5000/team/app:1.4"),
            "skiff-run-app"
        );
        assert_eq!(family_for(None, "busybox"), "skiff-run-busybox");
        assert_eq!(family_for(Some("my.job"), "busybox"), "skiff-run-my-job");
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
    }
}
