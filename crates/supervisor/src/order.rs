//! ECS `dependsOn` semantics, as pure functions over container states.
//!
//! [`validate`] rejects specs that can never start (unknown or cyclic dependencies, HEALTHY
//! on a container without a health check) before anything runs. During the task,
//! [`readiness`] tells for one pending container whether it may start now, must wait, or
//! can never start because a dependency ended the wrong way:
//!
//! | condition | satisfied when the dependency       | impossible when it            |
//! |-----------|-------------------------------------|-------------------------------|
//! | START     | is running or has exited            | will never start              |
//! | COMPLETE  | has exited                          | will never start              |
//! | SUCCESS   | has exited with code 0              | exited non-zero / never starts|
//! | HEALTHY   | has passed a health check           | went UNHEALTHY or exited first|

use std::collections::{HashMap, HashSet};

use crate::protocol::{ContainerState, HealthStatus};
use crate::spec::{Condition, ContainerSpec, TaskSpec};

/// Whether a pending container may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Wait,
    /// The container can never start; the reason names the dependency.
    Never(String),
}

/// What [`readiness`] needs to know about a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyState {
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    /// None for a container without a health check.
    pub health: Option<HealthStatus>,
}

/// Checks that every dependency can in principle be satisfied; the error is a task stop
/// reason.
pub fn validate(spec: &TaskSpec) -> Result<(), String> {
    let mut names = HashSet::new();
    for container in &spec.containers {
        if !names.insert(container.name.as_str()) {
            return Err(format!("container name {} is used twice", container.name));
        }
        if container.args.is_empty() {
            return Err(format!(
                "container {} has no command to run",
                container.name
            ));
        }
        if container
            .health_check
            .as_ref()
            .is_some_and(|check| check.command.is_empty())
        {
            return Err(format!(
                "container {} has a health check with no command to run",
                container.name
            ));
        }
    }
    if spec.containers.is_empty() {
        return Err("the task has no containers".to_owned());
    }
    for container in &spec.containers {
        for dependency in &container.depends_on {
            if !names.contains(dependency.container.as_str()) {
                return Err(format!(
                    "container {} depends on {}, which is not in the task",
                    container.name, dependency.container
                ));
            }
            let checked = spec
                .containers
                .iter()
                .any(|c| c.name == dependency.container && c.health_check.is_some());
            if dependency.condition == Condition::Healthy && !checked {
                return Err(format!(
                    "container {} depends on {} with condition HEALTHY, but {} has no health check: add a healthCheck to {} or use START",
                    container.name, dependency.container, dependency.container, dependency.container
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&spec.containers) {
        return Err(format!("dependsOn forms a cycle: {}", cycle.join(" -> ")));
    }
    Ok(())
}

fn find_cycle(containers: &[ContainerSpec]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for next in edges.get(name).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let edges: HashMap<&str, Vec<&str>> = containers
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.depends_on.iter().map(|d| d.container.as_str()).collect(),
            )
        })
        .collect();
    let mut marks = HashMap::new();
    containers
        .iter()
        .find_map(|c| visit(&c.name, &edges, &mut marks, &mut Vec::new()))
}

/// Whether `container` may start, given its dependencies' states.
pub fn readiness(
    container: &ContainerSpec,
    lookup: impl Fn(&str) -> Option<DependencyState>,
) -> Readiness {
    let mut ready = true;
    for dependency in &container.depends_on {
        let Some(dep) = lookup(&dependency.container) else {
            return Readiness::Never(format!(
                "container {} depends on {}, which is not in the task",
                container.name, dependency.container
            ));
        };
        let never = |why: String| {
            Readiness::Never(format!(
                "container {} was not started: it depends on {} with condition {}, but {}",
                container.name, dependency.container, dependency.condition, why
            ))
        };
        if dep.state == ContainerState::NotStarted {
            return never(format!("{} was never started", dependency.container));
        }
        let exited = dep.state == ContainerState::Exited;
        let satisfied = match dependency.condition {
            Condition::Start => {
                matches!(dep.state, ContainerState::Running | ContainerState::Exited)
            }
            Condition::Complete => exited,
            Condition::Success => match (exited, dep.exit_code) {
                (true, Some(0)) => true,
                (true, code) => {
                    let code = code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                    return never(format!("{} exited with code {code}", dependency.container));
                }
                (false, _) => false,
            },
            Condition::Healthy => match (dep.health, dep.state) {
                (Some(HealthStatus::Healthy), _) => true,
                (Some(HealthStatus::Unhealthy), _) => {
                    return never(format!(
                        "{} became UNHEALTHY before it was ever HEALTHY",
                        dependency.container
                    ))
                }
                (_, ContainerState::Exited) => {
                    return never(format!(
                        "{} exited before it was HEALTHY",
                        dependency.container
                    ))
                }
                (None, ContainerState::Running) => {
                    return never(format!("{} has no health check", dependency.container))
                }
                // Not started yet, or no verdict yet.
                _ => false,
            },
        };
        ready &= satisfied;
    }
    if ready {
        Readiness::Ready
    } else {
        Readiness::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Dependency, HealthCheck};

    fn health_check(command: Vec<String>) -> HealthCheck {
        HealthCheck {
            command,
            interval: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(2),
            retries: 1,
            start_period: std::time::Duration::ZERO,
        }
    }

    fn container(name: &str, deps: &[(&str, Condition)]) -> ContainerSpec {
        let mut spec = ContainerSpec::new(name, "/rootfs", vec!["true".into()]);
        spec.depends_on = deps
            .iter()
            .map(|(c, condition)| Dependency {
                container: c.to_string(),
                condition: *condition,
            })
            .collect();
        spec
    }

    fn task(containers: Vec<ContainerSpec>) -> TaskSpec {
        TaskSpec {
            task_id: "0".repeat(32),
            cpu_units: 256,
            memory_mib: 512,
            netns_path: "/run/netns/x".into(),
            hostname: "h".into(),
            address: None,
            dns: None,
            containers,
        }
    }

    fn state(state: ContainerState, exit_code: Option<i32>) -> Option<DependencyState> {
        Some(DependencyState {
            state,
            exit_code,
            health: None,
        })
    }

    fn checked(state: ContainerState, health: HealthStatus) -> Option<DependencyState> {
        Some(DependencyState {
            state,
            exit_code: None,
            health: Some(health),
        })
    }

    #[test]
    fn validate_rejects_unknown_duplicate_healthy_and_cycles() {
        let unknown = task(vec![container("a", &[("ghost", Condition::Start)])]);
        assert!(validate(&unknown).unwrap_err().contains("ghost"));
        let duplicate = task(vec![container("a", &[]), container("a", &[])]);
        assert!(validate(&duplicate).unwrap_err().contains("twice"));
        let mut healthy = task(vec![
            container("a", &[]),
            container("b", &[("a", Condition::Healthy)]),
        ]);
        let reason = validate(&healthy).unwrap_err();
        assert!(
            reason.contains("HEALTHY") && reason.contains("a has no health check"),
            "{reason}"
        );
        healthy.containers[0].health_check = Some(health_check(vec!["true".into()]));
        assert_eq!(validate(&healthy), Ok(()));
        healthy.containers[0].health_check = Some(health_check(vec![]));
        assert!(validate(&healthy)
            .unwrap_err()
            .contains("health check with no command"));
        let cycle = task(vec![
            container("a", &[("c", Condition::Start)]),
            container("b", &[("a", Condition::Start)]),
            container("c", &[("b", Condition::Start)]),
            container("d", &[]),
        ]);
        let reason = validate(&cycle).unwrap_err();
        assert!(
            reason.contains("cycle") && reason.contains("a -> c -> b -> a"),
            "{reason}"
        );
        let ok = task(vec![
            container("a", &[]),
            container("b", &[("a", Condition::Success)]),
        ]);
        assert_eq!(validate(&ok), Ok(()));
    }

    #[test]
    fn start_needs_the_dependency_started() {
        let web = container("web", &[("db", Condition::Start)]);
        assert_eq!(
            readiness(&web, |_| state(ContainerState::Pending, None)),
            Readiness::Wait
        );
        assert_eq!(
            readiness(&web, |_| state(ContainerState::Created, None)),
            Readiness::Wait
        );
        assert_eq!(
            readiness(&web, |_| state(ContainerState::Running, None)),
            Readiness::Ready
        );
        assert_eq!(
            readiness(&web, |_| state(ContainerState::Exited, Some(3))),
            Readiness::Ready
        );
        assert!(matches!(
            readiness(&web, |_| state(ContainerState::NotStarted, None)),
            Readiness::Never(reason) if reason.contains("db was never started")
        ));
    }

    #[test]
    fn complete_and_success_wait_for_exit() {
        let complete = container("web", &[("init", Condition::Complete)]);
        let success = container("web", &[("init", Condition::Success)]);
        for spec in [&complete, &success] {
            assert_eq!(
                readiness(spec, |_| state(ContainerState::Running, None)),
                Readiness::Wait
            );
            assert_eq!(
                readiness(spec, |_| state(ContainerState::Exited, Some(0))),
                Readiness::Ready
            );
        }
        assert_eq!(
            readiness(&complete, |_| state(ContainerState::Exited, Some(1))),
            Readiness::Ready
        );
        let Readiness::Never(reason) =
            readiness(&success, |_| state(ContainerState::Exited, Some(1)))
        else {
            panic!("SUCCESS on a failed dependency must never start");
        };
        assert!(
            reason.contains("web") && reason.contains("init exited with code 1"),
            "{reason}"
        );
    }

    #[test]
    fn every_dependency_must_be_satisfied() {
        let web = container(
            "web",
            &[("a", Condition::Start), ("b", Condition::Complete)],
        );
        let lookup = |name: &str| match name {
            "a" => state(ContainerState::Running, None),
            _ => state(ContainerState::Running, None),
        };
        assert_eq!(readiness(&web, lookup), Readiness::Wait);
        let lookup = |name: &str| match name {
            "a" => state(ContainerState::Running, None),
            _ => state(ContainerState::Exited, Some(0)),
        };
        assert_eq!(readiness(&web, lookup), Readiness::Ready);
    }

    #[test]
    fn healthy_waits_for_a_passing_check() {
        let web = container("web", &[("db", Condition::Healthy)]);
        for waiting in [
            state(ContainerState::Pending, None),
            state(ContainerState::Created, None),
            checked(ContainerState::Running, HealthStatus::Unknown),
        ] {
            assert_eq!(readiness(&web, |_| waiting), Readiness::Wait);
        }
        assert_eq!(
            readiness(&web, |_| checked(
                ContainerState::Running,
                HealthStatus::Healthy
            )),
            Readiness::Ready
        );
        // A dependency that was healthy and then exited had satisfied the condition.
        assert_eq!(
            readiness(&web, |_| checked(
                ContainerState::Exited,
                HealthStatus::Healthy
            )),
            Readiness::Ready
        );
        let never = |dep| match readiness(&web, |_| dep) {
            Readiness::Never(reason) => reason,
            other => panic!("expected Never, got {other:?}"),
        };
        let reason = never(checked(ContainerState::Running, HealthStatus::Unhealthy));
        assert!(
            reason.contains("web") && reason.contains("db became UNHEALTHY"),
            "{reason}"
        );
        let reason = never(checked(ContainerState::Exited, HealthStatus::Unknown));
        assert!(
            reason.contains("db exited before it was HEALTHY"),
            "{reason}"
        );
        let reason = never(state(ContainerState::Running, None));
        assert!(reason.contains("db has no health check"), "{reason}");
    }
}
