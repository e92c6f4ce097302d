//! `skiff network`: VPCs, subnets and security groups through the server's EC2 API, the
//! same actions (and error codes) `aws ec2` uses, so what this creates is what the AWS
//! CLI shows and the other way round.
//!
//! `ls` shows the whole network; `vpc` and `subnet` create (and `subnet rm` deletes)
//! address ranges; `sg` manages security groups and their rules (see [`groups`] for how
//! groups are named, [`rules`] for how a rule is written).

mod groups;
mod rules;
mod wire;

use std::process::ExitCode;

use api::client::EcsClient;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{print_json, table, Connection, Output};
use wire::ec2;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// List VPCs, subnets and security groups.
    Ls,
    /// Manage VPCs.
    #[command(subcommand)]
    Vpc(VpcCommand),
    /// Manage subnets.
    #[command(subcommand)]
    Subnet(SubnetCommand),
    /// Manage security groups and their rules.
    #[command(subcommand)]
    Sg(groups::GroupCommand),
}

#[derive(Subcommand)]
pub enum VpcCommand {
    /// Create a VPC (with its `default` security group).
    Create(VpcCreateArgs),
}

#[derive(Args)]
pub struct VpcCreateArgs {
    /// Address range of the VPC, /16 to /28 (e.g. 10.1.0.0/16).
    #[arg(long)]
    cidr: String,
}

#[derive(Subcommand)]
pub enum SubnetCommand {
    /// Create a subnet inside a VPC's range.
    Create(SubnetCreateArgs),
    /// Delete a subnet no task uses.
    Rm(SubnetRmArgs),
}

#[derive(Args)]
pub struct SubnetCreateArgs {
    /// Address range of the subnet, /16 to /28, inside its VPC's range.
    #[arg(long)]
    cidr: String,
    /// VPC of the subnet [default: the default VPC].
    #[arg(long)]
    vpc: Option<String>,
}

#[derive(Args)]
pub struct SubnetRmArgs {
    /// Subnet id (subnet-...).
    subnet: String,
}

pub async fn run(command: NetworkCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let output = connection.output;
    match command {
        NetworkCommand::Ls => ls(&client, output).await,
        NetworkCommand::Vpc(VpcCommand::Create(args)) => create_vpc(&client, &args, output).await,
        NetworkCommand::Subnet(SubnetCommand::Create(args)) => {
            create_subnet(&client, args, output).await
        }
        NetworkCommand::Subnet(SubnetCommand::Rm(args)) => {
            rm_subnet(&client, &args.subnet, output).await
        }
        NetworkCommand::Sg(command) => groups::run(&client, command, output).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

async fn ls(client: &EcsClient, output: Output) -> anyhow::Result<()> {
    let vpcs = wire::vpcs(client).await?;
    let subnets = wire::subnets(client).await?;
    let groups = wire::groups(client).await?;
    if output == Output::Json {
        return print_json(&json!({
            "vpcs": vpcs,
            "subnets": subnets,
            "securityGroups": groups,
        }));
    }
    let mut t = table(&["VPC", "CIDR", "DEFAULT"]);
    for v in &vpcs {
        t.add_row(vec![
            v.vpc_id.clone(),
            v.cidr_block.to_string(),
            yes_no(v.is_default).to_owned(),
        ]);
    }
    println!("{t}\n");
    let mut t = table(&["SUBNET", "CIDR", "VPC", "ZONE", "DEFAULT"]);
    for s in &subnets {
        t.add_row(vec![
            s.subnet_id.clone(),
            s.cidr_block.to_string(),
            s.vpc_id.clone(),
            s.availability_zone.clone(),
            yes_no(s.default_for_az).to_owned(),
        ]);
    }
    println!("{t}\n");
    println!("{}", groups::groups_table(&groups));
    Ok(())
}

async fn create_vpc(
    client: &EcsClient,
    args: &VpcCreateArgs,
    output: Output,
) -> anyhow::Result<()> {
    let created = ec2(client, "CreateVpc", &[("CidrBlock", args.cidr.as_str())]).await?;
    let vpc = wire::vpc(&created["vpc"])?;
    if output == Output::Json {
        return print_json(&serde_json::to_value(&vpc)?);
    }
    println!("{}", vpc.vpc_id);
    Ok(())
}

async fn create_subnet(
    client: &EcsClient,
    args: SubnetCreateArgs,
    output: Output,
) -> anyhow::Result<()> {
    let vpc = match args.vpc {
        Some(id) => id,
        None => wire::default_vpc(client).await?,
    };
    let created = ec2(
        client,
        "CreateSubnet",
        &[("VpcId", vpc.as_str()), ("CidrBlock", args.cidr.as_str())],
    )
    .await?;
    let subnet = wire::subnet(&created["subnet"])?;
    if output == Output::Json {
        return print_json(&serde_json::to_value(&subnet)?);
    }
    println!("{}", subnet.subnet_id);
    Ok(())
}

async fn rm_subnet(client: &EcsClient, id: &str, output: Output) -> anyhow::Result<()> {
    ec2(client, "DeleteSubnet", &[("SubnetId", id)]).await?;
    if output == Output::Json {
        return print_json(&json!({"subnetId": id, "deleted": true}));
    }
    println!("Deleted subnet {id}");
    Ok(())
}
