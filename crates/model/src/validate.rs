//! Fargate's rules for task definitions and RunTask overrides, with ECS's error types and
//! messages that say what to change. [`task_definition`] checks a definition and returns
//! it normalised (`cpu`/`memory` in units and MiB, compatibilities filled in).

use std::collections::{HashMap, HashSet};

use crate::task::TaskOverride;
use crate::task_definition::{ContainerDefinition, TaskDefinition};
use crate::EcsError;

pub const MAX_CONTAINERS: usize = 10;
pub const MAX_OVERRIDE_CHARS: usize = 8192;
pub const DEFAULT_EPHEMERAL_GIB: u32 = 20;
/// The bounds of `ephemeralStorage.sizeInGiB` when it is given.
pub const MIN_EPHEMERAL_GIB: u32 = 21;
pub const MAX_EPHEMERAL_GIB: u32 = 200;

/// Checks an `ephemeralStorage.sizeInGiB`; the message says the allowed range.
fn ephemeral_storage_size(gib: u32) -> Result<(), String> {
    if (MIN_EPHEMERAL_GIB..=MAX_EPHEMERAL_GIB).contains(&gib) {
        Ok(())
    } else {
        Err(format!(
            "The ephemeral storage size must be between {MIN_EPHEMERAL_GIB} and {MAX_EPHEMERAL_GIB} GiB; {gib} was given."
        ))
    }
}

/// The Fargate task sizes: for each CPU value, the memory values (MiB) allowed with it.
pub fn memory_choices(cpu: u32) -> Option<Vec<u32>> {
    let gib = |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).map(|g| g * 1024);
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => gib(1, 4, 1).collect(),
        1024 => gib(2, 8, 1).collect(),
        2048 => gib(4, 16, 1).collect(),
        4096 => gib(8, 30, 1).collect(),
        8192 => gib(16, 60, 4).collect(),
        16384 => gib(32, 120, 8).collect(),
        _ => return None,
    })
}

/// Parses a task `cpu` string: CPU units ("1024") or vCPUs ("1 vCPU", "0.25 vcpu").
pub fn parse_cpu(value: &str) -> Result<u32, EcsError> {
    parse_quantity(value, &["vcpu"], 1024.0)
        .ok_or_else(|| EcsError::Client("Invalid 'cpu' setting for task.".into()))
}

/// Parses a task `memory` string: MiB ("2048") or GB ("2 GB", "2GB").
pub fn parse_memory(value: &str) -> Result<u32, EcsError> {
    parse_quantity(value, &["gb", "gib"], 1024.0)
        .ok_or_else(|| EcsError::Client("Invalid 'memory' setting for task.".into()))
}

fn parse_quantity(value: &str, units: &[&str], scale: f64) -> Option<u32> {
    let v = value.trim().to_ascii_lowercase();
    for unit in units {
        if let Some(number) = v.strip_suffix(unit) {
            let n: f64 = number.trim().parse().ok()?;
            let scaled = n * scale;
            return (scaled > 0.0 && scaled.fract() == 0.0 && scaled <= u32::MAX as f64)
                .then_some(scaled as u32);
        }
    }
    v.parse().ok().filter(|n| *n > 0)
}

/// Checks that a task size is one Fargate offers.
pub fn fargate_size(cpu: u32, memory: u32) -> Result<(), EcsError> {
    let choices = memory_choices(cpu).ok_or_else(|| {
        EcsError::Client(format!(
            "Invalid 'cpu' setting for task: {cpu} CPU units is not a Fargate size. Use 256, 512, 1024, 2048, 4096, 8192 or 16384."
        ))
    })?;
    if choices.contains(&memory) {
        Ok(())
    } else {
        Err(EcsError::Client(format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. With {cpu} CPU units, memory must be one of {choices:?} MiB."
        )))
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn client(msg: impl Into<String>) -> EcsError {
    EcsError::Client(msg.into())
}

/// Validates a task definition for registration and returns it normalised.
pub fn task_definition(mut td: TaskDefinition) -> Result<TaskDefinition, EcsError> {
    if !name_ok(&td.family) {
        return Err(client(format!(
            "Invalid family '{}': up to 255 letters (uppercase and lowercase), numbers, hyphens and underscores are allowed.",
            td.family
        )));
    }
    for compat in &td.requires_compatibilities {
        if !["FARGATE", "EC2", "EXTERNAL"].contains(&compat.as_str()) {
            return Err(client(format!(
                "Invalid requiresCompatibilities value '{compat}': use FARGATE, EC2 or EXTERNAL."
            )));
        }
    }
    if td.container_definitions.is_empty() {
        return Err(client(
            "Container list cannot be empty: add at least one container definition.",
        ));
    }
    if td.container_definitions.len() > MAX_CONTAINERS {
        return Err(client(format!(
            "Too many containers: a task definition may have at most {MAX_CONTAINERS}."
        )));
    }
    let bridge = network_mode(&mut td)?;
    let cpu = td.cpu.as_deref().ok_or_else(|| {
        client("Fargate requires that 'cpu' be defined at the task level (for example \"256\" or \"1 vCPU\").")
    })?;
    let memory = td.memory.as_deref().ok_or_else(|| {
        client("Fargate requires that 'memory' be defined at the task level (for example \"512\" or \"2 GB\").")
    })?;
    let (cpu, memory) = (parse_cpu(cpu)?, parse_memory(memory)?);
    fargate_size(cpu, memory)?;
    td.cpu = Some(cpu.to_string());
    td.memory = Some(memory.to_string());

    if let Some(storage) = &td.ephemeral_storage {
        ephemeral_storage_size(storage.size_in_gi_b).map_err(client)?;
    }
    if td.ipc_mode.is_some() {
        return Err(client("Fargate does not support ipcMode: remove it."));
    }
    if let Some(pid_mode) = td.pid_mode.as_deref().filter(|m| *m != "task") {
        return Err(client(format!(
            "Fargate supports only pidMode 'task'; '{pid_mode}' was given."
        )));
    }
    if !td.placement_constraints.is_empty() {
        return Err(client(
            "Fargate does not support placement constraints in task definitions: remove placementConstraints.",
        ));
    }
    for volume in &td.volumes {
        if volume
            .host
            .as_ref()
            .is_some_and(|h| h.source_path.is_some())
        {
            return Err(client(format!(
                "Fargate does not support host volumes with a sourcePath (volume '{}'): remove the sourcePath to get a task-scoped volume.",
                volume.name.as_deref().unwrap_or("")
            )));
        }
    }
    containers(&td.container_definitions, cpu, memory)?;
    port_mappings(&td.container_definitions, bridge)?;

    if bridge {
        td.compatibilities = vec!["EXTERNAL".into(), "EC2".into()];
    } else {
        td.requires_compatibilities = vec!["FARGATE".into()];
        td.compatibilities = vec!["EC2".into(), "FARGATE".into()];
    }
    Ok(td)
}

/// Checks `networkMode` (awsvpc when absent) against `requiresCompatibilities`; true for
/// bridge mode, which only EC2 and EXTERNAL definitions may use.
fn network_mode(td: &mut TaskDefinition) -> Result<bool, EcsError> {
    let mode = td.network_mode.get_or_insert_with(|| "awsvpc".into());
    let fargate = td.requires_compatibilities.iter().any(|c| c == "FARGATE");
    match mode.as_str() {
        "awsvpc" => Ok(false),
        "bridge" if !fargate => Ok(true),
        "bridge" => Err(client(
            "Fargate only supports network mode 'awsvpc'; 'bridge' was given. Set networkMode to awsvpc, or requiresCompatibilities to EC2 for a bridge-mode definition.",
        )),
        other => Err(client(format!(
            "Network mode '{other}' is not supported: use awsvpc, or bridge in a definition whose requiresCompatibilities is EC2."
        ))),
    }
}

/// Checks the containers' `portMappings`. With awsvpc a task is reached at its own
/// address, so a hostPort can only repeat the containerPort; with bridge each mapping
/// publishes its containerPort on a host port (hostPort 0 or absent: one the server
/// picks), and no host port may be published twice.
fn port_mappings(defs: &[ContainerDefinition], bridge: bool) -> Result<(), EcsError> {
    let mut published: HashMap<(u16, &str), &str> = HashMap::new();
    for c in defs {
        let n = &c.name;
        for pm in &c.port_mappings {
            let protocol = pm.protocol_name();
            if protocol != "tcp" && protocol != "udp" {
                return Err(client(format!(
                    "Container '{n}': port mapping protocol must be tcp or udp, not '{protocol}'."
                )));
            }
            if !bridge {
                if let (Some(host), Some(container)) = (pm.host_port, pm.container_port) {
                    if host != container {
                        return Err(client(format!(
                            "Container '{n}': with awsvpc, hostPort ({host}) must be empty or equal to containerPort ({container})."
                        )));
                    }
                }
                continue;
            }
            if pm.container_port_range.is_some() {
                return Err(client(format!(
                    "Container '{n}': containerPortRange is not supported in bridge mode: map each containerPort on its own."
                )));
            }
            if pm.container_port.unwrap_or(0) == 0 {
                return Err(client(format!(
                    "Container '{n}': a port mapping needs a containerPort between 1 and 65535."
                )));
            }
            let Some(host) = pm.host_port.filter(|p| *p != 0) else {
                continue;
            };
            if let Some(first) = published.insert((host, protocol), n) {
                return Err(client(format!(
                    "Host port {host}/{protocol} is mapped more than once (containers '{first}' and '{n}'): give each mapping its own hostPort, or 0 for a dynamic one."
                )));
            }
        }
    }
    Ok(())
}

fn containers(
    defs: &[ContainerDefinition],
    task_cpu: u32,
    task_memory: u32,
) -> Result<(), EcsError> {
    let mut names = HashSet::new();
    for c in defs {
        if !name_ok(&c.name) {
            return Err(client(format!(
                "Invalid container name '{}': up to 255 letters, numbers, hyphens and underscores are allowed.",
                c.name
            )));
        }
        if !names.insert(c.name.as_str()) {
            return Err(client(format!(
                "Container names must be unique within a task definition: '{}' appears twice.",
                c.name
            )));
        }
        if c.image.trim().is_empty() {
            return Err(client(format!("Container '{}' has no image.", c.name)));
        }
        container(c)?;
    }
    if !defs.iter().any(ContainerDefinition::is_essential) {
        return Err(client(
            "A task definition must have at least one essential container.",
        ));
    }
    let cpu_sum: u32 = defs.iter().map(|c| c.cpu).sum();
    if cpu_sum > task_cpu {
        return Err(client(format!(
            "The containers' cpu ({cpu_sum}) exceeds the task's cpu ({task_cpu}): lower the container values or raise the task's."
        )));
    }
    let memory_sum: u64 = defs
        .iter()
        .map(|c| c.memory.or(c.memory_reservation).unwrap_or(0))
        .sum();
    if memory_sum > u64::from(task_memory) {
        return Err(client(format!(
            "The containers' memory ({memory_sum} MiB) exceeds the task's memory ({task_memory} MiB): lower the container values or raise the task's."
        )));
    }
    for c in defs {
        for dep in &c.depends_on {
            let Some(target) = defs.iter().find(|d| d.name == dep.container_name) else {
                return Err(client(format!(
                    "Container '{}' depends on '{}', which is not in this task definition.",
                    c.name, dep.container_name
                )));
            };
            if target.name == c.name {
                return Err(client(format!("Container '{}' depends on itself.", c.name)));
            }
            if !["START", "COMPLETE", "SUCCESS", "HEALTHY"].contains(&dep.condition.as_str()) {
                return Err(client(format!(
                    "Invalid dependsOn condition '{}' for container '{}': use START, COMPLETE, SUCCESS or HEALTHY.",
                    dep.condition, c.name
                )));
            }
            if ["COMPLETE", "SUCCESS"].contains(&dep.condition.as_str()) && target.is_essential() {
                return Err(client(format!(
                    "Container '{}' cannot wait for essential container '{}' to {}: mark '{}' essential=false.",
                    c.name, target.name, dep.condition, target.name
                )));
            }
            if dep.condition == "HEALTHY" && target.health_check.is_none() {
                return Err(client(format!(
                    "Container '{}' waits for '{}' to be HEALTHY, but '{}' has no healthCheck.",
                    c.name, target.name, target.name
                )));
            }
        }
    }
    dependency_cycle(defs)
}

fn dependency_cycle(defs: &[ContainerDefinition]) -> Result<(), EcsError> {
    // Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    let mut remaining: Vec<&ContainerDefinition> = defs.iter().collect();
    let mut started: HashSet<&str> = HashSet::new();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|c| {
            let ready = c
                .depends_on
                .iter()
                .all(|d| started.contains(d.container_name.as_str()));
            if ready {
                started.insert(c.name.as_str());
            }
            !ready
        });
        if remaining.len() == before {
            let names: Vec<&str> = remaining.iter().map(|c| c.name.as_str()).collect();
            return Err(client(format!(
                "The containers {names:?} depend on each other in a cycle: remove one of the dependsOn entries."
            )));
        }
    }
    Ok(())
}

fn container(c: &ContainerDefinition) -> Result<(), EcsError> {
    let n = &c.name;
    let unsupported = |what: &str| {
        Err(client(format!(
            "Fargate does not support {what} (container '{n}'): remove it."
        )))
    };
    if c.privileged == Some(true) {
        return unsupported("privileged containers");
    }
    if !c.links.is_empty() {
        return unsupported("links");
    }
    if c.hostname.is_some() {
        return unsupported("hostname");
    }
    if !c.extra_hosts.is_empty() {
        return unsupported("extraHosts");
    }
    if !c.dns_servers.is_empty() {
        return unsupported("dnsServers");
    }
    if !c.dns_search_domains.is_empty() {
        return unsupported("dnsSearchDomains");
    }
    if c.disable_networking.is_some() {
        return unsupported("disableNetworking");
    }
    if !c.docker_security_options.is_empty() {
        return unsupported("dockerSecurityOptions");
    }
    if let Some(lp) = &c.linux_parameters {
        if !lp.devices.is_empty() {
            return unsupported("linuxParameters.devices");
        }
        if lp.shared_memory_size.is_some() {
            return unsupported("linuxParameters.sharedMemorySize");
        }
        if lp.max_swap.is_some() {
            return unsupported("linuxParameters.maxSwap");
        }
        if lp.swappiness.is_some() {
            return unsupported("linuxParameters.swappiness");
        }
        if let Some(caps) = &lp.capabilities {
            if let Some(cap) = caps.add.iter().find(|c| c.as_str() != "SYS_PTRACE") {
                return Err(client(format!(
                    "Fargate only supports adding the SYS_PTRACE capability; container '{n}' adds {cap}."
                )));
            }
        }
    }
    if let (Some(memory), Some(reservation)) = (c.memory, c.memory_reservation) {
        if reservation >= memory {
            return Err(client(format!(
                "Container '{n}': memoryReservation ({reservation} MiB) must be lower than memory ({memory} MiB)."
            )));
        }
    }
    if c.memory.is_some_and(|m| m < 6) {
        return Err(client(format!(
            "Container '{n}': the memory limit must be at least 6 MiB."
        )));
    }
    for (field, value) in [
        ("startTimeout", c.start_timeout),
        ("stopTimeout", c.stop_timeout),
    ] {
        if let Some(v) = value.filter(|v| !(2..=120).contains(v)) {
            return Err(client(format!(
                "Container '{n}': {field} must be between 2 and 120 seconds; {v} was given."
            )));
        }
    }
    for ulimit in &c.ulimits {
        if ulimit.name != "nofile" {
            return Err(client(format!(
                "Container '{n}': Fargate supports only the 'nofile' ulimit, not '{}'.",
                ulimit.name
            )));
        }
        if ulimit.soft_limit < 0 || ulimit.soft_limit > ulimit.hard_limit {
            return Err(client(format!(
                "Container '{n}': the nofile soft limit must be between 0 and the hard limit."
            )));
        }
    }
    if let Some(hc) = &c.health_check {
        let ranges = [
            ("interval", hc.interval, 5, 300),
            ("timeout", hc.timeout, 2, 60),
            ("retries", hc.retries, 1, 10),
            ("startPeriod", hc.start_period, 0, 300),
        ];
        for (field, value, lo, hi) in ranges {
            if let Some(v) = value.filter(|v| !(lo..=hi).contains(v)) {
                return Err(client(format!(
                    "Container '{n}': healthCheck.{field} must be between {lo} and {hi}; {v} was given."
                )));
            }
        }
        match hc.command.first().map(String::as_str) {
            Some("CMD" | "CMD-SHELL") if hc.command.len() > 1 => {}
            _ => {
                return Err(client(format!(
                    "Container '{n}': healthCheck.command must start with CMD or CMD-SHELL followed by the command."
                )))
            }
        }
    }
    if let Some(log) = &c.log_configuration {
        if !["awslogs", "splunk", "awsfirelens"].contains(&log.log_driver.as_str()) {
            return Err(client(format!(
                "Container '{n}': Fargate supports the log drivers awslogs, splunk and awsfirelens, not '{}'.",
                log.log_driver
            )));
        }
    }
    Ok(())
}

/// Validates RunTask overrides against the task definition they apply to, returning
/// the effective task size (cpu units, memory MiB).
pub fn overrides(td: &TaskDefinition, overrides: &TaskOverride) -> Result<(u32, u32), EcsError> {
    let size = serde_json::to_string(overrides)
        .map(|s| s.len())
        .unwrap_or(0);
    if size > MAX_OVERRIDE_CHARS {
        return Err(EcsError::InvalidParameter(format!(
            "Container Overrides length must be at most {MAX_OVERRIDE_CHARS} characters; these are {size}."
        )));
    }
    for o in &overrides.container_overrides {
        let name = o.name.as_deref().unwrap_or("");
        if !td.container_definitions.iter().any(|c| c.name == name) {
            return Err(EcsError::InvalidParameter(format!(
                "Override for container '{name}' does not match any container of task definition {}.",
                td.family
            )));
        }
    }
    let cpu = match overrides.cpu.as_deref() {
        Some(c) => parse_cpu(c)?,
        None => parse_cpu(td.cpu.as_deref().unwrap_or("256"))?,
    };
    let memory = match overrides.memory.as_deref() {
        Some(m) => parse_memory(m)?,
        None => parse_memory(td.memory.as_deref().unwrap_or("512"))?,
    };
    fargate_size(cpu, memory)?;
    if let Some(storage) = &overrides.ephemeral_storage {
        ephemeral_storage_size(storage.size_in_gi_b).map_err(EcsError::InvalidParameter)?;
    }
    Ok((cpu, memory))
}

#[cfg(test)]
mod tests;
