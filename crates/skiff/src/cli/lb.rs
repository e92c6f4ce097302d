//! `skiff lb create|ls|targets|rm`: the built-in load balancer through the ELBv2 API.
//!
//! `create` makes the three pieces ELBv2 needs (target group, load balancer, listener)
//! under one name and removes what it made if a later step fails; `rm` deletes the load
//! balancer (its listeners go with it) and the target group of the same name.

use std::process::ExitCode;

use anyhow::Context;
use api::client::EcsClient;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::{print_json, query_list, query_text, table, Connection, Output};

const SERVICE: &str = "elasticloadbalancing";
const VERSION: &str = "2015-12-01";

#[derive(Subcommand)]
pub enum LbCommand {
    /// Create a target group, a load balancer and a listener forwarding to it.
    Create(CreateArgs),
    /// List load balancers with their listener addresses.
    Ls,
    /// Show the health of a target group's targets.
    Targets(TargetsArgs),
    /// Delete a load balancer (and its listeners) and the target group of the same name.
    Rm(RmArgs),
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
enum Protocol {
    Http,
    Tcp,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Name of the load balancer and its target group.
    name: String,
    /// HTTP (application load balancer) or TCP (network load balancer).
    #[arg(long, value_enum, default_value = "HTTP")]
    protocol: Protocol,
    /// Port the listener accepts connections on.
    #[arg(long)]
    port: u16,
    /// Port the targets listen on.
    #[arg(long)]
    target_port: u16,
    /// Path of the HTTP health check.
    #[arg(long)]
    health_path: Option<String>,
}

#[derive(Args)]
pub struct TargetsArgs {
    /// Target group name or ARN.
    target_group: String,
}

#[derive(Args)]
pub struct RmArgs {
    /// Name of the load balancer.
    name: String,
}

pub async fn run(command: LbCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    match command {
        LbCommand::Create(args) => create(&client, args, connection.output).await,
        LbCommand::Ls => ls(&client, connection.output).await,
        LbCommand::Targets(args) => targets(&client, &args.target_group, connection.output).await,
        LbCommand::Rm(args) => rm(&client, &args.name).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

/// Calls an ELBv2 action with form members.
async fn elbv2(
    client: &EcsClient,
    action: &str,
    members: &[(&str, String)],
) -> anyhow::Result<Value> {
    let members: Vec<(String, String)> = members
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    client
        .query(SERVICE, VERSION, action, &members)
        .await
        .with_context(|| format!("{action} failed"))
}

/// The first element of the list `field` of a result.
fn first<'a>(result: &'a Value, field: &str) -> anyhow::Result<&'a Value> {
    query_list(&result[field])
        .first()
        .with_context(|| format!("the server's answer has no {field}: is it a Skiff server?"))
}

/// The address the balancer's listeners bind (every zone shows the same one).
fn address(lb: &Value) -> String {
    query_list(&lb["AvailabilityZones"])
        .iter()
        .flat_map(|zone| query_list(&zone["LoadBalancerAddresses"]))
        .map(|a| query_text(a, "IpAddress").to_owned())
        .next()
        .unwrap_or_default()
}

async fn create(client: &EcsClient, args: CreateArgs, output: Output) -> anyhow::Result<()> {
    let (protocol, lb_type) = match args.protocol {
        Protocol::Http => ("HTTP", "application"),
        Protocol::Tcp => ("TCP", "network"),
    };
    let mut group = vec![
        ("Name", args.name.clone()),
        ("Protocol", protocol.to_owned()),
        ("Port", args.target_port.to_string()),
        ("TargetType", "ip".to_owned()),
    ];
    if let Some(path) = &args.health_path {
        group.push(("HealthCheckPath", path.clone()));
    }
    let created = elbv2(client, "CreateTargetGroup", &group).await?;
    let group_arn = query_text(first(&created, "TargetGroups")?, "TargetGroupArn").to_owned();

    let made = async {
        let created = elbv2(
            client,
            "CreateLoadBalancer",
            &[("Name", args.name.clone()), ("Type", lb_type.to_owned())],
        )
        .await?;
        let lb = first(&created, "LoadBalancers")?.clone();
        let lb_arn = query_text(&lb, "LoadBalancerArn").to_owned();
        let listener = elbv2(
            client,
            "CreateListener",
            &[
                ("LoadBalancerArn", lb_arn.clone()),
                ("Protocol", protocol.to_owned()),
                ("Port", args.port.to_string()),
                ("DefaultActions.member.1.Type", "forward".to_owned()),
                ("DefaultActions.member.1.TargetGroupArn", group_arn.clone()),
            ],
        )
        .await;
        if let Err(error) = listener {
            let _ = elbv2(client, "DeleteLoadBalancer", &[("LoadBalancerArn", lb_arn)]).await;
            return Err(error);
        }
        Ok::<_, anyhow::Error>(lb)
    }
    .await;
    let lb = match made {
        Ok(lb) => lb,
        Err(error) => {
            let _ = elbv2(
                client,
                "DeleteTargetGroup",
                &[("TargetGroupArn", group_arn)],
            )
            .await;
            return Err(error);
        }
    };
    let listen = format!("{}:{}", address(&lb), args.port);
    if output == Output::Json {
        return print_json(&json!({
            "targetGroupArn": group_arn,
            "loadBalancerArn": query_text(&lb, "LoadBalancerArn"),
            "dnsName": query_text(&lb, "DNSName"),
            "address": listen,
        }));
    }
    println!("Target group  {group_arn}");
    println!("Listening on  {listen} ({protocol})");
    println!(
        "Register targets with: aws elbv2 register-targets --target-group-arn {group_arn} --targets Id=<task IP>,Port={}",
        args.target_port
    );
    Ok(())
}

async fn ls(client: &EcsClient, output: Output) -> anyhow::Result<()> {
    let described = elbv2(client, "DescribeLoadBalancers", &[]).await?;
    let mut rows = Vec::new();
    for lb in query_list(&described["LoadBalancers"]) {
        let listeners = elbv2(
            client,
            "DescribeListeners",
            &[(
                "LoadBalancerArn",
                query_text(lb, "LoadBalancerArn").to_owned(),
            )],
        )
        .await?;
        let listeners: Vec<Value> = query_list(&listeners["Listeners"])
            .iter()
            .map(|l| {
                json!({
                    "address": format!("{}:{}", address(lb), query_text(l, "Port")),
                    "protocol": query_text(l, "Protocol"),
                    "targetGroupArn": query_list(&l["DefaultActions"]).first().map(|a| query_text(a, "TargetGroupArn")).unwrap_or_default(),
                })
            })
            .collect();
        rows.push(json!({
            "name": query_text(lb, "LoadBalancerName"),
            "type": query_text(lb, "Type"),
            "dnsName": query_text(lb, "DNSName"),
            "arn": query_text(lb, "LoadBalancerArn"),
            "listeners": listeners,
        }));
    }
    if output == Output::Json {
        return print_json(&Value::Array(rows));
    }
    let mut t = table(&["NAME", "TYPE", "LISTENERS", "TARGET GROUPS", "DNS NAME"]);
    for row in &rows {
        let listeners = query_list(&row["listeners"]);
        let addresses: Vec<String> = listeners
            .iter()
            .map(|l| format!("{} {}", query_text(l, "protocol"), query_text(l, "address")))
            .collect();
        let groups: Vec<&str> = listeners
            .iter()
            .map(|l| {
                query_text(l, "targetGroupArn")
                    .split('/')
                    .nth(1)
                    .unwrap_or_default()
            })
            .collect();
        t.add_row(vec![
            query_text(row, "name").to_owned(),
            query_text(row, "type").to_owned(),
            addresses.join(", "),
            groups.join(", "),
            query_text(row, "dnsName").to_owned(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// The ARN of a target group given by name or ARN.
async fn group_arn(client: &EcsClient, group: &str) -> anyhow::Result<String> {
    if group.starts_with("arn:") {
        return Ok(group.to_owned());
    }
    let described = elbv2(
        client,
        "DescribeTargetGroups",
        &[("Names.member.1", group.to_owned())],
    )
    .await?;
    Ok(query_text(first(&described, "TargetGroups")?, "TargetGroupArn").to_owned())
}

async fn targets(client: &EcsClient, group: &str, output: Output) -> anyhow::Result<()> {
    let arn = group_arn(client, group).await?;
    let health = elbv2(client, "DescribeTargetHealth", &[("TargetGroupArn", arn)]).await?;
    let descriptions = query_list(&health["TargetHealthDescriptions"]);
    if output == Output::Json {
        return print_json(&Value::Array(descriptions.to_vec()));
    }
    let mut t = table(&["TARGET", "PORT", "STATE", "REASON", "DESCRIPTION"]);
    for d in descriptions {
        let target = &d["Target"];
        let health = &d["TargetHealth"];
        t.add_row(vec![
            query_text(target, "Id"),
            query_text(target, "Port"),
            query_text(health, "State"),
            query_text(health, "Reason"),
            query_text(health, "Description"),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn rm(client: &EcsClient, name: &str) -> anyhow::Result<()> {
    let described = elbv2(
        client,
        "DescribeLoadBalancers",
        &[("Names.member.1", name.to_owned())],
    )
    .await?;
    let lb_arn = query_text(first(&described, "LoadBalancers")?, "LoadBalancerArn").to_owned();
    elbv2(client, "DeleteLoadBalancer", &[("LoadBalancerArn", lb_arn)]).await?;
    let groups = elbv2(client, "DescribeTargetGroups", &[]).await?;
    if let Some(group) = query_list(&groups["TargetGroups"])
        .iter()
        .find(|g| query_text(g, "TargetGroupName") == name)
    {
        let arn = query_text(group, "TargetGroupArn").to_owned();
        elbv2(client, "DeleteTargetGroup", &[("TargetGroupArn", arn)]).await?;
    }
    println!("Deleted load balancer {name}");
    Ok(())
}
