use model::service::{DeploymentConfiguration, DeploymentController, Service};

use super::*;
use crate::services::{new_deployment, SchedulerState};

const NOW: Timestamp = 1_000_000.0;

fn service(desired: u32, config: DeploymentConfiguration) -> ServiceRecord {
    let mut service = Service {
        service_arn: "arn:aws:ecs:us-east-1:0:service/c/web".into(),
        service_name: "web".into(),
        cluster_arn: "arn:aws:ecs:us-east-1:0:cluster/c".into(),
        load_balancers: vec![],
        service_registries: vec![],
        status: "ACTIVE".into(),
        desired_count: desired,
        running_count: 0,
        pending_count: 0,
        launch_type: Some("FARGATE".into()),
        capacity_provider_strategy: vec![],
        platform_version: "LATEST".into(),
        platform_family: "Linux".into(),
        task_definition: "web:1".into(),
        deployment_configuration: config.with_defaults(),
        deployments: vec![],
        events: vec![],
        created_at: NOW,
        placement_constraints: vec![],
        placement_strategy: vec![],
        network_configuration: None,
        health_check_grace_period_seconds: 0,
        scheduling_strategy: "REPLICA".into(),
        deployment_controller: DeploymentController::default(),
        tags: vec![],
        created_by: "test".into(),
        enable_ecs_managed_tags: false,
        propagate_tags: None,
        enable_execute_command: false,
    };
    let mut first = new_deployment(&service, "web:1", NOW);
    first.id = "d1".into();
    service.deployments.push(first);
    ServiceRecord {
        service,
        fingerprint: String::new(),
        scheduler: SchedulerState::default(),
    }
}

/// Makes `web:<revision>` the new PRIMARY deployment `d<revision>`.
fn deploy(record: &mut ServiceRecord, revision: u32) {
    let definition = format!("web:{revision}");
    let mut deployment = new_deployment(&record.service, &definition, NOW);
    deployment.id = format!("d{revision}");
    record.service.task_definition = definition;
    record.service.deployments.insert(0, deployment);
}

fn task(id: &str, deployment: &str, health: Health) -> TaskView {
    TaskView {
        id: id.into(),
        deployment: Some(deployment.into()),
        last_status: TaskStatus::Running,
        desired_running: true,
        started_at: Some(NOW - 100.0),
        stop_code: None,
        stopped_reason: None,
        health,
    }
}

fn pending(id: &str, deployment: &str) -> TaskView {
    TaskView {
        last_status: TaskStatus::Pending,
        started_at: None,
        ..task(id, deployment, Health::Pending)
    }
}

fn stopped(id: &str, deployment: &str, code: StopCode) -> TaskView {
    TaskView {
        desired_running: false,
        last_status: TaskStatus::Stopped,
        stop_code: Some(code.as_str().into()),
        ..task(id, deployment, Health::Pending)
    }
}

fn healthy(ids: &[&str], deployment: &str) -> Vec<TaskView> {
    ids.iter()
        .map(|id| task(id, deployment, Health::Healthy))
        .collect()
}

fn stopped_ids(plan: &Plan) -> Vec<&str> {
    plan.stops.iter().map(|(id, _)| id.as_str()).collect()
}

fn messages(record: &ServiceRecord) -> Vec<&str> {
    record
        .service
        .events
        .iter()
        .map(|e| e.message.as_str())
        .collect()
}

#[test]
fn a_new_service_launches_its_desired_count() {
    let record = service(3, DeploymentConfiguration::default());
    let plan = plan(&record, &[], NOW);
    assert_eq!(plan.launches, vec![("d1".into(), "web:1".into(), 3)]);
    assert!(plan.stops.is_empty());
    assert_eq!(plan.record.service.deployments[0].desired_count, 3);
}

#[test]
fn a_steady_service_is_announced_once_and_its_deployment_completes() {
    let record = service(2, DeploymentConfiguration::default());
    let tasks = healthy(&["a", "b"], "d1");
    let first = plan(&record, &tasks, NOW);
    assert!(first.launches.is_empty() && first.stops.is_empty());
    let d = &first.record.service.deployments[0];
    assert_eq!(
        (d.running_count, d.rollout_state.as_str()),
        (2, "COMPLETED")
    );
    assert_eq!(
        first.record.scheduler.last_completed.as_deref(),
        Some("web:1")
    );
    assert!(messages(&first.record).contains(&"(service web) has reached a steady state."));
    let second = plan(&first.record, &tasks, NOW + 1.0);
    assert_eq!(
        second.record.service.events.len(),
        first.record.service.events.len()
    );
}

#[test]
fn a_dead_task_is_replaced_at_once_and_counted_once() {
    let record = service(2, DeploymentConfiguration::default());
    let mut tasks = healthy(&["a"], "d1");
    tasks.push(stopped("b", "d1", StopCode::EssentialContainerExited));
    let first = plan(&record, &tasks, NOW);
    assert_eq!(first.launches, vec![("d1".into(), "web:1".into(), 1)]);
    assert_eq!(first.record.service.deployments[0].failed_tasks, 1);
    assert_eq!(first.record.scheduler.failure_streak, 1);
    // The same stopped task in the next pass is not counted again.
    let again = plan(&first.record, &tasks, NOW + 1.0);
    assert_eq!(again.record.service.deployments[0].failed_tasks, 1);
}

#[test]
fn user_and_scheduler_stops_are_not_failures() {
    let record = service(1, DeploymentConfiguration::default());
    let tasks = vec![
        stopped("a", "d1", StopCode::UserInitiated),
        stopped("b", "d1", StopCode::ServiceSchedulerInitiated),
    ];
    let plan = plan(&record, &tasks, NOW);
    assert_eq!(plan.record.scheduler.failure_streak, 0);
    assert_eq!(plan.launches.len(), 1);
}

#[test]
fn repeated_failures_back_off_launches() {
    assert_eq!(backoff_secs(1, 1), 0.0);
    assert_eq!(backoff_secs(2, 1), 1.0);
    assert_eq!(backoff_secs(4, 1), 4.0);
    assert_eq!(backoff_secs(5, 5), 0.0);
    assert_eq!(backoff_secs(100, 1), MAX_BACKOFF_SECS);

    let mut record = service(1, DeploymentConfiguration::default());
    record.scheduler.failure_streak = 1;
    let tasks = vec![stopped("b", "d1", StopCode::TaskFailedToStart)];
    let held = plan(&record, &tasks, NOW);
    assert_eq!(held.record.scheduler.failure_streak, 2);
    assert!(
        held.launches.is_empty(),
        "the second failure in a row waits 1 s"
    );
    assert!(messages(&held.record)[0].contains("unable to consistently start tasks"));
    let later = plan(&held.record, &tasks, NOW + 1.5);
    assert_eq!(later.launches.len(), 1);
}

#[test]
fn a_healthy_task_started_after_the_failures_resets_the_streak() {
    let mut record = service(1, DeploymentConfiguration::default());
    record.scheduler.failure_streak = 3;
    record.scheduler.last_failure_at = Some(NOW - 200.0);
    let plan = plan(&record, &healthy(&["a"], "d1"), NOW);
    assert_eq!(plan.record.scheduler.failure_streak, 0);
}

#[test]
fn rolling_update_keeps_minimum_healthy_and_maximum_percent() {
    let mut record = service(3, DeploymentConfiguration::default());
    deploy(&mut record, 2);
    // 100% / 200%: all three new tasks start beside the old ones, none stops yet.
    let old = healthy(&["a", "b", "c"], "d1");
    let start = plan(&record, &old, NOW);
    assert_eq!(start.launches, vec![("d2".into(), "web:2".into(), 3)]);
    assert!(start.stops.is_empty());
    assert_eq!(start.record.service.deployments[0].status, "PRIMARY");
    assert_eq!(start.record.service.deployments[1].status, "ACTIVE");

    // Two new tasks healthy, one pending: two old ones may go.
    let mut tasks = old.clone();
    tasks.extend(healthy(&["x", "y"], "d2"));
    tasks.push(pending("z", "d2"));
    let middle = plan(&start.record, &tasks, NOW + 1.0);
    assert_eq!(stopped_ids(&middle).len(), 2);
    assert!(middle.launches.is_empty());

    // All new tasks healthy, the old deployment gone: the rollout completes.
    let done = plan(&middle.record, &healthy(&["x", "y", "z"], "d2"), NOW + 2.0);
    assert_eq!(done.record.service.deployments.len(), 1);
    assert_eq!(
        done.record.service.deployments[0].rollout_state,
        "COMPLETED"
    );
}

#[test]
fn half_minimum_healthy_stops_old_tasks_before_new_ones_are_healthy() {
    let config = DeploymentConfiguration {
        minimum_healthy_percent: Some(50),
        maximum_percent: Some(100),
        ..DeploymentConfiguration::default()
    };
    let mut record = service(4, config);
    deploy(&mut record, 2);
    let plan = plan(&record, &healthy(&["a", "b", "c", "d"], "d1"), NOW);
    // ceil(4 x 50%) = 2 must stay; floor(4 x 100%) = 4 may run.
    assert_eq!(stopped_ids(&plan).len(), 2);
    assert_eq!(plan.launches, vec![("d2".into(), "web:2".into(), 2)]);
}

#[test]
fn old_tasks_that_are_not_healthy_go_first() {
    let mut record = service(2, DeploymentConfiguration::default());
    deploy(&mut record, 2);
    let tasks = vec![
        task("a", "d1", Health::Healthy),
        task("b", "d1", Health::Healthy),
        pending("p", "d1"),
    ];
    let plan = plan(&record, &tasks, NOW);
    assert_eq!(stopped_ids(&plan), vec!["p"]);
}

#[test]
fn unhealthy_tasks_are_replaced_after_the_grace_period_and_then_counted() {
    let mut record = service(1, DeploymentConfiguration::default());
    record.service.health_check_grace_period_seconds = 60;
    let mut sick = task(
        "a",
        "d1",
        Health::Unhealthy("container health checks".into()),
    );
    sick.started_at = Some(NOW - 30.0);
    let in_grace = plan(&record, std::slice::from_ref(&sick), NOW);
    assert!(in_grace.stops.is_empty());

    sick.started_at = Some(NOW - 90.0);
    let replaced = plan(&record, &[sick], NOW);
    assert_eq!(
        replaced.stops,
        vec![("a".into(), "Task failed container health checks".into())]
    );
    assert_eq!(
        replaced.launches.len(),
        1,
        "its replacement starts in the same pass"
    );
    assert_eq!(
        replaced.action_events,
        vec!["(service web) (task a) failed container health checks."]
    );
    // The next pass sees it stopping with that reason and counts the failure.
    let mut stopping = stopped("a", "d1", StopCode::ServiceSchedulerInitiated);
    stopping.stopped_reason = Some("Task failed container health checks".into());
    let counted = plan(&replaced.record, &[stopping], NOW + 1.0);
    assert_eq!(counted.record.service.deployments[0].failed_tasks, 1);
}

#[test]
fn the_circuit_breaker_fails_and_rolls_back() {
    let config = DeploymentConfiguration {
        deployment_circuit_breaker: Some(model::service::CircuitBreaker {
            enable: true,
            rollback: true,
        }),
        ..DeploymentConfiguration::default()
    };
    let mut record = service(2, config);
    record.scheduler.last_completed = Some("web:1".into());
    deploy(&mut record, 2);
    record.service.deployments[0].failed_tasks = 9;
    let tasks = vec![
        task("a", "d1", Health::Healthy),
        task("b", "d1", Health::Healthy),
        stopped("x", "d2", StopCode::TaskFailedToStart),
    ];
    let plan = plan(&record, &tasks, NOW);
    let deployments = &plan.record.service.deployments;
    assert_eq!(deployments[0].task_definition, "web:1");
    assert_eq!(deployments[0].status, "PRIMARY");
    assert_eq!(deployments[0].rollout_state, "IN_PROGRESS");
    assert!(
        !deployments.iter().any(|d| d.id == "d2"),
        "the failed deployment has no tasks left and leaves"
    );
    assert_eq!(plan.record.service.task_definition, "web:1");
    let events = messages(&plan.record);
    assert!(events
        .iter()
        .any(|m| m.contains("(deployment d2) deployment failed")));
    assert!(events.iter().any(|m| m.contains("rolling back")));
}

#[test]
fn a_failed_deployment_without_rollback_launches_nothing_more() {
    let config = DeploymentConfiguration {
        deployment_circuit_breaker: Some(model::service::CircuitBreaker {
            enable: true,
            rollback: false,
        }),
        ..DeploymentConfiguration::default()
    };
    let mut record = service(1, config);
    record.service.deployments[0].failed_tasks = 10;
    let plan = plan(&record, &[], NOW);
    assert_eq!(plan.record.service.deployments[0].rollout_state, "FAILED");
    assert!(plan.launches.is_empty());
}

#[test]
fn scaling_down_stops_the_least_useful_tasks() {
    let record = service(1, DeploymentConfiguration::default());
    let tasks = vec![
        task("a", "d1", Health::Healthy),
        pending("p", "d1"),
        task("b", "d1", Health::Pending),
    ];
    let plan = plan(&record, &tasks, NOW);
    assert_eq!(stopped_ids(&plan), vec!["p", "b"]);
}

#[test]
fn a_draining_service_stops_everything_then_goes_inactive() {
    let mut record = service(2, DeploymentConfiguration::default());
    record.service.status = "DRAINING".into();
    let draining = plan(&record, &healthy(&["a", "b"], "d1"), NOW);
    assert_eq!(stopped_ids(&draining).len(), 2);
    assert_eq!(draining.record.service.status, "DRAINING");
    let done = plan(&draining.record, &[], NOW + 1.0);
    assert_eq!(done.record.service.status, "INACTIVE");
}

#[test]
fn tasks_of_unknown_deployments_are_stopped() {
    let record = service(1, DeploymentConfiguration::default());
    let tasks = vec![
        task("a", "d1", Health::Healthy),
        task("old", "gone", Health::Healthy),
    ];
    let plan = plan(&record, &tasks, NOW);
    assert_eq!(stopped_ids(&plan), vec!["old"]);
    assert!(plan.launches.is_empty());
}
