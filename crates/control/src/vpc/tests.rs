//! The VPC records, the default network, and RunTask's network checks.

use std::sync::Arc;
use std::time::Duration;

use model::agent::{Protocol, ToAgent};
use model::arn::Scope;
use model::task::TaskStatus;
use model::vpc::{
    Direction, Filter, IpPermission, IpProtocol, RulePeer, SecurityGroup, SecurityGroupRule,
};
use serde_json::json;

use super::{GroupRef, NetworkError, PermissionRequest};
use crate::test_support::Harness;
use crate::{Control, ControlConfig};

fn config(subnet: &str) -> ControlConfig {
    ControlConfig {
        scope: Scope {
            region: "us-east-1".into(),
            account: "000000000000".into(),
        },
        subnet: subnet.parse().unwrap(),
        stopped_task_retention: Duration::from_secs(3600),
        host_port_range: crate::HostPortRange::default(),
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter {
        name: name.into(),
        values: vec![value.into()],
    }
}

pub(super) fn tcp_from_group(port: i32, group: &str) -> PermissionRequest {
    PermissionRequest {
        permission: IpPermission::new(IpProtocol::Tcp, Some(port), Some(port)).unwrap(),
        groups: vec![(GroupRef::Id(group.into()), None)],
    }
}

fn tcp_from_cidr(port: i32, cidr: &str) -> PermissionRequest {
    let mut permission = IpPermission::new(IpProtocol::Tcp, Some(port), Some(port)).unwrap();
    permission.cidrs.push((cidr.parse().unwrap(), None));
    PermissionRequest {
        permission,
        groups: vec![],
    }
}

pub(super) async fn default_group(control: &Control) -> SecurityGroup {
    let vpc = control.default_vpc().await.unwrap();
    let groups = control
        .describe_security_groups(
            &[],
            &[],
            &[
                filter("vpc-id", &vpc.vpc_id),
                filter("group-name", "default"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    groups.into_iter().next().unwrap()
}

#[tokio::test]
async fn first_start_creates_the_default_network_once() {
    let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::in_memory().unwrap());
    let control = Control::new(store.clone(), config("10.1.0.0/24"))
        .await
        .unwrap();
    let vpcs = control.describe_vpcs(&[], &[]).await.unwrap();
    assert_eq!(vpcs.len(), 1);
    let vpc = &vpcs[0];
    assert!(vpc.is_default && vpc.vpc_id.starts_with("vpc-") && vpc.vpc_id.len() == 21);
    assert_eq!(vpc.cidr_block.to_string(), "10.1.0.0/24");
    let subnets = control.describe_subnets(&[], &[]).await.unwrap();
    assert_eq!(subnets.len(), 1);
    let subnet = &subnets[0];
    assert_eq!(subnet.subnet.cidr_block, vpc.cidr_block);
    assert!(subnet.subnet.default_for_az && !subnet.subnet.map_public_ip_on_launch);
    assert_eq!(subnet.subnet.availability_zone, "us-east-1a");
    assert_eq!(
        subnet.available_ip_address_count, 253,
        "254 hosts less the gateway"
    );
    let group = default_group(&control).await;
    assert_eq!(
        (group.group_name.as_str(), group.description.as_str()),
        ("default", "default VPC security group")
    );
    assert_eq!(
        group.ingress,
        [SecurityGroupRule::allow_all(RulePeer::Group(
            group.group_id.clone()
        ))]
    );
    assert_eq!(
        group.egress,
        [SecurityGroupRule::allow_all(RulePeer::Cidr(
            Default::default()
        ))]
    );

    let again = Control::new(store.clone(), config("10.1.0.0/24"))
        .await
        .unwrap();
    assert_eq!(again.describe_vpcs(&[], &[]).await.unwrap(), vpcs);
    assert_eq!(again.describe_subnets(&[], &[]).await.unwrap(), subnets);

    // A server restarted on another task network moves its default VPC and subnet.
    let moved = Control::new(store, config("10.2.0.0/16")).await.unwrap();
    let [vpc] = &moved.describe_vpcs(&[], &[]).await.unwrap()[..] else {
        panic!("one VPC expected");
    };
    assert_eq!(vpc.cidr_block.to_string(), "10.2.0.0/16");
    let subnets = moved.describe_subnets(&[], &[]).await.unwrap();
    assert_eq!(subnets[0].subnet.cidr_block.to_string(), "10.2.0.0/16");
}

#[tokio::test]
async fn vpcs_and_subnets_validate_their_cidrs() {
    let h = Harness::new().await;
    let c = &h.control;
    let code = |e: NetworkError| e.code();
    assert_eq!(
        code(c.create_vpc("10.0.0.0/8").await.unwrap_err()),
        "InvalidVpc.Range"
    );
    assert_eq!(
        code(c.create_vpc("bogus").await.unwrap_err()),
        "InvalidParameterValue"
    );
    let vpc = c.create_vpc("10.50.0.0/16").await.unwrap();
    assert!(!vpc.is_default);
    let groups = c
        .describe_security_groups(&[], &[], &[filter("vpc-id", &vpc.vpc_id)])
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "every VPC gets a default group");
    assert!(groups[0].is_default());

    let a = c
        .create_subnet(&vpc.vpc_id, "10.50.1.0/24", None)
        .await
        .unwrap();
    assert_eq!(a.available_ip_address_count, 254);
    assert!(!a.subnet.default_for_az);
    let err = c
        .create_subnet(&vpc.vpc_id, "10.50.1.128/25", None)
        .await
        .unwrap_err();
    assert_eq!(code(err), "InvalidSubnet.Conflict");
    let err = c
        .create_subnet(&vpc.vpc_id, "10.51.0.0/24", None)
        .await
        .unwrap_err();
    assert_eq!(code(err), "InvalidSubnet.Range");
    let err = c
        .create_subnet("vpc-00000000000000000", "10.50.2.0/24", None)
        .await
        .unwrap_err();
    assert_eq!(code(err), "InvalidVpcID.NotFound");

    let listed = c
        .describe_subnets(&[], &[filter("vpc-id", &vpc.vpc_id)])
        .await
        .unwrap();
    assert_eq!(listed, std::slice::from_ref(&a));
    let err = c
        .describe_subnets(&[], &[filter("color", "red")])
        .await
        .unwrap_err();
    assert_eq!(code(err), "InvalidParameterValue");
    let err = c
        .describe_vpcs(&["vpc-nope".into()], &[])
        .await
        .unwrap_err();
    assert_eq!(code(err), "InvalidVpcID.NotFound");
    let defaults = c
        .describe_vpcs(&[], &[filter("is-default", "true")])
        .await
        .unwrap();
    assert_eq!(defaults.len(), 1);
    assert_ne!(defaults[0].vpc_id, vpc.vpc_id);

    c.delete_subnet(&a.subnet.subnet_id).await.unwrap();
    let err = c.delete_subnet(&a.subnet.subnet_id).await.unwrap_err();
    assert_eq!(code(err), "InvalidSubnetID.NotFound");
}

#[tokio::test]
async fn security_group_rules_are_deduplicated_and_revoked() {
    let h = Harness::new().await;
    let c = &h.control;
    let web = c.create_security_group("web", "web", None).await.unwrap();
    assert!(web.group_id.starts_with("sg-") && web.group_id.len() == 20);
    assert!(web.ingress.is_empty() && web.egress.len() == 1);
    let err = c
        .create_security_group("web", "again", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidGroup.Duplicate");
    let db = c.create_security_group("db", "db", None).await.unwrap();
    let db_ref = GroupRef::Id(db.group_id.clone());

    let added = c
        .authorize_security_group(
            &db_ref,
            Direction::Ingress,
            &[
                tcp_from_group(5432, &web.group_id),
                tcp_from_cidr(5432, "10.0.0.0/8"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(added.len(), 2);
    let err = c
        .authorize_security_group(
            &db_ref,
            Direction::Ingress,
            &[tcp_from_cidr(5432, "10.0.0.0/8")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidPermission.Duplicate");
    let by_name = PermissionRequest {
        groups: vec![(GroupRef::Name("web".into()), None)],
        ..tcp_from_group(6432, &web.group_id)
    };
    c.authorize_security_group(&GroupRef::Name("db".into()), Direction::Ingress, &[by_name])
        .await
        .unwrap();
    let err = c
        .authorize_security_group(&db_ref, Direction::Ingress, &[tcp_from_group(1, "sg-nope")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidGroup.NotFound");

    let described = c
        .describe_security_groups(std::slice::from_ref(&db.group_id), &[], &[])
        .await
        .unwrap();
    let [db_now] = &described[..] else {
        panic!("one group expected")
    };
    assert_eq!(db_now.ingress.len(), 3, "{:?}", db_now.ingress);
    assert_eq!(model::vpc::permissions(&db_now.ingress).len(), 2);

    let err = c
        .revoke_security_group(
            &db_ref,
            Direction::Ingress,
            &[tcp_from_cidr(22, "10.0.0.0/8")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidPermission.NotFound");
    c.revoke_security_group(
        &db_ref,
        Direction::Ingress,
        &[tcp_from_cidr(5432, "10.0.0.0/8")],
    )
    .await
    .unwrap();
    let all_egress = PermissionRequest {
        permission: IpPermission {
            cidrs: vec![("0.0.0.0/0".parse().unwrap(), None)],
            ..IpPermission::new(IpProtocol::All, None, None).unwrap()
        },
        groups: vec![],
    };
    c.revoke_security_group(&db_ref, Direction::Egress, &[all_egress])
        .await
        .unwrap();
    let db_now = c.security_group(&db.group_id).await.unwrap().value;
    assert!(db_now.egress.is_empty());
    assert_eq!(db_now.ingress.len(), 2);

    let err = c
        .delete_security_group(&GroupRef::Id(web.group_id.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DependencyViolation", "db's rules name web");
    let default = default_group(c).await;
    let err = c
        .delete_security_group(&GroupRef::Id(default.group_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CannotDelete");
    c.delete_security_group(&db_ref).await.unwrap();
    c.delete_security_group(&GroupRef::Name("web".into()))
        .await
        .unwrap();
    let err = c.delete_security_group(&db_ref).await.unwrap_err();
    assert_eq!(err.code(), "InvalidGroup.NotFound");
}

async fn run(
    h: &Harness,
    network: serde_json::Value,
) -> Result<serde_json::Value, model::EcsError> {
    h.call(
        "RunTask",
        json!({"cluster": "demo", "taskDefinition": "web", "networkConfiguration": network}),
    )
    .await
}

#[tokio::test]
async fn run_task_checks_and_records_its_network() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let c = h.control.clone();
    let default = default_group(&c).await;
    let default_subnet = c.describe_subnets(&[], &[]).await.unwrap()[0]
        .subnet
        .clone();

    let tasks = h
        .run(json!({"cluster": "demo", "taskDefinition": "web"}))
        .await;
    let Some(ToAgent::Launch { plan }) = h.to_agent.recv().await else {
        panic!("a launch expected")
    };
    assert_eq!(plan.network.subnet_id, default_subnet.subnet_id);
    assert_eq!(
        plan.network.security_groups,
        std::slice::from_ref(&default.group_id)
    );
    assert_eq!(
        tasks[0].attachments[0].detail("subnetId"),
        Some(default_subnet.subnet_id.as_str())
    );
    // The default group's rules, its members named as a group, travel with the plan.
    let policy = plan.network.security.clone().expect("a compiled policy");
    assert_eq!(policy.ingress.len(), 1);
    assert_eq!(policy.ingress[0].protocol, Protocol::All);
    assert_eq!(
        policy.ingress[0].groups,
        std::slice::from_ref(&default.group_id)
    );
    assert!(policy.ingress[0].sources.is_empty());
    assert_eq!(
        policy.egress[0].sources,
        ["0.0.0.0/0".parse::<ipnet::Ipv4Net>().unwrap()]
    );

    let err = run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": ["subnet-x"]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    assert_eq!(
        err.to_string(),
        "Error retrieving subnet information for [subnet-x]: The subnet ID 'subnet-x' does not exist"
    );
    let err = run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": [default_subnet.subnet_id], "securityGroups": ["sg-x"]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Error retrieving security group information for [sg-x]: The security group 'sg-x' does not exist"
    );
    let err = run(&h, json!({"awsvpcConfiguration": {"subnets": []}}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("subnets can not be empty"),
        "{err}"
    );

    let other = c.create_vpc("10.60.0.0/16").await.unwrap();
    let other_subnet = c
        .create_subnet(&other.vpc_id, "10.60.0.0/24", None)
        .await
        .unwrap();
    let err = run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": [other_subnet.subnet.subnet_id]}}),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("only the default VPC's subnets"),
        "{err}"
    );
    let other_group = c
        .create_security_group("other", "other", Some(&other.vpc_id))
        .await
        .unwrap();
    let err = run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": [default_subnet.subnet_id], "securityGroups": [other_group.group_id]}}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("same VPC"), "{err}");

    let web = c.create_security_group("web", "web", None).await.unwrap();
    let out = run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": [default_subnet.subnet_id], "securityGroups": [web.group_id]}}),
    )
    .await
    .unwrap();
    let arn = out["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    let Some(ToAgent::Launch { plan }) = h.to_agent.recv().await else {
        panic!("a launch expected")
    };
    assert_eq!(
        plan.network.security_groups,
        std::slice::from_ref(&web.group_id)
    );

    let web_ref = GroupRef::Id(web.group_id.clone());
    let err = c.delete_security_group(&web_ref).await.unwrap_err();
    assert_eq!(err.code(), "DependencyViolation");
    assert!(err.to_string().contains(&plan.task_id), "{err}");
    let err = c
        .delete_subnet(&default_subnet.subnet_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DependencyViolation");

    h.report(Harness::status_report(&arn, TaskStatus::Stopped))
        .await;
    c.delete_security_group(&web_ref).await.unwrap();
    h.report(Harness::status_report(
        tasks[0].task_arn.as_str(),
        TaskStatus::Stopped,
    ))
    .await;
    c.delete_subnet(&default_subnet.subnet_id).await.unwrap();
    let err = run(&h, serde_json::Value::Null).await.unwrap_err();
    assert!(err.to_string().contains("has no default subnet"), "{err}");
}

#[tokio::test]
async fn tasks_in_another_subnet_get_its_addresses() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let c = h.control.clone();
    let default_subnet = c.describe_subnets(&[], &[]).await.unwrap()[0]
        .subnet
        .clone();
    c.delete_subnet(&default_subnet.subnet_id).await.unwrap();
    let upper = c
        .create_subnet(&default_subnet.vpc_id, "10.1.0.128/25", None)
        .await
        .unwrap();
    assert_eq!(upper.available_ip_address_count, 126);
    run(
        &h,
        json!({"awsvpcConfiguration": {"subnets": [upper.subnet.subnet_id]}}),
    )
    .await
    .unwrap();
    let Some(ToAgent::Launch { plan }) = h.to_agent.recv().await else {
        panic!("a launch expected")
    };
    assert_eq!(plan.network.address.to_string(), "10.1.0.129");
    assert_eq!(plan.network.prefix_len, 24, "the whole VPC is on-link");
    assert_eq!(plan.network.gateway.to_string(), "10.1.0.1");
    let now = c
        .describe_subnets(std::slice::from_ref(&upper.subnet.subnet_id), &[])
        .await
        .unwrap();
    assert_eq!(now[0].available_ip_address_count, 125);
}
