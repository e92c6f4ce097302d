//! The task metadata v4 documents, with the JSON keys ECS uses: one container
//! (`${ECS_CONTAINER_METADATA_URI_V4}`) and the whole task (`.../task`).
//!
//! Documents are built from a [`TaskRecord`] (plan, latest report, supervisor status)
//! and the few [`HostFacts`] measured on the host per request. Fields ECS only sets
//! when they apply (`ExitCode`, `FinishedAt`, `Health`, the pull times) are omitted
//! until they do; timestamps are RFC 3339 in UTC, as the ECS agent writes them.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::Ipv4Net;
use model::agent::{ContainerPlan, NetworkMode, Protocol};
use model::task::TaskStatus;
use serde::Serialize;
use supervisor::protocol::{ContainerHealth, ContainerStatus};

use super::registry::TaskRecord;

/// What the documents need from the host besides the task's record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostFacts {
    /// The task's `nameserver` and `search` entries, from its resolv.conf.
    pub name_servers: Vec<String>,
    pub search_list: Vec<String>,
    /// Bytes written to the task's writable layers, in MiB.
    pub storage_utilized_mib: u64,
    pub clock: ClockDrift,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ClockDrift {
    /// The host clock's maximum error, in milliseconds.
    pub clock_error_bound: f64,
    pub reference_timestamp: String,
    /// `SYNCHRONIZED` or `NOT_SYNCHRONIZED`.
    pub clock_synchronization_status: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TaskDocument {
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    family: String,
    revision: String,
    desired_status: &'static str,
    known_status: &'static str,
    limits: TaskLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_stopped_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_stopped_at: Option<String>,
    availability_zone: String,
    launch_type: &'static str,
    containers: Vec<ContainerDocument>,
    clock_drift: ClockDrift,
    ephemeral_storage_metrics: StorageMetrics,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskLimits {
    /// vCPUs, as a fraction: 256 units is 0.25.
    #[serde(rename = "CPU")]
    cpu: f64,
    /// MiB.
    memory: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StorageMetrics {
    utilized: u64,
    reserved: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerDocument {
    docker_id: String,
    name: String,
    docker_name: String,
    image: String,
    #[serde(rename = "ImageID", skip_serializing_if = "Option::is_none")]
    image_id: Option<String>,
    labels: BTreeMap<&'static str, String>,
    desired_status: &'static str,
    known_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    limits: ContainerLimits,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(rename = "Type")]
    kind: &'static str,
    networks: Vec<NetworkDocument>,
    /// The container's ports published on the host (bridge mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthDocument>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PortDocument {
    container_port: u16,
    protocol: &'static str,
    host_port: u16,
    host_ip: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerLimits {
    /// CPU units (1024 per vCPU); 0 when the container has no reservation of its own.
    #[serde(rename = "CPU")]
    cpu: u32,
    /// The container's hard limit in MiB, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkDocument {
    network_mode: &'static str,
    #[serde(rename = "IPv4Addresses")]
    ipv4_addresses: Vec<String>,
    attachment_index: u32,
    #[serde(rename = "MACAddress")]
    mac_address: String,
    #[serde(rename = "IPv4SubnetCIDRBlock")]
    ipv4_subnet_cidr_block: String,
    domain_name_servers: Vec<String>,
    domain_name_search_list: Vec<String>,
    #[serde(rename = "PrivateDNSName")]
    private_dns_name: String,
    subnet_gateway_ipv4_address: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthDocument {
    status: &'static str,
    status_since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    output: String,
}

/// The task document, with every container.
pub(crate) fn task_document(record: &TaskRecord, host: &HostFacts) -> TaskDocument {
    let plan = &record.plan;
    let report = &record.report;
    TaskDocument {
        cluster: cluster_arn(&plan.task_arn, &plan.cluster),
        task_arn: plan.task_arn.clone(),
        family: plan.family.clone(),
        revision: plan.revision.to_string(),
        desired_status: desired_status(record),
        known_status: report.last_status.unwrap_or(plan.last_status).as_str(),
        limits: TaskLimits {
            cpu: f64::from(plan.cpu_units) / 1024.0,
            memory: plan.memory_mib,
        },
        pull_started_at: report.pull_started_at.map(rfc3339),
        pull_stopped_at: report.pull_stopped_at.map(rfc3339),
        execution_stopped_at: report.execution_stopped_at.map(rfc3339),
        availability_zone: format!("{}a", arn_field(&plan.task_arn, 3).unwrap_or("us-east-1")),
        launch_type: "FARGATE",
        containers: plan
            .containers
            .iter()
            .map(|c| build_container(record, c, host))
            .collect(),
        clock_drift: host.clock.clone(),
        ephemeral_storage_metrics: StorageMetrics {
            utilized: host.storage_utilized_mib,
            reserved: u64::from(plan.ephemeral_storage_gib) * 1024,
        },
    }
}

/// The document of one container of the task; None if the task has no such container.
pub(crate) fn container_document(
    record: &TaskRecord,
    container: &str,
    host: &HostFacts,
) -> Option<ContainerDocument> {
    let plan = record
        .plan
        .containers
        .iter()
        .find(|c| c.name == container)?;
    Some(build_container(record, plan, host))
}

/// The container's runtime id: its `DockerId`, and the key of `/task/stats`.
pub(crate) fn docker_id(record: &TaskRecord, container: &str) -> String {
    record
        .report
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.runtime_id.clone())
        .unwrap_or_else(|| supervisor::spec::container_id(&record.plan.task_id, container))
}

fn build_container(record: &TaskRecord, c: &ContainerPlan, host: &HostFacts) -> ContainerDocument {
    let plan = &record.plan;
    let report = record.report.containers.iter().find(|r| r.name == c.name);
    let status: Option<&ContainerStatus> =
        record.status.as_ref().and_then(|s| s.container(&c.name));
    let network = &plan.network;
    let subnet = Ipv4Net::new(network.address, network.prefix_len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| Ipv4Net::from(network.address));
    let labels = BTreeMap::from([
        (
            "com.amazonaws.ecs.cluster",
            cluster_arn(&plan.task_arn, &plan.cluster),
        ),
        ("com.amazonaws.ecs.container-name", c.name.clone()),
        ("com.amazonaws.ecs.task-arn", plan.task_arn.clone()),
        (
            "com.amazonaws.ecs.task-definition-family",
            plan.family.clone(),
        ),
        (
            "com.amazonaws.ecs.task-definition-version",
            plan.revision.to_string(),
        ),
    ]);
    let stopped = report.is_some_and(|r| r.last_status == "STOPPED");
    ContainerDocument {
        docker_id: docker_id(record, &c.name),
        name: c.name.clone(),
        docker_name: c.name.clone(),
        image: c.image.clone(),
        image_id: report.and_then(|r| r.image_digest.clone()),
        labels,
        desired_status: desired_status(record),
        known_status: report.map_or_else(|| "PENDING".to_owned(), |r| r.last_status.clone()),
        exit_code: report.and_then(|r| r.exit_code),
        limits: ContainerLimits {
            cpu: c.cpu,
            memory: c.memory_mib,
        },
        created_at: rfc3339(record.endpoint.created_at),
        started_at: status.and_then(|s| s.started_at).map(rfc3339_millis),
        finished_at: status
            .and_then(|s| s.finished_at)
            .filter(|_| stopped)
            .map(rfc3339_millis),
        kind: "NORMAL",
        networks: vec![NetworkDocument {
            network_mode: match network.mode {
                NetworkMode::Awsvpc => "awsvpc",
                NetworkMode::Bridge => "bridge",
            },
            ipv4_addresses: vec![network.address.to_string()],
            attachment_index: 0,
            mac_address: record.endpoint.mac_address.clone(),
            ipv4_subnet_cidr_block: subnet.to_string(),
            domain_name_servers: host.name_servers.clone(),
            domain_name_search_list: host.search_list.clone(),
            private_dns_name: crate::prepare::hostname(plan),
            subnet_gateway_ipv4_address: format!("{}/{}", network.gateway, network.prefix_len),
        }],
        ports: network
            .port_bindings
            .iter()
            .filter(|b| b.container_name == c.name)
            .map(|b| PortDocument {
                container_port: b.container_port,
                protocol: match b.protocol {
                    Protocol::Udp => "udp",
                    _ => "tcp",
                },
                host_port: b.host_port,
                host_ip: "0.0.0.0",
            })
            .collect(),
        health: status.and_then(|s| s.health.as_ref()).map(health_document),
    }
}

fn health_document(health: &ContainerHealth) -> HealthDocument {
    HealthDocument {
        status: health.status.as_str(),
        status_since: rfc3339_millis(health.since),
        exit_code: health.exit_code,
        output: health.output.clone(),
    }
}

/// STOPPED once the task is being stopped for any reason, RUNNING before.
fn desired_status(record: &TaskRecord) -> &'static str {
    let report = &record.report;
    let stopping = report.stop_code.is_some()
        || report
            .last_status
            .is_some_and(|s| s >= TaskStatus::Stopping);
    if stopping {
        "STOPPED"
    } else {
        "RUNNING"
    }
}

/// The cluster's ARN, from the task ARN's region and account.
fn cluster_arn(task_arn: &str, cluster: &str) -> String {
    match (arn_field(task_arn, 3), arn_field(task_arn, 4)) {
        (Some(region), Some(account)) => {
            format!("arn:aws:ecs:{region}:{account}:cluster/{cluster}")
        }
        _ => cluster.to_owned(),
    }
}

/// The `index`th colon-separated field of an ARN (3: region, 4: account).
fn arn_field(arn: &str, index: usize) -> Option<&str> {
    arn.split(':').nth(index).filter(|f| !f.is_empty())
}

/// `2024-05-01T12:00:00.123456Z` from epoch seconds, to the microsecond (an f64 of
/// seconds holds no more).
pub(crate) fn rfc3339(seconds: f64) -> String {
    DateTime::<Utc>::from_timestamp_micros((seconds * 1e6).round() as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn rfc3339_millis(millis: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The `nameserver` and `search` entries of a resolv.conf.
pub(crate) fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (servers, search)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::metadata::registry::tests::plan;
    use crate::metadata::registry::TaskEndpoint;
    use model::agent::{ContainerReport, TaskReport};
    use serde_json::{json, Value};
    use supervisor::protocol::{ContainerState, HealthStatus, TaskPhase};

    fn host() -> HostFacts {
        HostFacts {
            name_servers: vec!["10.0.0.53".into()],
            search_list: vec!["ec2.internal".into()],
            storage_utilized_mib: 7,
            clock: ClockDrift {
                clock_error_bound: 0.5,
                reference_timestamp: "2024-01-01T00:00:00Z".into(),
                clock_synchronization_status: "SYNCHRONIZED",
            },
        }
    }

    fn record() -> TaskRecord {
        let plan = plan("a1", Ipv4Addr::new(10, 0, 0, 2), &["app", "sidecar"]);
        let endpoint = TaskEndpoint::new(
            &plan,
            "sk1".into(),
            "0a:58:0a:00:00:02".into(),
            1_700_000_000.5,
        );
        let report = TaskReport {
            task_arn: plan.task_arn.clone(),
            last_status: Some(TaskStatus::Running),
            pull_started_at: Some(1_700_000_000.0),
            pull_stopped_at: Some(1_700_000_000.25),
            containers: vec![
                ContainerReport {
                    name: "app".into(),
                    last_status: "RUNNING".into(),
                    runtime_id: Some("a1-app".into()),
                    image_digest: Some("sha256:abc".into()),
                    health_status: Some("HEALTHY".into()),
                    ..Default::default()
                },
                ContainerReport {
                    name: "sidecar".into(),
                    last_status: "STOPPED".into(),
                    runtime_id: Some("a1-sidecar".into()),
                    exit_code: Some(3),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let container = |name: &str, state, finished_at, health| ContainerStatus {
            name: name.into(),
            state,
            pid: None,
            exit_code: None,
            oom_killed: false,
            started_at: Some(1_700_000_001_000),
            finished_at,
            reason: None,
            health,
        };
        let status = supervisor::protocol::TaskStatus {
            task_id: "a1".into(),
            phase: TaskPhase::Running,
            stop_code: None,
            stopped_reason: None,
            containers: vec![
                container(
                    "app",
                    ContainerState::Running,
                    None,
                    Some(ContainerHealth {
                        status: HealthStatus::Healthy,
                        since: 1_700_000_002_000,
                        exit_code: Some(0),
                        output: "ok".into(),
                    }),
                ),
                container(
                    "sidecar",
                    ContainerState::Exited,
                    Some(1_700_000_003_000),
                    None,
                ),
            ],
        };
        TaskRecord {
            plan: std::sync::Arc::new(plan),
            endpoint,
            report,
            status: Some(status),
        }
    }

    #[test]
    fn the_container_document_has_ecs_keys_and_values() {
        let doc =
            serde_json::to_value(container_document(&record(), "app", &host()).unwrap()).unwrap();
        let arn = "arn:aws:ecs:eu-west-1:000000000000:task/default/a1";
        assert_eq!(doc["DockerId"], "a1-app");
        assert_eq!(doc["Name"], "app");
        assert_eq!(doc["DockerName"], "app");
        assert_eq!(doc["Image"], "registry.local/app:1");
        assert_eq!(doc["ImageID"], "sha256:abc");
        assert_eq!(
            doc["Labels"],
            json!({
                "com.amazonaws.ecs.cluster": "arn:aws:ecs:eu-west-1:000000000000:cluster/default",
                "com.amazonaws.ecs.container-name": "app",
                "com.amazonaws.ecs.task-arn": arn,
                "com.amazonaws.ecs.task-definition-family": "web",
                "com.amazonaws.ecs.task-definition-version": "3",
            })
        );
        assert_eq!(
            (doc["DesiredStatus"].as_str(), doc["KnownStatus"].as_str()),
            (Some("RUNNING"), Some("RUNNING"))
        );
        assert_eq!(doc["Limits"], json!({"CPU": 128, "Memory": 256}));
        assert_eq!(doc["CreatedAt"], "2023-11-14T22:13:20.500Z");
        assert_eq!(doc["StartedAt"], "2023-11-14T22:13:21Z");
        assert_eq!(doc["Type"], "NORMAL");
        assert_eq!(
            doc["Networks"],
            json!([{
                "NetworkMode": "awsvpc",
                "IPv4Addresses": ["10.0.0.2"],
                "AttachmentIndex": 0,
                "MACAddress": "0a:58:0a:00:00:02",
                "IPv4SubnetCIDRBlock": "10.0.0.0/24",
                "DomainNameServers": ["10.0.0.53"],
                "DomainNameSearchList": ["ec2.internal"],
                "PrivateDNSName": "ip-10-0-0-2.ec2.internal",
                "SubnetGatewayIpv4Address": "10.0.0.1/24",
            }])
        );
        assert_eq!(
            doc["Health"],
            json!({"status": "HEALTHY", "statusSince": "2023-11-14T22:13:22Z", "exitCode": 0, "output": "ok"})
        );
        for absent in ["ExitCode", "FinishedAt", "LogDriver", "ContainerARN"] {
            assert!(doc.get(absent).is_none(), "{absent} in {doc}");
        }
    }

    #[test]
    fn a_bridge_container_lists_its_published_ports() {
        let mut record = record();
        let mut plan = (*record.plan).clone();
        plan.network.mode = NetworkMode::Bridge;
        plan.network.port_bindings = vec![model::agent::PortBinding {
            container_name: "app".into(),
            container_port: 80,
            host_port: 49153,
            protocol: Protocol::Tcp,
        }];
        record.plan = std::sync::Arc::new(plan);
        let doc =
            serde_json::to_value(container_document(&record, "app", &host()).unwrap()).unwrap();
        assert_eq!(doc["Networks"][0]["NetworkMode"], "bridge");
        assert_eq!(
            doc["Ports"],
            json!([{"ContainerPort": 80, "Protocol": "tcp", "HostPort": 49153, "HostIp": "0.0.0.0"}])
        );
        let sidecar =
            serde_json::to_value(container_document(&record, "sidecar", &host()).unwrap()).unwrap();
        assert!(sidecar.get("Ports").is_none(), "{sidecar}");
    }

    #[test]
    fn a_stopped_container_has_its_exit_code_and_finish_time_and_no_health() {
        let doc = serde_json::to_value(container_document(&record(), "sidecar", &host()).unwrap())
            .unwrap();
        assert_eq!(doc["KnownStatus"], "STOPPED");
        assert_eq!(doc["ExitCode"], 3);
        assert_eq!(doc["FinishedAt"], "2023-11-14T22:13:23Z");
        assert!(doc.get("Health").is_none());
        assert!(doc.get("ImageID").is_none());
        assert!(container_document(&record(), "missing", &host()).is_none());
    }

    #[test]
    fn the_task_document_lists_every_container_and_the_task_limits() {
        let doc: Value = serde_json::to_value(task_document(&record(), &host())).unwrap();
        assert_eq!(
            doc["Cluster"],
            "arn:aws:ecs:eu-west-1:000000000000:cluster/default"
        );
        assert_eq!(
            doc["TaskARN"],
            "arn:aws:ecs:eu-west-1:000000000000:task/default/a1"
        );
        assert_eq!(
            (doc["Family"].as_str(), doc["Revision"].as_str()),
            (Some("web"), Some("3"))
        );
        assert_eq!(doc["Limits"], json!({"CPU": 0.25, "Memory": 512}));
        assert_eq!(doc["PullStartedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(doc["PullStoppedAt"], "2023-11-14T22:13:20.250Z");
        assert_eq!(doc["AvailabilityZone"], "eu-west-1a");
        assert_eq!(doc["LaunchType"], "FARGATE");
        assert_eq!(doc["KnownStatus"], "RUNNING");
        assert_eq!(doc["DesiredStatus"], "RUNNING");
        assert_eq!(
            doc["EphemeralStorageMetrics"],
            json!({"Utilized": 7, "Reserved": 21504})
        );
        assert_eq!(
            doc["ClockDrift"]["ClockSynchronizationStatus"],
            "SYNCHRONIZED"
        );
        let names: Vec<&str> = doc["Containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app", "sidecar"]);
        assert!(doc.get("ExecutionStoppedAt").is_none());
    }

    #[test]
    fn a_stop_turns_the_desired_status_to_stopped() {
        let mut record = record();
        record.report.stop_code = Some("UserInitiated".into());
        let doc = serde_json::to_value(task_document(&record, &host())).unwrap();
        assert_eq!(doc["DesiredStatus"], "STOPPED");
        assert_eq!(doc["Containers"][0]["DesiredStatus"], "STOPPED");
    }

    #[test]
    fn resolv_conf_gives_servers_and_search_domains() {
        let (servers, search) = parse_resolv_conf(
            "# x\nnameserver 10.0.0.2\nsearch a.internal b\nnameserver 1.1.1.1\n",
        );
        assert_eq!(servers, ["10.0.0.2", "1.1.1.1"]);
        assert_eq!(search, ["a.internal", "b"]);
    }
}
