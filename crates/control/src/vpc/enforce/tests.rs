//! What the agent is sent as tasks come and go and groups change.

use std::net::Ipv4Addr;
use std::time::Duration;

use model::agent::{FromAgent, SecurityUpdate, ToAgent};
use model::task::{Task, TaskStatus};
use model::vpc::Direction;
use serde_json::json;

use crate::test_support::Harness;
use crate::vpc::tests::{default_group, tcp_from_group};
use crate::vpc::GroupRef;

fn address(task: &Task) -> Ipv4Addr {
    task.attachments[0]
        .detail("privateIPv4Address")
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits for a `Security` message that satisfies `wanted`, skipping others.
async fn security(h: &mut Harness, wanted: impl Fn(&SecurityUpdate) -> bool) -> SecurityUpdate {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ToAgent::Security(update) = h.network.recv().await.unwrap() {
                if wanted(&update) {
                    return update;
                }
            }
        }
    })
    .await;
    found.expect("the expected security update within 10 s")
}

/// Waits for a `Names` message that satisfies `wanted`, skipping others.
async fn names(
    h: &mut Harness,
    wanted: impl Fn(&std::collections::BTreeMap<String, Vec<Ipv4Addr>>) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ToAgent::Names { names } = h.network.recv().await.unwrap() {
                if wanted(&names) {
                    return;
                }
            }
        }
    })
    .await
    .expect("the expected name table within 10 s")
}

#[tokio::test]
async fn members_follow_tasks_and_policies_follow_rules() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let c = h.control.clone();
    let default = default_group(&c).await.group_id;
    let web = c.create_security_group("web", "web", None).await.unwrap();
    let lb = c.create_security_group("lb", "lb", None).await.unwrap();
    c.authorize_security_group(
        &GroupRef::Id(web.group_id.clone()),
        Direction::Ingress,
        &[tcp_from_group(8080, &lb.group_id)],
    )
    .await
    .unwrap();

    let in_default = h
        .run(json!({"cluster": "demo", "taskDefinition": "web", "count": 2}))
        .await;
    let both: Vec<Ipv4Addr> = {
        let mut both: Vec<Ipv4Addr> = in_default.iter().map(address).collect();
        both.sort();
        both
    };
    security(&mut h, |u| u.members.get(&default) == Some(&both)).await;

    let subnet = c.describe_subnets(&[], &[]).await.unwrap()[0]
        .subnet
        .subnet_id
        .clone();
    let network = |group: &str| json!({"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}});
    let web_task = h
        .run(json!({"cluster": "demo", "taskDefinition": "web", "networkConfiguration": network(&web.group_id)}))
        .await
        .remove(0);
    // The web task's rules name the lb group, which has no member yet.
    let update = security(&mut h, |u| u.members.contains_key(&lb.group_id)).await;
    assert_eq!(update.members[&lb.group_id], Vec::<Ipv4Addr>::new());
    assert!(
        !update.members.contains_key(&web.group_id),
        "no rule names the web group: its members need no set"
    );
    let lb_task = h
        .run(json!({"cluster": "demo", "taskDefinition": "web", "networkConfiguration": network(&lb.group_id)}))
        .await
        .remove(0);
    security(&mut h, |u| {
        u.members.get(&lb.group_id) == Some(&vec![address(&lb_task)])
    })
    .await;

    // A rule change sends the policies of the group's tasks, and only theirs.
    c.revoke_security_group(
        &GroupRef::Id(web.group_id.clone()),
        Direction::Ingress,
        &[tcp_from_group(8080, &lb.group_id)],
    )
    .await
    .unwrap();
    let update = security(&mut h, |u| !u.policies.is_empty()).await;
    let web_id = web_task.task_arn.rsplit('/').next().unwrap();
    assert_eq!(update.policies.keys().collect::<Vec<_>>(), [web_id]);
    assert!(update.policies[web_id].ingress.is_empty());
    assert!(
        !update.members.contains_key(&lb.group_id),
        "no rule names the lb group any more"
    );

    // A stopped task leaves its groups.
    let gone = &in_default[0];
    h.report(Harness::status_report(&gone.task_arn, TaskStatus::Stopped))
        .await;
    let left = vec![address(&in_default[1])];
    security(&mut h, |u| u.members.get(&default) == Some(&left)).await;

    // After the agent's Hello, everything again.
    h.from_agent
        .send(FromAgent::Hello {
            agent_id: "agent-1".into(),
            version: model::agent::PROTOCOL_VERSION,
        })
        .unwrap();
    let update = security(&mut h, |u| u.policies.len() == 3).await;
    assert_eq!(update.members[&default], left);
}

#[tokio::test]
async fn service_names_answer_with_running_tasks_that_are_not_unhealthy() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let tasks = h
        .run(
            json!({"cluster": "demo", "taskDefinition": "web", "count": 2, "group": "service:Api"}),
        )
        .await;
    let (a, b) = (&tasks[0], &tasks[1]);
    h.report(Harness::status_report(&a.task_arn, TaskStatus::Running))
        .await;
    let only_a = vec![address(a)];
    names(&mut h, |n| n.get("api.demo.local") == Some(&only_a)).await;
    h.report(Harness::status_report(&b.task_arn, TaskStatus::Running))
        .await;
    names(&mut h, |n| n.get("api.demo.local").map(Vec::len) == Some(2)).await;
    // Stopping: out of the table at once, before it is gone.
    h.call(
        "StopTask",
        json!({"cluster": "demo", "task": a.task_arn, "reason": "scale in"}),
    )
    .await
    .unwrap();
    let only_b = vec![address(b)];
    names(&mut h, |n| n.get("api.demo.local") == Some(&only_b)).await;
    h.report(Harness::status_report(&b.task_arn, TaskStatus::Stopped))
        .await;
    names(&mut h, |n| !n.contains_key("api.demo.local")).await;
}
