//! RunTask with bridge-mode definitions, against a control plane on an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use model::agent::{NetworkMode, Protocol, TaskReport};
use model::arn::Scope;
use model::ops::Request;
use model::task::{Task, TaskStatus};
use serde_json::{json, Value};

use crate::{Control, ControlConfig, HostPortRange};

async fn start(store: Arc<dyn store::Store>) -> Control {
    let config = ControlConfig {
        scope: Scope {
            region: "us-east-1".into(),
            account: "000000000000".into(),
        },
        subnet: "10.1.0.0/24".parse().unwrap(),
        stopped_task_retention: Duration::from_secs(3600),
        host_port_range: HostPortRange::new(40000, 40009).unwrap(),
    };
    Control::new(store, config).await.unwrap()
}

async fn call(control: &Control, op: &str, body: Value) -> Result<Value, model::EcsError> {
    let request = Request::parse(op, body.to_string().as_bytes()).unwrap();
    control.handle(request).await
}

async fn setup(control: &Control) {
    call(control, "CreateCluster", json!({"clusterName": "demo"}))
        .await
        .unwrap();
    let registered = call(
        control,
        "RegisterTaskDefinition",
        json!({
            "family": "web", "cpu": "256", "memory": "512",
            "requiresCompatibilities": ["EC2"], "networkMode": "bridge",
            "containerDefinitions": [{
                "name": "app", "image": "busybox",
                "portMappings": [
                    {"containerPort": 80, "hostPort": 8080},
                    {"containerPort": 53, "protocol": "udp"}
                ]
            }]
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        registered["taskDefinition"]["compatibilities"],
        json!(["EXTERNAL", "EC2"])
    );
}

fn run_ec2() -> Value {
    json!({"cluster": "demo", "taskDefinition": "web", "launchType": "EC2"})
}

/// Runs one task; its record's plan, or the call's failure.
async fn run(control: &Control, body: Value) -> Result<Task, Value> {
    let out = call(control, "RunTask", body).await.unwrap();
    match out["tasks"].as_array().unwrap().first() {
        Some(task) => Ok(serde_json::from_value(task.clone()).unwrap()),
        None => Err(out["failures"][0].clone()),
    }
}

async fn stopped(control: &Control, task: &Task) {
    control
        .apply_report(TaskReport {
            task_arn: task.task_arn.clone(),
            last_status: Some(TaskStatus::Stopped),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn bridge_tasks_publish_ports_that_no_other_live_task_holds() {
    let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::in_memory().unwrap());
    let control = start(store.clone()).await;
    setup(&control).await;

    let first = run(&control, run_ec2()).await.unwrap();
    assert_eq!(first.launch_type, "EC2");
    assert!(first.attachments.is_empty(), "bridge tasks have no ENI");
    let bindings = serde_json::to_value(&first.containers[0].network_bindings).unwrap();
    assert_eq!(
        bindings,
        json!([
            {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 8080, "protocol": "tcp"},
            {"bindIP": "0.0.0.0", "containerPort": 53, "hostPort": 40000, "protocol": "udp"}
        ])
    );
    let record = control
        .task_record("demo", first.id())
        .await
        .unwrap()
        .unwrap();
    let network = &record.plan.network;
    assert_eq!(network.mode, NetworkMode::Bridge);
    assert!(network.security_groups.is_empty());
    let policy = network.security.as_ref().expect("a bridge policy");
    let published: Vec<_> = policy.ingress[1..]
        .iter()
        .map(|rule| (rule.protocol, rule.ports, rule.sources[0].to_string()))
        .collect();
    assert_eq!(
        published,
        [
            (Protocol::Tcp, Some((80, 80)), "0.0.0.0/0".to_owned()),
            (Protocol::Udp, Some((53, 53)), "0.0.0.0/0".to_owned()),
        ]
    );

    let refused = run(&control, run_ec2()).await.unwrap_err();
    assert_eq!(refused["reason"], "RESOURCE:PORTS");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("8080/tcp") && detail.contains(first.id()),
        "{detail}"
    );

    // A restarted control plane still knows who holds the port.
    let control = start(store).await;
    assert!(run(&control, run_ec2()).await.is_err());
    stopped(&control, &first).await;
    let second = run(&control, run_ec2()).await.unwrap();
    let ports: Vec<u16> = second.containers[0]
        .network_bindings
        .iter()
        .map(|b| b.host_port)
        .collect();
    assert_eq!(ports, [8080, 40000], "both ports are free again");
}

#[tokio::test]
async fn bridge_definitions_run_only_as_ec2_tasks_without_network_configuration() {
    let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::in_memory().unwrap());
    let control = start(store).await;
    setup(&control).await;
    let mut fargate = run_ec2();
    fargate["launchType"] = json!("FARGATE");
    let error = call(&control, "RunTask", fargate).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "Task definition does not support launch_type FARGATE."
    );
    let mut with_network = run_ec2();
    with_network["networkConfiguration"] =
        json!({"awsvpcConfiguration": {"subnets": ["subnet-default"]}});
    let error = call(&control, "RunTask", with_network).await.unwrap_err();
    assert!(error
        .to_string()
        .starts_with("Network Configuration is not valid"));
    let mut default_launch = run_ec2();
    default_launch.as_object_mut().unwrap().remove("launchType");
    let task = run(&control, default_launch).await.unwrap();
    assert_eq!(task.launch_type, "EC2");
    let listed = call(
        &control,
        "ListTasks",
        json!({"cluster": "demo", "launchType": "FARGATE"}),
    )
    .await
    .unwrap();
    assert_eq!(listed["taskArns"], json!([]));
}
