//! `skiff service create|ls|describe|scale|deploy|rm`: services through the ECS API,
//! with a live view of a deployment until it completes or fails.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use api::client::EcsClient;
use clap::{Args, Subcommand};
use model::service::Service;
use serde_json::{json, Value};

use super::{call, list_all, print_json, table, Connection, Output};

/// How often the live view polls the service.
const POLL: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a service that keeps N tasks of a task definition running.
    Create(CreateArgs),
    /// List the services of a cluster.
    Ls(ClusterArg),
    /// Show a service: counts, deployments and recent events.
    Describe(NameArgs),
    /// Change how many tasks a service keeps running.
    Scale(ScaleArgs),
    /// Roll a service out to a new task definition (or restart its tasks) and follow it.
    Deploy(DeployArgs),
    /// Delete a service (it drains its tasks first).
    Rm(RmArgs),
}

#[derive(Args)]
pub struct ClusterArg {
    #[arg(long, default_value = "default")]
    cluster: String,
}

#[derive(Args)]
pub struct NameArgs {
    /// Service name or ARN.
    service: String,
    #[command(flatten)]
    cluster: ClusterArg,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Service name.
    name: String,
    /// Task definition (family, family:revision or ARN).
    #[arg(long, short = 't')]
    task_definition: String,
    /// Tasks to keep running.
    #[arg(long, short = 'n', default_value_t = 1)]
    desired_count: u32,
    /// deploymentConfiguration.minimumHealthyPercent.
    #[arg(long)]
    min_healthy_percent: Option<u32>,
    /// deploymentConfiguration.maximumPercent.
    #[arg(long)]
    max_percent: Option<u32>,
    /// Turn the deployment circuit breaker on, with rollback.
    #[arg(long)]
    circuit_breaker: bool,
    /// Seconds after a task starts during which failed health checks are ignored.
    #[arg(long)]
    health_check_grace_period: Option<u32>,
    /// Register tasks with a target group: TARGET_GROUP_ARN:CONTAINER:PORT (repeatable).
    #[arg(long = "load-balancer", value_name = "TG_ARN:CONTAINER:PORT")]
    load_balancers: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArg,
}

#[derive(Args)]
pub struct ScaleArgs {
    service: String,
    /// The new desired count.
    count: u32,
    #[command(flatten)]
    cluster: ClusterArg,
}

#[derive(Args)]
pub struct DeployArgs {
    service: String,
    /// The task definition to roll out; without it, the current one is restarted.
    #[arg(long, short = 't')]
    task_definition: Option<String>,
    /// Return once the deployment has started instead of following it.
    #[arg(long)]
    no_wait: bool,
    /// Give up following after this many seconds (the deployment goes on).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    #[command(flatten)]
    cluster: ClusterArg,
}

#[derive(Args)]
pub struct RmArgs {
    service: String,
    /// Delete even if the service still has a desired count above 0.
    #[arg(long, short = 'f')]
    force: bool,
    #[command(flatten)]
    cluster: ClusterArg,
}

pub async fn run(command: ServiceCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let output = connection.output;
    match command {
        ServiceCommand::Create(args) => {
            let balancers = args
                .load_balancers
                .iter()
                .map(|spec| load_balancer(spec))
                .collect::<anyhow::Result<Vec<Value>>>()?;
            let mut configuration = json!({});
            if let Some(min) = args.min_healthy_percent {
                configuration["minimumHealthyPercent"] = json!(min);
            }
            if let Some(max) = args.max_percent {
                configuration["maximumPercent"] = json!(max);
            }
            if args.circuit_breaker {
                configuration["deploymentCircuitBreaker"] =
                    json!({"enable": true, "rollback": true});
            }
            let mut body = json!({
                "cluster": args.cluster.cluster,
                "serviceName": args.name,
                "taskDefinition": args.task_definition,
                "desiredCount": args.desired_count,
                "launchType": "FARGATE",
                "deploymentConfiguration": configuration,
                "loadBalancers": balancers,
            });
            if let Some(grace) = args.health_check_grace_period {
                body["healthCheckGracePeriodSeconds"] = json!(grace);
            }
            let out = call(&client, "CreateService", body).await?;
            print_service(&out["service"], output)
        }
        ServiceCommand::Ls(args) => list(&client, &args, output).await,
        ServiceCommand::Describe(args) => {
            let service = describe(&client, &args.cluster.cluster, &args.service).await?;
            print_service(&service, output)
        }
        ServiceCommand::Scale(args) => {
            let out = call(
                &client,
                "UpdateService",
                json!({"cluster": args.cluster.cluster, "service": args.service, "desiredCount": args.count}),
            )
            .await?;
            print_service(&out["service"], output)
        }
        ServiceCommand::Deploy(args) => deploy(&client, args, output).await,
        ServiceCommand::Rm(args) => {
            let out = call(
                &client,
                "DeleteService",
                json!({"cluster": args.cluster.cluster, "service": args.service, "force": args.force}),
            )
            .await
            .map_err(|e| {
                if format!("{e:#}").contains("scaled above 0") {
                    e.context("scale the service to 0 first, or pass --force")
                } else {
                    e
                }
            })?;
            if output == Output::Json {
                print_json(&out)?;
            } else {
                println!(
                    "{} is draining its tasks; it becomes INACTIVE once they have stopped",
                    out["service"]["serviceName"]
                        .as_str()
                        .unwrap_or(&args.service)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `TG_ARN:CONTAINER:PORT` (the ARN has colons of its own, so split from the right).
fn load_balancer(spec: &str) -> anyhow::Result<Value> {
    let mut parts = spec.rsplitn(3, ':');
    let (Some(port), Some(container), Some(arn)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("--load-balancer takes TARGET_GROUP_ARN:CONTAINER:PORT; `{spec}` is not that");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("`{port}` in --load-balancer is not a port number"))?;
    Ok(json!({"targetGroupArn": arn, "containerName": container, "containerPort": port}))
}

async fn describe(client: &EcsClient, cluster: &str, service: &str) -> anyhow::Result<Value> {
    let out = call(
        client,
        "DescribeServices",
        json!({"cluster": cluster, "services": [service]}),
    )
    .await?;
    match out["services"].get(0) {
        Some(service) => Ok(service.clone()),
        None => bail!(
            "no service {service} in cluster {cluster}: list them with `skiff service ls --cluster {cluster}`"
        ),
    }
}

async fn list(
    client: &EcsClient,
    cluster: &ClusterArg,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let arns = list_all(
        client,
        "ListServices",
        json!({"cluster": cluster.cluster}),
        "serviceArns",
    )
    .await?;
    let mut services: Vec<Service> = Vec::new();
    for chunk in arns.chunks(model::service::MAX_DESCRIBE) {
        let out = call(
            client,
            "DescribeServices",
            json!({"cluster": cluster.cluster, "services": chunk}),
        )
        .await?;
        services.extend(serde_json::from_value::<Vec<Service>>(
            out["services"].clone(),
        )?);
    }
    if output == Output::Json {
        print_json(&serde_json::to_value(&services)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&[
        "SERVICE",
        "STATUS",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "TASK DEFINITION",
        "ROLLOUT",
    ]);
    for s in &services {
        t.add_row(vec![
            s.service_name.clone(),
            s.status.clone(),
            s.desired_count.to_string(),
            s.running_count.to_string(),
            s.pending_count.to_string(),
            short_definition(&s.task_definition).to_string(),
            s.deployments
                .first()
                .map(|d| d.rollout_state.clone())
                .unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn short_definition(arn: &str) -> &str {
    arn.rsplit_once('/').map_or(arn, |(_, d)| d)
}

fn print_service(service: &Value, output: Output) -> anyhow::Result<ExitCode> {
    if output == Output::Json {
        print_json(service)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s: Service = serde_json::from_value(service.clone())?;
    println!("{}  {}", s.service_name, s.service_arn);
    println!(
        "status {}  desired {}  running {}  pending {}  task definition {}",
        s.status,
        s.desired_count,
        s.running_count,
        s.pending_count,
        short_definition(&s.task_definition)
    );
    let mut t = table(&[
        "DEPLOYMENT",
        "STATUS",
        "TASK DEFINITION",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "FAILED",
        "ROLLOUT",
    ]);
    for d in &s.deployments {
        t.add_row(vec![
            d.id.clone(),
            d.status.clone(),
            short_definition(&d.task_definition).to_string(),
            d.desired_count.to_string(),
            d.running_count.to_string(),
            d.pending_count.to_string(),
            d.failed_tasks.to_string(),
            d.rollout_state.clone(),
        ]);
    }
    println!("{t}");
    for event in s.events.iter().take(10) {
        println!("{}  {}", timestamp(event.created_at), event.message);
    }
    Ok(ExitCode::SUCCESS)
}

/// `HH:MM:SS` (UTC) of an ECS timestamp.
fn timestamp(seconds: f64) -> String {
    let of_day = (seconds.max(0.0) as u64) % 86_400;
    format!(
        "{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Starts a deployment and, unless told not to, prints its progress and the service's
/// events until the deployment COMPLETED (exit 0) or FAILED (exit 1).
async fn deploy(client: &EcsClient, args: DeployArgs, output: Output) -> anyhow::Result<ExitCode> {
    let cluster = &args.cluster.cluster;
    let mut body = json!({"cluster": cluster, "service": args.service});
    match &args.task_definition {
        Some(definition) => body["taskDefinition"] = json!(definition),
        None => body["forceNewDeployment"] = json!(true),
    }
    let out = call(client, "UpdateService", body).await?;
    let service: Service = serde_json::from_value(out["service"].clone())?;
    let Some(deployment) = service.deployments.first().map(|d| d.id.clone()) else {
        bail!("the service has no deployment");
    };
    if args.no_wait {
        if output == Output::Json {
            print_json(&out["service"])?;
        } else {
            println!("deployment {deployment} started");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut seen: HashSet<String> = service.events.iter().map(|e| e.id.clone()).collect();
    let mut last_line = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    println!(
        "deployment {deployment}: {} -> {}",
        args.service,
        short_definition(&service.task_definition)
    );
    loop {
        let current: Service =
            serde_json::from_value(describe(client, cluster, &args.service).await?)?;
        let mut events: Vec<_> = current
            .events
            .iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect();
        events.reverse();
        for event in events {
            println!("  {}  {}", timestamp(event.created_at), event.message);
        }
        let mine = current.deployments.iter().find(|d| d.id == deployment);
        let line = current
            .deployments
            .iter()
            .map(|d| {
                format!(
                    "{} {} {}: {}/{} running, {} pending, {} failed",
                    d.status,
                    short_definition(&d.task_definition),
                    d.rollout_state,
                    d.running_count,
                    d.desired_count,
                    d.pending_count,
                    d.failed_tasks
                )
            })
            .collect::<Vec<_>>()
            .join("  |  ");
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        match mine.map(|d| d.rollout_state.as_str()) {
            Some("COMPLETED") => {
                println!("deployment {deployment} completed");
                return Ok(ExitCode::SUCCESS);
            }
            Some("FAILED") => {
                eprintln!(
                    "deployment {deployment} failed: {}",
                    mine.map_or("", |d| d.rollout_state_reason.as_str())
                );
                return Ok(ExitCode::FAILURE);
            }
            None => {
                eprintln!(
                    "deployment {deployment} was replaced by a newer one (or rolled back); see `skiff service describe {}`",
                    args.service
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "deployment {deployment} is still in progress after {} s; it goes on: follow it with `skiff service describe {}`",
                args.timeout,
                args.service
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
