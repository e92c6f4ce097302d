//! `skiff ps`, `skiff stop`, `skiff logs`.

use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use model::task::Task;
use serde_json::{json, Value};

use super::{call, list_all, print_json, table, Connection, Output};

#[derive(Args)]
pub struct PsArgs {
    /// Cluster to list.
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Include stopped tasks.
    #[arg(long, short = 'a')]
    all: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Task id or ARN.
    task: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Reason recorded as the task's stoppedReason.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Task id or ARN.
    task: String,
    /// Only this container's logs.
    #[arg(long)]
    container: Option<String>,
    /// Keep printing new output until the task stops.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Every task of a cluster with the given desired status, described.
pub async fn list_tasks(
    client: &api::client::EcsClient,
    cluster: &str,
    desired: &str,
) -> anyhow::Result<Vec<Task>> {
    let arns = list_all(
        client,
        "ListTasks",
        json!({"cluster": cluster, "desiredStatus": desired}),
        "taskArns",
    )
    .await?;
    let mut tasks = Vec::new();
    for chunk in arns.chunks(100) {
        let described = call(
            client,
            "DescribeTasks",
            json!({"cluster": cluster, "tasks": chunk}),
        )
        .await?;
        tasks.extend(serde_json::from_value::<Vec<Task>>(
            described["tasks"].clone(),
        )?);
    }
    Ok(tasks)
}

pub async fn ps(args: PsArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let mut tasks = list_tasks(&client, &args.cluster, "RUNNING").await?;
    if args.all {
        tasks.extend(list_tasks(&client, &args.cluster, "STOPPED").await?);
    }
    tasks.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    if connection.output == Output::Json {
        print_json(&serde_json::to_value(&tasks)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&[
        "TASK",
        "DEFINITION",
        "STATUS",
        "DESIRED",
        "ADDRESS",
        "CPU/MEM",
        "AGE",
        "REASON",
    ]);
    let now = model::now();
    for task in &tasks {
        let definition = task
            .task_definition_arn
            .rsplit_once('/')
            .map_or("", |(_, d)| d);
        let address = task
            .attachments
            .first()
            .and_then(|a| a.detail("privateIPv4Address"))
            .unwrap_or("");
        t.add_row(vec![
            task.id().to_string(),
            definition.to_string(),
            task.last_status.as_str().to_string(),
            task.desired_status.as_str().to_string(),
            address.to_string(),
            format!("{}/{}", task.cpu, task.memory),
            age(now - task.created_at),
            task.stopped_reason.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub async fn stop(args: StopArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let out = call(
        &client,
        "StopTask",
        json!({"cluster": args.cluster, "task": args.task, "reason": args.reason}),
    )
    .await?;
    if connection.output == Output::Json {
        print_json(&out)?;
    } else {
        println!("{}", out["task"]["taskArn"].as_str().unwrap_or(&args.task));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(args: LogsArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    stream_logs(
        &client,
        &args.task,
        args.container.as_deref(),
        args.follow,
        connection.output,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a task's logs: each entry to stdout or stderr as the container wrote it, or
/// as JSON lines with `--output json`. With `follow`, until the task has stopped.
pub async fn stream_logs(
    client: &api::client::EcsClient,
    task: &str,
    container: Option<&str>,
    follow: bool,
    output: Output,
) -> anyhow::Result<()> {
    let task_id = model::arn::task_id(task);
    let mut path = format!("/skiff/v1/tasks/{task_id}/logs?follow={follow}");
    if let Some(c) = container {
        path.push_str(&format!("&container={c}"));
    }
    let response = client.get(&path).await?;
    if !response.status().is_success() {
        super::images::read_json(response).await?;
        return Ok(());
    }
    let mut lines = json_lines(response);
    while let Some(entry) = lines.next().await {
        print_entry(&entry?, output)?;
    }
    Ok(())
}

/// The JSON lines of a streamed native response, each parsed as it arrives.
pub fn json_lines(
    response: reqwest::Response,
) -> impl futures::Stream<Item = anyhow::Result<Value>> + Unpin {
    let state = (response.bytes_stream(), Vec::<u8>::new());
    Box::pin(futures::stream::unfold(
        state,
        |(mut body, mut pending)| async move {
            loop {
                if let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let parsed = serde_json::from_slice(&line).map_err(anyhow::Error::from);
                    return Some((parsed, (body, pending)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e.into()), (body, pending))),
                    None => return None,
                }
            }
        },
    ))
}

fn print_entry(entry: &Value, output: Output) -> anyhow::Result<()> {
    use std::io::Write;
    if output == Output::Json {
        println!("{entry}");
        return Ok(());
    }
    let message = entry["message"].as_str().unwrap_or("");
    let newline = if entry["partial"].as_bool() == Some(true) {
        ""
    } else {
        "\n"
    };
    if entry["stream"] == "stderr" {
        let mut err = std::io::stderr();
        write!(err, "{message}{newline}")?;
    } else {
        let mut out = std::io::stdout();
        write!(out, "{message}{newline}")?;
        out.flush()?;
    }
    Ok(())
}
