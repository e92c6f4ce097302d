//! `skiff network sg create|ls|show|rm|allow|revoke`.
//!
//! Groups are named by id (`sg-...`) or by name. A name is looked up in the default VPC,
//! or in `--vpc`; the peer of a rule (`--from-group`, `--to-group`) in the VPC of the
//! group the rule is added to, the only VPC its peers may come from. Names are resolved
//! here, against one DescribeSecurityGroups answer, and every call after that names the
//! group by id, so `--vpc` works for every command.

use anyhow::{anyhow, bail};
use api::client::EcsClient;
use clap::{Args, Subcommand};
use model::vpc::{Direction, IpProtocol, SecurityGroup};
use serde_json::json;

use super::rules::{self, PeerArg, RuleArgs};
use super::wire::{self, ec2};
use crate::cli::{print_json, table, Output};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a security group: no ingress, all egress allowed.
    Create(CreateArgs),
    /// List security groups.
    Ls(LsArgs),
    /// Show a security group's ingress and egress rules.
    Show(GroupArgs),
    /// Delete a security group.
    Rm(GroupArgs),
    /// Add a rule: ingress with --from/--from-group, egress with --to/--to-group.
    Allow(RuleArgs),
    /// Remove a rule, given as it was added.
    Revoke(RuleArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Name of the group, unique in its VPC.
    name: String,
    /// What the group is for [default: its name].
    #[arg(long)]
    description: Option<String>,
    /// VPC of the group [default: the default VPC].
    #[arg(long)]
    vpc: Option<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only the groups of this VPC.
    #[arg(long)]
    vpc: Option<String>,
}

#[derive(Args)]
pub struct GroupArgs {
    /// Security group id (sg-...) or name.
    group: String,
    /// VPC to look the name up in [default: the default VPC].
    #[arg(long)]
    vpc: Option<String>,
}

pub async fn run(client: &EcsClient, command: GroupCommand, output: Output) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create(args) => create(client, args, output).await,
        GroupCommand::Ls(args) => ls(client, args.vpc.as_deref(), output).await,
        GroupCommand::Show(args) => show(client, &args, output).await,
        GroupCommand::Rm(args) => rm(client, &args, output).await,
        GroupCommand::Allow(args) => change(client, &args, true, output).await,
        GroupCommand::Revoke(args) => change(client, &args, false, output).await,
    }
}

/// `name (sg-...)`, how a group is shown to people.
fn label(group: &SecurityGroup) -> String {
    format!("{} ({})", group.group_name, group.group_id)
}

/// The name of the group `id` among `groups`.
fn name_of(groups: &[SecurityGroup], id: &str) -> Option<String> {
    groups
        .iter()
        .find(|g| g.group_id == id)
        .map(|g| g.group_name.clone())
}

/// The group `given` names: an id, or a name in the VPC `vpc_id` (`vpc_label` says how
/// to call that VPC in a message). Unknown and ambiguous names say what to do.
fn find<'a>(
    groups: &'a [SecurityGroup],
    given: &str,
    vpc_id: &str,
    vpc_label: &str,
) -> anyhow::Result<&'a SecurityGroup> {
    if given.starts_with("sg-") {
        return groups.iter().find(|g| g.group_id == given).ok_or_else(|| {
            anyhow!(
                "there is no security group {given}: list the groups with `skiff network sg ls`"
            )
        });
    }
    let (here, elsewhere): (Vec<_>, Vec<_>) = groups
        .iter()
        .filter(|g| g.group_name == given)
        .partition(|g| g.vpc_id == vpc_id);
    match (here.as_slice(), elsewhere.as_slice()) {
        ([group], _) => Ok(group),
        ([], []) => bail!(
            "there is no security group named {given} in {vpc_label}: create it with `skiff network sg create {given}`, or list the groups with `skiff network sg ls`"
        ),
        ([], others) => {
            let vpcs: Vec<&str> = others.iter().map(|g| g.vpc_id.as_str()).collect();
            bail!(
                "there is no security group named {given} in {vpc_label}, but {} has one: pass --vpc {}",
                vpcs.join(" and "),
                vpcs[0]
            )
        }
        (several, _) => {
            let ids: Vec<&str> = several.iter().map(|g| g.group_id.as_str()).collect();
            bail!(
                "{} security groups are named {given} in {vpc_label} ({}): name one by its id",
                ids.len(),
                ids.join(", ")
            )
        }
    }
}

/// Every group, and the one `given` names (a name looked up in `vpc`, else the default
/// VPC).
async fn resolve(
    client: &EcsClient,
    given: &str,
    vpc: Option<&str>,
) -> anyhow::Result<(Vec<SecurityGroup>, SecurityGroup)> {
    let groups = wire::groups(client).await?;
    let (vpc_id, vpc_label) = match vpc {
        Some(id) => (id.to_owned(), format!("VPC {id}")),
        None if given.starts_with("sg-") => (String::new(), String::new()),
        None => {
            let id = wire::default_vpc(client).await?;
            let label = format!("the default VPC {id}");
            (id, label)
        }
    };
    let group = find(&groups, given, &vpc_id, &vpc_label)?.clone();
    Ok((groups, group))
}

async fn create(client: &EcsClient, args: CreateArgs, output: Output) -> anyhow::Result<()> {
    let description = args.description.unwrap_or_else(|| args.name.clone());
    let mut members = vec![
        ("GroupName", args.name.as_str()),
        ("GroupDescription", description.as_str()),
    ];
    if let Some(vpc) = &args.vpc {
        members.push(("VpcId", vpc));
    }
    let created = ec2(client, "CreateSecurityGroup", &members).await?;
    let id = created["groupId"].as_str().unwrap_or_default();
    if output == Output::Json {
        return print_json(&json!({"groupId": id, "groupName": args.name}));
    }
    println!("{id}");
    Ok(())
}

async fn ls(client: &EcsClient, vpc: Option<&str>, output: Output) -> anyhow::Result<()> {
    let groups: Vec<SecurityGroup> = wire::groups(client)
        .await?
        .into_iter()
        .filter(|g| vpc.is_none_or(|v| g.vpc_id == v))
        .collect();
    if output == Output::Json {
        return print_json(&serde_json::to_value(&groups)?);
    }
    println!("{}", groups_table(&groups));
    Ok(())
}

/// Groups with their rule counts, as `skiff network ls` and `sg ls` show them.
pub fn groups_table(groups: &[SecurityGroup]) -> comfy_table::Table {
    let mut t = table(&["GROUP", "NAME", "VPC", "INGRESS", "EGRESS", "DESCRIPTION"]);
    for g in groups {
        t.add_row(vec![
            g.group_id.clone(),
            g.group_name.clone(),
            g.vpc_id.clone(),
            g.ingress.len().to_string(),
            g.egress.len().to_string(),
            g.description.clone(),
        ]);
    }
    t
}

async fn show(client: &EcsClient, args: &GroupArgs, output: Output) -> anyhow::Result<()> {
    let (groups, group) = resolve(client, &args.group, args.vpc.as_deref()).await?;
    if output == Output::Json {
        return print_json(&serde_json::to_value(&group)?);
    }
    println!("Group        {}", label(&group));
    println!("VPC          {}", group.vpc_id);
    println!("Description  {}", group.description);
    println!();
    let mut t = table(&["DIRECTION", "PROTOCOL", "PORTS", "PEER", "DESCRIPTION"]);
    for (direction, rules) in [("ingress", &group.ingress), ("egress", &group.egress)] {
        for rule in rules {
            t.add_row(vec![
                direction.to_owned(),
                rules::protocol_name(rule.protocol).to_owned(),
                rules::ports(rule),
                rules::peer_name(&rule.peer, |id| name_of(&groups, id)),
                rule.description.clone().unwrap_or_default(),
            ]);
        }
    }
    println!("{t}");
    Ok(())
}

async fn rm(client: &EcsClient, args: &GroupArgs, output: Output) -> anyhow::Result<()> {
    let (_, group) = resolve(client, &args.group, args.vpc.as_deref()).await?;
    ec2(
        client,
        "DeleteSecurityGroup",
        &[("GroupId", group.group_id.as_str())],
    )
    .await?;
    if output == Output::Json {
        return print_json(&json!({"groupId": group.group_id, "deleted": true}));
    }
    println!("Deleted security group {}", label(&group));
    Ok(())
}

/// `allow` (`add`) or `revoke` one rule.
async fn change(
    client: &EcsClient,
    args: &RuleArgs,
    add: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut permission = args.permission()?;
    let (groups, group) = resolve(client, &args.group, args.vpc.as_deref()).await?;
    let (direction, peer) = args.peer();
    match peer {
        PeerArg::Cidr(cidr) => permission.cidrs.push((cidr, None)),
        PeerArg::Group(given) => {
            let label = format!("the group's VPC {}", group.vpc_id);
            let peer = find(&groups, &given, &group.vpc_id, &label)?;
            permission.groups.push((peer.group_id.clone(), None));
        }
    }
    let action = match (add, direction) {
        (true, Direction::Ingress) => "AuthorizeSecurityGroupIngress",
        (true, Direction::Egress) => "AuthorizeSecurityGroupEgress",
        (false, Direction::Ingress) => "RevokeSecurityGroupIngress",
        (false, Direction::Egress) => "RevokeSecurityGroupEgress",
    };
    let mut members = vec![("GroupId".to_owned(), group.group_id.clone())];
    members.extend(rules::permission_members(&permission));
    let members: Vec<(&str, &str)> = members
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let rule = permission.rules()?.remove(0);
    ec2(client, action, &members).await?;

    let (direction, preposition) = match direction {
        Direction::Ingress => ("ingress", "from"),
        Direction::Egress => ("egress", "to"),
    };
    let done = if add { "allowed" } else { "revoked" };
    if output == Output::Json {
        return print_json(&json!({
            "groupId": group.group_id,
            "direction": direction,
            "rule": rule,
            "change": done,
        }));
    }
    let ports = match rule.protocol {
        IpProtocol::All => String::new(),
        _ => format!(" {}", rules::ports(&rule)),
    };
    println!(
        "{}: {done} {direction} {}{ports} {preposition} {}",
        label(&group),
        rules::protocol_name(rule.protocol),
        rules::peer_name(&rule.peer, |id| name_of(&groups, id)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, name: &str, vpc: &str) -> SecurityGroup {
        SecurityGroup {
            group_id: id.into(),
            ..SecurityGroup::new(name, name, vpc)
        }
    }

    #[test]
    fn groups_are_found_by_id_or_by_name_in_a_vpc() {
        let groups = [
            group("sg-1", "web", "vpc-a"),
            group("sg-2", "web", "vpc-b"),
            group("sg-3", "db", "vpc-b"),
            group("sg-4", "twin", "vpc-a"),
            group("sg-5", "twin", "vpc-a"),
        ];
        let find = |given, vpc| find(&groups, given, vpc, "VPC x").map(|g| g.group_id.clone());
        assert_eq!(find("sg-3", "vpc-a").unwrap(), "sg-3", "ids are global");
        assert_eq!(find("web", "vpc-a").unwrap(), "sg-1");
        assert_eq!(find("web", "vpc-b").unwrap(), "sg-2");

        let unknown_id = find("sg-9", "vpc-a").unwrap_err().to_string();
        assert!(unknown_id.contains("skiff network sg ls"), "{unknown_id}");
        let unknown = find("cache", "vpc-a").unwrap_err().to_string();
        assert!(
            unknown.contains("no security group named cache in VPC x"),
            "{unknown}"
        );
        assert!(
            unknown.contains("skiff network sg create cache"),
            "{unknown}"
        );
        let elsewhere = find("db", "vpc-a").unwrap_err().to_string();
        assert!(elsewhere.contains("pass --vpc vpc-b"), "{elsewhere}");
        let ambiguous = find("twin", "vpc-a").unwrap_err().to_string();
        assert!(ambiguous.contains("sg-4, sg-5"), "{ambiguous}");
    }
}
