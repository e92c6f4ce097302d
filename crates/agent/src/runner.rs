//! One task's life on this host, as a sequence the runner walks:
//!
//! ```text
//! PROVISIONING  attach the task network (netns, veth, address); meanwhile resolve
//!               each container's image (the registry is reached from the host's
//!               network, so a tag check or pull need not wait for the task's)
//! PENDING       wait for the images if still resolving; mount the root filesystems
//! ACTIVATING    hand the task spec to the sandbox driver (starts the supervisor)
//! RUNNING       follow the supervisor's status; forward a stop request to it
//! STOPPING      the supervisor stops the containers (SIGTERM, stopTimeout, SIGKILL)
//! DEPROVISIONING remove the sandbox, unmount and delete the writable layers, detach
//! STOPPED       report, and mark the task finished so a restart leaves it alone
//! ```
//!
//! A failure before the supervisor runs stops the task with `TaskFailedToStart` and an
//! ECS-style reason (`CannotPullContainerError: ...`, `ResourceInitializationError: ...`);
//! clean-up runs on every path. A stop request that arrives before ACTIVATING skips
//! straight to clean-up.
//!
//! The network attach and the image work run side by side, and the attach is always
//! awaited to its end, so that clean-up finds a whole interface or none. The outcome
//! is decided in the sequential order: a network failure wins, then a stop request,
//! then an image failure. When the task cannot go on to PENDING the image work is
//! dropped (pulls are cancel-safe); holds and pins are released as on any failure.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Instant;

use futures::future::{self, MaybeDone};
use futures::StreamExt;
use image::{Image, ImageError};
use model::agent::{ContainerReport, TaskPlan, TaskReport};
use model::task::{StopCode, TaskStatus};
use model::Timestamp;
use net::TaskInterface;
use sandbox::SupervisorClient;
use supervisor::protocol::{self, ContainerState, TaskPhase};
use tokio::sync::watch;

use crate::{metadata, prepare, Agent};

const OOM_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";

/// Drives one task from wherever it is to STOPPED.
pub(crate) async fn run(
    agent: &Agent,
    plan: TaskPlan,
    adopted: Option<SupervisorClient>,
    mut stop: watch::Receiver<Option<String>>,
) {
    let mut report = TaskReport {
        task_arn: plan.task_arn.clone(),
        ..Default::default()
    };
    let client = match adopted {
        Some(client) => {
            serve_metadata_of_adopted(agent, &plan, &report);
            Some(client)
        }
        None => match start(agent, &plan, &mut report, &stop).await {
            Ok(client) => client,
            Err(reason) => {
                tracing::warn!(task_id = %plan.task_id, reason = %reason, "task failed to start");
                report.stop_code = Some(StopCode::TaskFailedToStart.as_str().into());
                report.stopped_reason = Some(reason);
                report.execution_stopped_at = Some(model::now());
                None
            }
        },
    };
    if let Some(client) = client {
        follow(agent, &plan, &client, &mut report, &mut stop).await;
    } else if let Some(reason) = stop.borrow().clone() {
        report
            .stop_code
            .get_or_insert_with(|| StopCode::UserInitiated.as_str().into());
        report.stopped_reason.get_or_insert(reason);
        report.execution_stopped_at.get_or_insert_with(model::now);
    }
    finish(agent, &plan, report).await;
}

fn set_status(agent: &Agent, report: &mut TaskReport, status: TaskStatus) {
    report.last_status = Some(status);
    agent.report(report.clone());
}

/// PROVISIONING to ACTIVATING. Ok(None) means a stop arrived before the sandbox ran.
async fn start(
    agent: &Agent,
    plan: &TaskPlan,
    report: &mut TaskReport,
    stop: &watch::Receiver<Option<String>>,
) -> Result<Option<SupervisorClient>, String> {
    let state_dir = agent.task_state_dir(&plan.task_id);
    prepare::save_plan(&state_dir, plan)
        .map_err(|e| format!("ResourceInitializationError: cannot record the task plan: {e}"))?;

    // A network failure, then a stop, decide before an image failure, as when the
    // images were resolved after the attach; returning early drops the image work.
    let pull_started_at = model::now();
    let mut image_work = pin!(future::maybe_done(resolve_images(agent, plan)));
    let interface = alongside(attach_network(agent, plan), image_work.as_mut()).await?;
    report.mac_address = Some(interface.mac_address.clone());
    if stop.borrow().is_some() {
        return Ok(None);
    }

    report.pull_started_at = Some(pull_started_at);
    set_status(agent, report, TaskStatus::Pending);
    image_work.as_mut().await;
    let ResolvedImages {
        by_reference,
        resolved_at,
    } = image_work
        .take_output()
        .expect("the image work was awaited to its end")?;
    report.pull_stopped_at = Some(resolved_at);
    agent.pin_images(
        &plan.task_id,
        by_reference.values().map(|i| i.digest.clone()).collect(),
    );
    let images = agent.images().clone();
    let plan_for_images = plan.clone();
    let state_for_images = state_dir.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        let mut containers = Vec::new();
        for c in &plan_for_images.containers {
            let image = by_reference[&c.image].clone();
            let dirs = prepare::rootfs_dirs(&state_for_images, &c.name);
            prepare::mount_rootfs(&images, &image, &dirs).map_err(|e| {
                format!(
                    "ResourceInitializationError: cannot mount the root filesystem of container {}: {e}",
                    c.name
                )
            })?;
            containers.push((c.clone(), image, dirs.target));
        }
        Ok::<_, String>(containers)
    })
    .await
    .map_err(|e| format!("ResourceInitializationError: image preparation panicked: {e}"))??;
    report.containers = resolved
        .iter()
        .map(|(c, image, _)| ContainerReport {
            name: c.name.clone(),
            last_status: "PENDING".into(),
            image_digest: Some(image.digest.clone()),
            runtime_id: Some(supervisor::spec::container_id(&plan.task_id, &c.name)),
            ..Default::default()
        })
        .collect();
    if stop.borrow().is_some() {
        return Ok(None);
    }

    set_status(agent, report, TaskStatus::Activating);
    let endpoint = metadata::TaskEndpoint::new(
        plan,
        interface.host_interface.clone(),
        interface.mac_address.clone(),
        model::now(),
    );
    endpoint.save(&state_dir).map_err(|e| {
        format!("ResourceInitializationError: cannot record the task metadata endpoint: {e}")
    })?;
    agent
        .inner
        .metadata
        .register(plan, endpoint.clone(), report.clone());
    let spec = prepare::task_spec(plan, interface.netns_path.clone(), &resolved, &endpoint)?;
    let client = agent
        .inner
        .driver
        .launch(spec)
        .await
        .map_err(|e| format!("CannotStartContainerError: {}", model::error_chain(&e)))?;
    Ok(Some(client))
}

/// Serves the metadata of a task a previous agent launched, with the tokens it gave
/// the containers.
fn serve_metadata_of_adopted(agent: &Agent, plan: &TaskPlan, report: &TaskReport) {
    match metadata::TaskEndpoint::load(&agent.task_state_dir(&plan.task_id)) {
        Some(endpoint) => agent
            .inner
            .metadata
            .register(plan, endpoint, report.clone()),
        None => tracing::warn!(
            task_id = %plan.task_id,
            "no saved metadata endpoint for a re-adopted task: its metadata is not served"
        ),
    }
}

/// Runs `main` to its end while driving `side` as far as it gets meanwhile; the caller
/// then awaits `side` to its end, or drops it to cancel what is left of it.
async fn alongside<M: Future, S: Future>(main: M, mut side: Pin<&mut MaybeDone<S>>) -> M::Output {
    let mut main = pin!(main);
    future::poll_fn(|cx| {
        // A finished MaybeDone keeps its output and answers Ready again at once.
        let _ = side.as_mut().poll(cx);
        main.as_mut().poll(cx)
    })
    .await
}

/// Attaches the task's network interface; the error is the task's stoppedReason.
async fn attach_network(agent: &Agent, plan: &TaskPlan) -> Result<TaskInterface, String> {
    let failed = |what: &str, e: net::NetError| {
        format!(
            "ResourceInitializationError: failed to {what}: {}",
            model::error_chain(&e)
        )
    };
    let interface = agent
        .inner
        .network
        .attach(
            &plan.task_id,
            plan.network.address,
            plan.network.security.as_ref(),
        )
        .await
        .map_err(|e| failed("configure the task network", e))?;
    // Bridge mode's host ports; an awsvpc plan has none, and publishing none is free.
    let network = &plan.network;
    agent
        .inner
        .network
        .publish(&plan.task_id, network.address, &network.port_bindings)
        .await
        .map_err(|e| failed("publish the task's port mappings", e))?;
    agent.apply_latest_policy(&plan.task_id).await?;
    Ok(interface)
}

/// A task's images, each distinct reference resolved once.
struct ResolvedImages {
    by_reference: HashMap<String, Image>,
    /// When the last one was had: the task's pullStoppedAt.
    resolved_at: Timestamp,
}

/// Resolves (pulls if needed) each distinct image reference of the task once: every
/// container naming it runs the same digest (ECS's versionConsistency). The error is
/// the task's stoppedReason.
async fn resolve_images(agent: &Agent, plan: &TaskPlan) -> Result<ResolvedImages, String> {
    let started = Instant::now();
    let mut by_reference: HashMap<String, Image> = HashMap::new();
    for c in &plan.containers {
        if by_reference.contains_key(&c.image) {
            continue;
        }
        let image = agent
            .image_for(&plan.task_id, &c.image, plan.ephemeral_storage_gib)
            .await
            .map_err(|e| pull_failure_reason(&c.image, &c.name, &e))?;
        by_reference.insert(c.image.clone(), image);
    }
    tracing::debug!(
        task_id = %plan.task_id,
        images = by_reference.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "task images resolved"
    );
    Ok(ResolvedImages {
        by_reference,
        resolved_at: model::now(),
    })
}

/// The stoppedReason of a task whose container's image could not be had.
fn pull_failure_reason(image: &str, container: &str, error: &ImageError) -> String {
    format!(
        "CannotPullContainerError: pull image {image} for container {container}: {}",
        model::error_chain(error)
    )
}

/// Follows the supervisor until the task has stopped, forwarding stop requests.
async fn follow(
    agent: &Agent,
    plan: &TaskPlan,
    client: &SupervisorClient,
    report: &mut TaskReport,
    stop: &mut watch::Receiver<Option<String>>,
) {
    let mut stop_sent = false;
    loop {
        let mut statuses = match client.watch().await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::error!(task_id = %plan.task_id, error = %e, "cannot watch the supervisor");
                report.stopped_reason.get_or_insert_with(|| {
                    format!(
                        "ResourceInitializationError: lost the task supervisor: {}",
                        model::error_chain(&e)
                    )
                });
                return;
            }
        };
        loop {
            if !stop_sent {
                let requested = stop.borrow_and_update().clone();
                if let Some(reason) = requested {
                    if let Err(e) = client.stop(&reason).await {
                        tracing::warn!(task_id = %plan.task_id, error = %e, "cannot ask the supervisor to stop");
                    }
                    stop_sent = true;
                }
            }
            tokio::select! {
                next = statuses.next() => match next {
                    Some(status) => {
                        let stopped = status.phase == TaskPhase::Stopped;
                        apply_status(agent, plan, report, &status);
                        if stopped {
                            return;
                        }
                    }
                    // The watch ended before the task stopped: check, then re-watch.
                    None => break,
                },
                changed = stop.changed(), if !stop_sent => {
                    if changed.is_err() {
                        stop_sent = true;
                    }
                }
            }
        }
        match client.status().await {
            Ok(status) if status.phase == TaskPhase::Stopped => {
                apply_status(agent, plan, report, &status);
                return;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => {
                tracing::error!(task_id = %plan.task_id, error = %e, "the supervisor is gone");
                report.stopped_reason.get_or_insert_with(|| {
                    "ResourceInitializationError: the task supervisor exited unexpectedly".into()
                });
                return;
            }
        }
    }
}

/// Translates a supervisor status into the task report and sends it if it changed.
fn apply_status(
    agent: &Agent,
    plan: &TaskPlan,
    report: &mut TaskReport,
    status: &protocol::TaskStatus,
) {
    agent.inner.metadata.update_status(&plan.task_id, status);
    let before = report.clone();
    let millis = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0);
    for c in &status.containers {
        let slot = match report.containers.iter_mut().position(|x| x.name == c.name) {
            Some(i) => &mut report.containers[i],
            None => {
                report.containers.push(ContainerReport {
                    name: c.name.clone(),
                    runtime_id: Some(supervisor::spec::container_id(&plan.task_id, &c.name)),
                    ..Default::default()
                });
                report.containers.last_mut().expect("just pushed")
            }
        };
        slot.last_status = match c.state {
            ContainerState::Pending | ContainerState::Created => "PENDING",
            ContainerState::Running => "RUNNING",
            ContainerState::Exited | ContainerState::NotStarted => "STOPPED",
        }
        .into();
        if c.state == ContainerState::Exited {
            slot.exit_code = c.exit_code;
        }
        if c.oom_killed {
            slot.reason = Some(OOM_REASON.into());
        } else if c.reason.is_some() {
            slot.reason.clone_from(&c.reason);
        }
        // Not fill-only: health goes back and forth, each report carries the latest.
        slot.health_status = c.health.as_ref().map(|h| h.status.as_str().to_owned());
    }
    let first_start = status.containers.iter().filter_map(|c| c.started_at).min();
    match status.phase {
        TaskPhase::Starting => report.last_status = Some(TaskStatus::Activating),
        TaskPhase::Running => {
            report.last_status = Some(TaskStatus::Running);
            report.started_at = report.started_at.or(millis(first_start));
            report.connectivity_at = report.connectivity_at.or(report.started_at);
        }
        TaskPhase::Stopping => report.last_status = Some(TaskStatus::Stopping),
        TaskPhase::Stopped => {
            if first_start.is_some() {
                report.started_at = report.started_at.or(millis(first_start));
                report.connectivity_at = report.connectivity_at.or(report.started_at);
            }
            let last_exit = status.containers.iter().filter_map(|c| c.finished_at).max();
            report.execution_stopped_at = millis(last_exit).or_else(|| Some(model::now()));
            report.last_status = Some(TaskStatus::Deprovisioning);
        }
    }
    // The supervisor knows why the task stops as soon as it begins stopping: report it
    // with STOPPING, or the control plane fills in its default stop code first.
    if let Some(code) = status.stop_code {
        let code = match code {
            protocol::StopCode::TaskFailedToStart => StopCode::TaskFailedToStart,
            protocol::StopCode::EssentialContainerExited => StopCode::EssentialContainerExited,
            protocol::StopCode::UserInitiated => StopCode::UserInitiated,
        };
        report.stop_code = Some(code.as_str().to_owned());
        report.stopped_reason.clone_from(&status.stopped_reason);
    }
    if *report != before {
        agent.report(report.clone());
    }
}

/// DEPROVISIONING and STOPPED: releases everything the task held.
async fn finish(agent: &Agent, plan: &TaskPlan, mut report: TaskReport) {
    set_status(agent, &mut report, TaskStatus::Deprovisioning);
    let task_id = &plan.task_id;
    release(agent, task_id).await;
    let state_dir = agent.task_state_dir(task_id);
    for c in &mut report.containers {
        c.last_status = "STOPPED".into();
    }
    report.execution_stopped_at.get_or_insert_with(model::now);
    if let Err(e) = prepare::mark_finished(&state_dir) {
        tracing::warn!(task_id = %task_id, error = %e, "cannot mark the task finished");
    }
    set_status(agent, &mut report, TaskStatus::Stopped);
    tracing::info!(task_id = %task_id, reason = report.stopped_reason.as_deref().unwrap_or(""), "task stopped");
}

/// Releases everything a task holds on this host: its sandbox, root filesystems,
/// image pins and network interface. Each step tolerates what is already gone.
pub(crate) async fn release(agent: &Agent, task_id: &str) {
    match agent.inner.driver.remove(task_id).await {
        Ok(()) | Err(sandbox::SandboxError::TaskNotFound { .. }) => {}
        Err(e) => {
            tracing::error!(task_id = %task_id, error = %model::error_chain(&e), "cannot remove the sandbox")
        }
    }
    let released = tokio::task::spawn_blocking({
        let dir = agent.task_state_dir(task_id);
        move || prepare::release_storage(&dir)
    })
    .await;
    match released {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(task_id = %task_id, error = %e, "cannot release task storage")
        }
        Err(e) => tracing::error!(task_id = %task_id, error = %e, "storage release panicked"),
    }
    agent.unpin_images(task_id);
    if let Err(e) = agent.inner.network.detach(task_id).await {
        tracing::error!(task_id = %task_id, error = %model::error_chain(&e), "cannot detach the task network");
    }
}

/// A task the control plane believes ran here, but whose sandbox is gone.
pub(crate) async fn report_lost(agent: &Agent, plan: TaskPlan) {
    let report = TaskReport {
        task_arn: plan.task_arn.clone(),
        stopped_reason: Some(
            "ResourceInitializationError: the task's sandbox was lost while the agent was down"
                .into(),
        ),
        ..Default::default()
    };
    finish(agent, &plan, report).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn alongside_runs_main_to_its_end_after_side_fails() {
        let (finish_main, main_may_end) = oneshot::channel::<()>();
        let mut side = pin!(future::maybe_done(async {
            // Ends first, and lets main end only then.
            finish_main.send(()).unwrap();
            Err::<(), _>("pull failed")
        }));
        let main = async { main_may_end.await.map(|()| "attached") };
        let attached = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            alongside(main, side.as_mut()),
        )
        .await
        .expect("alongside did not drive the side future");
        assert_eq!(attached, Ok("attached"));
        assert_eq!(side.take_output(), Some(Err("pull failed")));
    }

    #[tokio::test]
    async fn alongside_leaves_an_unfinished_side_to_be_awaited_later() {
        let (finish_side, side_may_end) = oneshot::channel::<()>();
        let mut side = pin!(future::maybe_done(async {
            side_may_end.await.map(|()| "resolved")
        }));
        assert_eq!(
            alongside(async { "attached" }, side.as_mut()).await,
            "attached"
        );
        assert!(matches!(*side, MaybeDone::Future(_)));
        finish_side.send(()).unwrap();
        side.as_mut().await;
        assert_eq!(side.take_output(), Some(Ok("resolved")));
    }

    #[test]
    fn an_image_over_the_ephemeral_storage_is_a_pull_error_saying_what_to_do() {
        let layer = image::Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let error = ImageError::Unpack {
            layer,
            source: image::UnpackError::TooLarge { limit: 20 << 30 },
        };
        let reason = pull_failure_reason("registry.local/app:1", "web", &error);
        assert!(
            reason.starts_with(
                "CannotPullContainerError: pull image registry.local/app:1 for container web: \
                 cannot unpack layer sha256:abab"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("unpack to more than 20 GiB, the task's ephemeral storage"),
            "{reason}"
        );
        assert!(
            reason.contains("raise the task definition's ephemeralStorage.sizeInGiB (up to 200)"),
            "{reason}"
        );
    }
}
