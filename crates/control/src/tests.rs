//! Operation-level tests of the control plane.

use model::agent::{ContainerReport, FromAgent, TaskReport, ToAgent};
use model::task::TaskStatus;
use serde_json::json;

use crate::test_support::Harness;

#[tokio::test]
async fn clusters_lifecycle() {
    let h = Harness::new().await;
    let created = h
        .call(
            "CreateCluster",
            json!({"clusterName": "demo", "tags": [{"key": "team", "value": "a"}]}),
        )
        .await
        .unwrap();
    assert_eq!(created["cluster"]["status"], "ACTIVE");
    assert_eq!(
        created["cluster"]["clusterArn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/demo"
    );
    let listed = h.call("ListClusters", json!({})).await.unwrap();
    assert_eq!(listed["clusterArns"].as_array().unwrap().len(), 1);
    let described = h
        .call(
            "DescribeClusters",
            json!({"clusters": ["demo", "nope"], "include": ["TAGS"]}),
        )
        .await
        .unwrap();
    assert_eq!(described["clusters"][0]["tags"][0]["key"], "team");
    assert_eq!(described["failures"][0]["reason"], "MISSING");
    let err = h
        .call("CreateCluster", json!({"clusterName": "bad name"}))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    h.call("DeleteCluster", json!({"cluster": "demo"}))
        .await
        .unwrap();
    let listed = h.call("ListClusters", json!({})).await.unwrap();
    assert!(listed["clusterArns"].as_array().unwrap().is_empty());
    let err = h
        .call("DescribeTasks", json!({"cluster": "demo", "tasks": ["x"]}))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ClusterNotFoundException");
}

#[tokio::test]
async fn task_definition_revisions() {
    let h = Harness::new().await;
    h.setup_cluster_and_family().await;
    h.setup_cluster_and_family().await;
    let d = h
        .call("DescribeTaskDefinition", json!({"taskDefinition": "web"}))
        .await
        .unwrap();
    assert_eq!(d["taskDefinition"]["revision"], 2);
    h.call(
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "web:2"}),
    )
    .await
    .unwrap();
    let d = h
        .call("DescribeTaskDefinition", json!({"taskDefinition": "web"}))
        .await
        .unwrap();
    assert_eq!(d["taskDefinition"]["revision"], 1, "latest ACTIVE revision");
    let arns = h
        .call("ListTaskDefinitions", json!({"status": "INACTIVE"}))
        .await
        .unwrap();
    assert_eq!(
        arns["taskDefinitionArns"][0],
        "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2"
    );
    let families = h
        .call("ListTaskDefinitionFamilies", json!({}))
        .await
        .unwrap();
    assert_eq!(families["families"], json!(["web"]));
    let err = h
        .call("DeregisterTaskDefinition", json!({"taskDefinition": "web"}))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ClientException");
    let err = h
        .call(
            "RunTask",
            json!({"cluster": "demo", "taskDefinition": "web:2"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("inactive"), "{err}");
}

#[tokio::test]
async fn run_report_and_stop() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let tasks = h
        .run(json!({"cluster": "demo", "taskDefinition": "web", "count": 2, "launchType": "FARGATE",
                    "overrides": {"containerOverrides": [{"name": "app", "environment": [{"name": "A", "value": "1"}]}]}}))
        .await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].last_status, TaskStatus::Provisioning);
    let ips: Vec<_> = tasks
        .iter()
        .map(|t| {
            t.attachments[0]
                .detail("privateIPv4Address")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(ips[0], ips[1], "each task has its own address");
    for _ in 0..2 {
        match h.to_agent.recv().await.unwrap() {
            ToAgent::Launch { plan } => {
                assert_eq!(
                    plan.containers[0].environment,
                    vec![("A".into(), "1".into())]
                );
                assert_eq!(plan.cpu_units, 256);
            }
            other => panic!("expected a launch, got {other:?}"),
        }
    }

    let arn = tasks[0].task_arn.clone();
    h.report(TaskReport {
        connectivity_at: Some(1.0),
        mac_address: Some("0a:58:00:00:00:01".into()),
        ..Harness::status_report(&arn, TaskStatus::Running)
    })
    .await;
    let t = h.describe(&arn).await;
    assert_eq!(t.last_status, TaskStatus::Running);
    assert_eq!(t.attachments[0].status, "ATTACHED");
    assert_eq!(
        t.attachments[0].detail("macAddress"),
        Some("0a:58:00:00:00:01")
    );
    // States never go back.
    h.report(TaskReport {
        pull_started_at: Some(2.0),
        ..Harness::status_report(&arn, TaskStatus::Pending)
    })
    .await;
    assert_eq!(h.describe(&arn).await.last_status, TaskStatus::Running);

    let stopped = h
        .call(
            "StopTask",
            json!({"cluster": "demo", "task": arn, "reason": "done"}),
        )
        .await
        .unwrap();
    assert_eq!(stopped["task"]["desiredStatus"], "STOPPED");
    assert_eq!(stopped["task"]["stopCode"], "UserInitiated");
    assert!(
        matches!(h.to_agent.recv().await.unwrap(), ToAgent::Stop { reason, .. } if reason == "done")
    );
    h.report(TaskReport {
        stop_code: Some("EssentialContainerExited".into()),
        stopped_reason: Some("Essential container in task exited".into()),
        containers: vec![ContainerReport {
            name: "app".into(),
            last_status: "STOPPED".into(),
            exit_code: Some(143),
            ..Default::default()
        }],
        ..Harness::status_report(&arn, TaskStatus::Stopped)
    })
    .await;
    let t = h.describe(&arn).await;
    assert_eq!(t.last_status, TaskStatus::Stopped);
    assert_eq!(
        t.stop_code.as_deref(),
        Some("UserInitiated"),
        "the first cause wins"
    );
    assert_eq!(t.stopped_reason.as_deref(), Some("done"));
    assert_eq!(t.containers[0].exit_code, Some(143));
    assert!(t.stopped_at.is_some());
    assert_eq!(t.attachments[0].status, "DELETED");

    let running = h
        .call("ListTasks", json!({"cluster": "demo"}))
        .await
        .unwrap();
    assert_eq!(running["taskArns"].as_array().unwrap().len(), 1);
    let stopped = h
        .call(
            "ListTasks",
            json!({"cluster": "demo", "desiredStatus": "STOPPED"}),
        )
        .await
        .unwrap();
    assert_eq!(stopped["taskArns"], json!([arn]));
    let err = h
        .call("DeleteCluster", json!({"cluster": "demo"}))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ClusterContainsTasksException");
}

#[tokio::test]
async fn client_token_is_idempotent() {
    let h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let body = json!({"cluster": "demo", "taskDefinition": "web", "clientToken": "tok-1"});
    let first = h.run(body.clone()).await;
    let again = h.run(body).await;
    assert_eq!(first[0].task_arn, again[0].task_arn);
    let err = h
        .call(
            "RunTask",
            json!({"cluster": "demo", "taskDefinition": "web", "clientToken": "tok-1", "count": 2}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ConflictException");
}

#[tokio::test]
async fn run_task_validation() {
    let h = Harness::new().await;
    h.setup_cluster_and_family().await;
    for (body, expect) in [
        (
            json!({"cluster": "demo", "taskDefinition": "web", "count": 11}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "demo", "taskDefinition": "web", "launchType": "EC2"}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "demo", "taskDefinition": "nope"}),
            "ClientException",
        ),
        (
            json!({"cluster": "ghost", "taskDefinition": "web"}),
            "ClusterNotFoundException",
        ),
        (
            json!({"cluster": "demo", "taskDefinition": "web", "overrides": {"cpu": "256", "memory": "4096"}}),
            "ClientException",
        ),
        (
            json!({"cluster": "demo", "taskDefinition": "web", "overrides": {"containerOverrides": [{"name": "x"}]}}),
            "InvalidParameterException",
        ),
    ] {
        let err = h.call("RunTask", body.clone()).await.unwrap_err();
        assert_eq!(err.type_name(), expect, "{body}: {err}");
    }
    let described = h
        .call("DescribeTasks", json!({"cluster": "demo", "tasks": []}))
        .await
        .unwrap_err();
    assert_eq!(described.type_name(), "InvalidParameterException");
}

#[tokio::test]
async fn hello_is_answered_with_sync() {
    let mut h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let tasks = h
        .run(json!({"cluster": "demo", "taskDefinition": "web"}))
        .await;
    let _launch = h.to_agent.recv().await.unwrap();
    h.from_agent
        .send(FromAgent::Hello {
            agent_id: "local".into(),
            version: 1,
        })
        .unwrap();
    match h.to_agent.recv().await.unwrap() {
        ToAgent::Sync { tasks: plans } => {
            assert_eq!(plans.len(), 1);
            assert_eq!(plans[0].task_arn, tasks[0].task_arn);
        }
        other => panic!("expected a sync, got {other:?}"),
    }
}

#[tokio::test]
async fn tags_on_every_resource() {
    let h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let task = &h
        .run(json!({"cluster": "demo", "taskDefinition": "web"}))
        .await[0];
    for arn in [
        "arn:aws:ecs:us-east-1:000000000000:cluster/demo".to_string(),
        "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1".to_string(),
        task.task_arn.clone(),
    ] {
        h.call("TagResource", json!({"resourceArn": arn, "tags": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}))
            .await
            .unwrap();
        h.call(
            "UntagResource",
            json!({"resourceArn": arn, "tagKeys": ["a"]}),
        )
        .await
        .unwrap();
        let tags = h
            .call("ListTagsForResource", json!({"resourceArn": arn}))
            .await
            .unwrap();
        assert_eq!(tags["tags"], json!([{"key": "b", "value": "2"}]), "{arn}");
    }
    let err = h
        .call(
            "ListTagsForResource",
            json!({"resourceArn": "arn:aws:ecs:us-east-1:000000000000:task/demo/ffff"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ResourceNotFoundException");
}

#[tokio::test]
async fn concurrent_run_tasks_on_one_cluster_all_succeed() {
    let h = Harness::new().await;
    h.setup_cluster_and_family().await;
    let calls = (0..10).map(|_| {
        h.call(
            "RunTask",
            json!({"cluster": "demo", "taskDefinition": "web", "count": 10}),
        )
    });
    let results = futures::future::join_all(calls).await;
    let mut addresses = std::collections::HashSet::new();
    for result in results {
        let out = result.expect("no RunTask is refused by another");
        for task in out["tasks"].as_array().unwrap() {
            let ip = task["attachments"][0]["details"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == "privateIPv4Address")
                .unwrap()["value"]
                .clone();
            assert!(addresses.insert(ip), "addresses are unique");
        }
    }
    assert_eq!(addresses.len(), 100);
}
