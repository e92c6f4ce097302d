//! Container health checks against the real thing: `runc exec` into running containers.
//! Run as root. Intervals are far below ECS's 5 s minimum: the supervisor takes any
//! duration, and the tests stay quick.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use sandbox::{
    Condition, ContainerSpec, ContainerState, Dependency, HealthCheck, HealthStatus, StopCode,
    SupervisorClient, TaskPhase, TaskStatus,
};

/// Runs until stopped, and exits at once on SIGTERM.
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

fn check(script: &str, retries: u32) -> HealthCheck {
    HealthCheck {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        retries,
        start_period: Duration::ZERO,
    }
}

fn checked(harness: &Harness, name: &str, script: &str, health: HealthCheck) -> ContainerSpec {
    let mut container = harness.container(name, script);
    container.health_check = Some(health);
    container
}

fn health(status: &TaskStatus, container: &str) -> Option<HealthStatus> {
    status
        .container(container)
        .and_then(|c| c.health.as_ref())
        .map(|h| h.status)
}

async fn stop(client: &SupervisorClient) -> TaskStatus {
    client.stop("test done").await.unwrap();
    wait_stopped(client).await
}

#[tokio::test]
async fn a_passing_check_runs_with_the_container_env_and_cwd() {
    let harness = Harness::new();
    let mut app = checked(
        &harness,
        "app",
        IDLE,
        check(
            r#"test "$GREETING" = hello && echo "in $(pwd) as $(id -u)""#,
            3,
        ),
    );
    app.env = vec!["PATH=/bin".into(), "GREETING=hello".into()];
    app.cwd = "/tmp".into();
    let client = harness.launch(harness.task(vec![app])).await;
    // The watch stream carries health changes as they happen.
    let watch = Box::pin(client.watch().await.unwrap());
    let healthy = watch
        .filter(|s| std::future::ready(health(s, "app") == Some(HealthStatus::Healthy)))
        .boxed()
        .into_future();
    let (status, _) = tokio::time::timeout(Duration::from_secs(60), healthy)
        .await
        .expect("the container became healthy");
    let status = status.expect("the watch saw the healthy status");
    let app = status.container("app").unwrap().health.clone().unwrap();
    assert_eq!(app.exit_code, Some(0));
    assert_eq!(app.output, "in /tmp as 0");
    assert_eq!(status.phase, TaskPhase::Running);
    let stopped = stop(&client).await;
    assert_eq!(
        health(&stopped, "app"),
        Some(HealthStatus::Healthy),
        "the last verdict stays after the container stopped"
    );
}

#[tokio::test]
async fn failing_and_timed_out_checks_make_unhealthy_but_the_task_keeps_running() {
    let harness = Harness::new();
    let failing = checked(&harness, "failing", IDLE, check("echo broken; exit 3", 2));
    let mut slow_check = check("sleep 30", 1);
    slow_check.timeout = Duration::from_millis(300);
    let slow = checked(&harness, "slow", IDLE, slow_check);
    let plain = harness.container("plain", IDLE);
    let client = harness
        .launch(harness.task(vec![failing, slow, plain]))
        .await;
    let status = wait_for(&client, |s| {
        health(s, "failing") == Some(HealthStatus::Unhealthy)
            && health(s, "slow") == Some(HealthStatus::Unhealthy)
    })
    .await;
    let failing = status.container("failing").unwrap().health.clone().unwrap();
    assert_eq!(failing.exit_code, Some(3));
    assert_eq!(failing.output, "broken");
    let slow = status.container("slow").unwrap().health.clone().unwrap();
    assert_eq!(slow.exit_code, None);
    assert!(slow.output.contains("timed out after 0.3 s"), "{slow:?}");
    assert_eq!(health(&status, "plain"), None, "no check, no health");
    assert_eq!(
        status.phase,
        TaskPhase::Running,
        "health never stops a task"
    );
    assert!(status
        .containers
        .iter()
        .all(|c| c.state == ContainerState::Running));
    let stopped = stop(&client).await;
    assert_eq!(stopped.stop_code, Some(StopCode::UserInitiated));
}

#[tokio::test]
async fn failures_during_the_start_period_do_not_count() {
    let harness = Harness::new();
    let mut late = check("exit 1", 1);
    late.start_period = Duration::from_secs(3);
    let app = checked(&harness, "app", IDLE, late);
    let client = harness.launch(harness.task(vec![app])).await;
    wait_for(&client, |s| s.phase == TaskPhase::Running).await;
    // Several failing checks ran by now, all within the start period.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = client.status().await.unwrap();
    assert_eq!(health(&status, "app"), Some(HealthStatus::Unknown));
    wait_for(&client, |s| {
        health(s, "app") == Some(HealthStatus::Unhealthy)
    })
    .await;
    stop(&client).await;
}

#[tokio::test]
async fn depends_on_healthy_starts_the_dependent_once_the_dependency_passes() {
    let harness = Harness::new();
    let db = checked(
        &harness,
        "db",
        &format!("sleep 1; touch /tmp/ready; {IDLE}"),
        check("test -f /tmp/ready", 10),
    );
    let mut app = harness.container("app", IDLE);
    app.depends_on = vec![Dependency {
        container: "db".into(),
        condition: Condition::Healthy,
    }];
    let client = harness.launch(harness.task(vec![app, db])).await;
    let status = wait_for(&client, |s| {
        s.container("app").unwrap().state == ContainerState::Running
    })
    .await;
    let db = status.container("db").unwrap();
    let healthy_since = db.health.as_ref().unwrap().since;
    assert_eq!(health(&status, "db"), Some(HealthStatus::Healthy));
    assert!(status.container("app").unwrap().started_at.unwrap() >= healthy_since);
    assert!(healthy_since >= db.started_at.unwrap() + 1000);
    stop(&client).await;
}

#[tokio::test]
async fn a_dependency_unhealthy_before_healthy_fails_the_task() {
    let harness = Harness::new();
    let db = checked(&harness, "db", IDLE, check("exit 1", 1));
    let mut app = harness.container("app", "echo should-not-run");
    app.depends_on = vec![Dependency {
        container: "db".into(),
        condition: Condition::Healthy,
    }];
    let client = harness.launch(harness.task(vec![db, app])).await;
    let status = wait_stopped(&client).await;
    assert_eq!(status.stop_code, Some(StopCode::TaskFailedToStart));
    assert_eq!(
        status.container("app").unwrap().state,
        ContainerState::NotStarted
    );
    let reason = status.stopped_reason.unwrap();
    assert!(
        reason.contains("app") && reason.contains("db became UNHEALTHY"),
        "{reason}"
    );
}
