//! The container driver against the real thing: runc, cgroups, namespaces. Run as root.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use sandbox::{Condition, ContainerState, Dependency, LogStream, StopCode};

#[tokio::test]
async fn exit_code_and_timestamped_logs_are_reported() {
    let harness = Harness::new();
    let spec = harness.task(vec![
        harness.container("app", "echo hello out; echo oops >&2; exit 3")
    ]);
    let client = harness.launch(spec).await;
    let follow = client.follow_logs("app", None).unwrap().collect::<Vec<_>>();
    let followed = tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .expect("follow ends with the task");
    let followed: Vec<_> = followed.into_iter().map(|e| e.message).collect();
    assert!(
        followed.contains(&"hello out".to_owned()) && followed.contains(&"oops".to_owned()),
        "{followed:?}"
    );
    let status = wait_stopped(&client).await;
    let app = status.container("app").unwrap();
    assert_eq!(app.state, ContainerState::Exited);
    assert_eq!(app.exit_code, Some(3));
    assert!(!app.oom_killed);
    assert!(app.started_at.unwrap() <= app.finished_at.unwrap());
    assert_eq!(status.stop_code, Some(StopCode::EssentialContainerExited));

    let entries = client.logs("app", None).unwrap();
    let out = entries
        .iter()
        .find(|e| e.message == "hello out")
        .expect("stdout captured");
    assert_eq!(out.stream, LogStream::Stdout);
    let err = entries
        .iter()
        .find(|e| e.message == "oops")
        .expect("stderr captured");
    assert_eq!(err.stream, LogStream::Stderr);
    assert!(out.timestamp.timestamp() > 1_700_000_000);
    let raw = std::fs::read_to_string(
        harness
            .driver
            .task_dir(client.task_id())
            .container_log("app"),
    )
    .unwrap();
    assert!(
        raw.lines().any(|l| l.ends_with(" stdout F hello out")),
        "{raw}"
    );
}

#[tokio::test]
async fn essential_exit_stops_the_others_with_sigterm() {
    let harness = Harness::new();
    let main = harness.container("main", "sleep 1; exit 0");
    let mut side = harness.container(
        "side",
        "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done",
    );
    side.essential = false;
    let client = harness.launch(harness.task(vec![main, side])).await;
    let status = wait_stopped(&client).await;
    assert_eq!(status.stop_code, Some(StopCode::EssentialContainerExited));
    assert_eq!(
        status.stopped_reason.as_deref(),
        Some("Essential container in task exited")
    );
    assert_eq!(status.container("main").unwrap().exit_code, Some(0));
    // 0, not 137: the trap ran, so SIGTERM arrived before any SIGKILL.
    assert_eq!(status.container("side").unwrap().exit_code, Some(0));
    assert!(log_text(&client, "side").contains("got-term"));
}

#[tokio::test]
async fn a_container_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    let harness = Harness::new();
    let mut stubborn = harness.container(
        "stubborn",
        "trap '' TERM; echo ready; while true; do sleep 0.1; done",
    );
    stubborn.stop_timeout = Duration::from_secs(1);
    let client = harness.launch(harness.task(vec![stubborn])).await;
    wait_for(&client, |s| {
        s.container("stubborn").unwrap().state == ContainerState::Running
    })
    .await;
    client.stop("Task stopped by user").await.unwrap();
    let status = wait_stopped(&client).await;
    assert_eq!(status.stop_code, Some(StopCode::UserInitiated));
    assert_eq!(
        status.stopped_reason.as_deref(),
        Some("Task stopped by user")
    );
    assert_eq!(status.container("stubborn").unwrap().exit_code, Some(137));
}

#[tokio::test]
async fn depends_on_orders_start_complete_and_success() {
    let harness = Harness::new();
    let dep = |container: &str, condition| Dependency {
        container: container.into(),
        condition,
    };
    let mut first = harness.container("first", "sleep 0.5; exit 0");
    first.essential = false;
    let mut after_start = harness.container("after_start", "sleep 60");
    after_start.essential = false;
    after_start.stop_timeout = Duration::from_secs(1);
    after_start.depends_on = vec![dep("first", Condition::Start)];
    let mut after_complete = harness.container("after_complete", "exit 5");
    after_complete.essential = false;
    after_complete.depends_on = vec![dep("first", Condition::Complete)];
    let mut after_success = harness.container("after_success", "sleep 0.5; exit 0");
    after_success.depends_on = vec![
        dep("first", Condition::Success),
        dep("after_complete", Condition::Complete),
    ];
    let client = harness
        .launch(harness.task(vec![after_success, after_complete, after_start, first]))
        .await;
    let status = wait_stopped(&client).await;
    let get = |name| status.container(name).unwrap();
    assert!(get("after_start").started_at >= get("first").started_at);
    assert!(
        get("after_start").started_at < get("first").finished_at,
        "START must not wait for the exit"
    );
    assert!(get("after_complete").started_at >= get("first").finished_at);
    assert!(get("after_success").started_at >= get("first").finished_at);
    assert_eq!(get("after_complete").exit_code, Some(5));
    assert_eq!(get("after_success").exit_code, Some(0));
    assert_eq!(
        get("after_start").exit_code,
        Some(137),
        "sleep as pid 1 ignores SIGTERM"
    );
    assert_eq!(status.stop_code, Some(StopCode::EssentialContainerExited));
}

#[tokio::test]
async fn an_unsatisfiable_dependency_fails_the_task_and_names_the_container() {
    let harness = Harness::new();
    let mut setup = harness.container("setup", "exit 1");
    setup.essential = false;
    let mut app = harness.container("app", "echo should-not-run");
    app.depends_on = vec![Dependency {
        container: "setup".into(),
        condition: Condition::Success,
    }];
    let client = harness.launch(harness.task(vec![setup, app])).await;
    let status = wait_stopped(&client).await;
    let app = status.container("app").unwrap();
    assert_eq!(app.state, ContainerState::NotStarted);
    assert_eq!(status.stop_code, Some(StopCode::TaskFailedToStart));
    let reason = status.stopped_reason.unwrap();
    assert!(
        reason.contains("app") && reason.contains("setup exited with code 1"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_runtime_failure_is_a_start_failure_carrying_the_runtime_message() {
    let harness = Harness::new();
    let mut app = harness.container("app", "true");
    app.args = vec!["/bin/does-not-exist".into()];
    let client = harness.launch(harness.task(vec![app])).await;
    let status = wait_stopped(&client).await;
    assert_eq!(status.stop_code, Some(StopCode::TaskFailedToStart));
    let reason = status.stopped_reason.unwrap();
    assert!(
        reason.contains("CannotStartContainerError") && reason.contains("does-not-exist"),
        "{reason}"
    );
}

#[tokio::test]
async fn memory_limit_is_enforced_and_oom_is_reported() {
    let harness = Harness::new();
    let hog = harness.container(
        "hog",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    let mut spec = harness.task(vec![hog]);
    spec.memory_mib = 64;
    let client = harness.launch(spec).await;
    let status = wait_stopped(&client).await;
    let hog = status.container("hog").unwrap();
    assert!(hog.oom_killed, "{status:?}");
    assert_eq!(hog.exit_code, Some(137));
    assert!(hog
        .reason
        .as_deref()
        .unwrap()
        .starts_with("OutOfMemoryError"));
    assert!(!log_text(&client, "hog").contains("survived"));
}

#[tokio::test]
async fn containers_are_isolated_with_default_capabilities_and_no_new_privs() {
    let harness = Harness::new();
    let mut other = harness.container("other", "sleep 60");
    other.essential = false;
    other.stop_timeout = Duration::from_secs(1);
    let mut probe = harness.container(
        "probe",
        "ps -o pid,args; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; cat /etc/hostname; \
         grep skiff-test-host /etc/hosts; echo x > /etc/hosts 2>/dev/null && echo hosts-writable; \
         unshare -n true 2>/dev/null && echo unshare-allowed; ulimit -n; exit 0",
    );
    probe.depends_on = vec![Dependency {
        container: "other".into(),
        condition: Condition::Start,
    }];
    let client = harness.launch(harness.task(vec![other, probe])).await;
    wait_stopped(&client).await;
    let log = log_text(&client, "probe");
    assert!(
        !log.contains("sleep 60"),
        "the other container's processes are visible:\n{log}"
    );
    // Docker's default set: CHOWN .. AUDIT_WRITE.
    for line in [
        "CapBnd:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapPrm:\t00000000a80425fb",
        "CapInh:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(log.contains("10.9.0.2\tskiff-test-host"));
    // Whole lines: the script text itself shows up in `ps`.
    assert!(
        !log.lines()
            .any(|l| l == "hosts-writable" || l == "unshare-allowed"),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.trim() == "20000"),
        "nofile clamped to the host's limit:\n{log}"
    );
}

/// Launches the task described by `SKIFF_TEST_LAUNCH` and then waits to be killed; a
/// no-op in normal runs. Used by `the_supervisor_survives_its_launcher`.
#[tokio::test]
async fn launcher_child() {
    let Ok(request) = std::env::var("SKIFF_TEST_LAUNCH") else {
        return;
    };
    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
    let config = config(
        request["state_root"].as_str().unwrap().as_ref(),
        request["runtime_root"].as_str().unwrap().as_ref(),
    );
    let spec = serde_json::from_value(request["spec"].clone()).unwrap();
    sandbox::ContainerDriver::new(config)
        .unwrap()
        .launch(spec)
        .await
        .unwrap();
    println!("LAUNCHED");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn the_supervisor_survives_its_launcher_and_remove_leaves_nothing() {
    use std::io::BufRead;

    let harness = Harness::new();
    let spec = harness.idle_task();
    let task_id = spec.task_id.clone();
    let config = harness.driver.config();
    let request = serde_json::json!({
        "state_root": config.state_root,
        "runtime_root": config.runtime_root,
        "spec": spec,
    });
    let mut launcher = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "launcher_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SKIFF_TEST_LAUNCH", request.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(launcher.stdout.take().unwrap());
    assert!(stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("LAUNCHED")));
    launcher.kill().unwrap();
    launcher.wait().unwrap();

    // A new agent adopts the task.
    let client = harness.driver.attach(&task_id).await.unwrap();
    assert_eq!(harness.driver.tasks().unwrap(), vec![task_id.clone()]);
    let running = wait_for(&client, |s| {
        s.container("idle").unwrap().state == ContainerState::Running
    })
    .await;
    let container_pid = running.container("idle").unwrap().pid.unwrap();
    let dir = harness.driver.task_dir(&task_id);
    let supervisor = supervisor_pid(dir.root()).expect("supervisor still running");
    let rss = std::fs::read_to_string(format!("/proc/{supervisor}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .to_owned();
    eprintln!("supervisor with one idle container: {rss}");
    assert!(matches!(
        harness.driver.remove(&task_id).await,
        Err(sandbox::SandboxError::TaskStillRunning { .. })
    ));

    client.stop("scale in").await.unwrap();
    let status = wait_stopped(&client).await;
    assert_eq!(status.container("idle").unwrap().exit_code, Some(0));
    // Once the supervisor is gone, the final status is still served.
    for _ in 0..200 {
        if supervisor_pid(dir.root()).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        supervisor_pid(dir.root()).is_none(),
        "supervisor exits after the task stopped"
    );
    let reattached = harness.driver.attach(&task_id).await.unwrap();
    assert_eq!(reattached.status().await.unwrap(), status);

    harness.driver.remove(&task_id).await.unwrap();
    assert!(
        !harness.driver.cgroups().exists(&task_id),
        "cgroup left behind"
    );
    assert!(
        !config.runtime_root.join(format!("{task_id}-idle")).exists(),
        "runtime state left behind"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(container_pid), None).is_err(),
        "container process left behind"
    );
    assert!(harness.driver.tasks().unwrap().is_empty());
    assert!(
        dir.container_log("idle").exists(),
        "logs stay for the agent"
    );
}

#[tokio::test]
async fn a_launch_interrupted_while_preparing_is_discarded() {
    let harness = Harness::new();
    let spec = harness.task(vec![harness.container("app", "exit 0")]);
    harness.track(&spec);
    let dir = harness.driver.task_dir(&spec.task_id);
    // What a crash in the middle of a launch's preparation leaves: the task directory
    // with some of its files, no spec, no supervisor.
    std::fs::create_dir_all(dir.etc_dir()).unwrap();
    harness.driver.remove(&spec.task_id).await.unwrap();
    assert!(!dir.etc_dir().exists());

    std::fs::create_dir_all(dir.etc_dir()).unwrap();
    let client = harness.driver.launch(spec).await.unwrap();
    let status = wait_stopped(&client).await;
    assert_eq!(status.container("app").unwrap().exit_code, Some(0));
}

#[tokio::test]
async fn adopting_needs_a_live_supervisor() {
    let harness = Harness::new();
    let spec = harness.idle_task();
    let task_id = spec.task_id.clone();
    harness.launch(spec.clone()).await;
    let adopted = harness.driver.adopt(&task_id).await.unwrap();
    assert!(adopted.status().await.is_ok());

    // A supervisor killed with its task still running cannot be adopted; the sandbox
    // is then removed without it.
    let dir = harness.driver.task_dir(&task_id);
    let pid = supervisor_pid(dir.root()).expect("supervisor running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let gone = async {
        while supervisor_pid(dir.root()).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .unwrap();
    let refused = harness.driver.adopt(&task_id).await.unwrap_err();
    assert!(
        matches!(refused, sandbox::SandboxError::SupervisorNotReady { .. }),
        "{refused}"
    );
    harness.driver.remove(&task_id).await.unwrap();
    assert!(harness.driver.tasks().unwrap().is_empty());

    // The agent may launch the same task again (it never ran as far as the control
    // plane knows): the removed sandbox's directory is reused.
    let relaunched = harness.launch(spec).await;
    relaunched.stop("test done").await.unwrap();
    wait_stopped(&relaunched).await;
}
