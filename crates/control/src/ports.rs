//! Host ports of bridge-mode tasks: which task publishes what on the host, and the
//! firewall policy that lets the published container ports be reached.
//!
//! Like addresses (see `ipam`), host ports are held by tasks that are not yet STOPPED,
//! and the control plane is the only writer, so an in-memory table rebuilt from the
//! stored task records at start is the whole state. RunTask allocates under the ipam
//! lock, which serializes RunTasks, and the table is updated before the task records are
//! written; a failed write gives the ports back. A task's ports are released when it
//! reaches STOPPED, where its address is.
//!
//! A fixed `hostPort` is taken as asked or not at all; `hostPort` 0 or absent gets a
//! free port of the configured range, searched from just past the last one handed out so
//! a port a task just gave up is not reused at once.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use ipnet::Ipv4Net;
use model::agent::{PortBinding, Protocol, SecurityPolicy, SecurityRule};
use model::task::{Failure, NetworkBinding};
use model::task_definition::ContainerDefinition;

use crate::Control;

/// The host ports dynamic mappings get when no range is configured: ECS's range for
/// dynamic host ports.
pub const DEFAULT_HOST_PORT_RANGE: HostPortRange = HostPortRange {
    low: 49153,
    high: 65535,
};

/// An inclusive range of host ports, written `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortRange {
    low: u16,
    high: u16,
}

impl HostPortRange {
    /// The range `low..=high`; None unless 1 <= low <= high.
    pub fn new(low: u16, high: u16) -> Option<Self> {
        (low >= 1 && low <= high).then_some(Self { low, high })
    }

    fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl Default for HostPortRange {
    fn default() -> Self {
        DEFAULT_HOST_PORT_RANGE
    }
}

impl fmt::Display for HostPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// A text that is not a host port range (the caller shows the text).
#[derive(Debug, thiserror::Error)]
#[error(
    "not a host port range: write LOW-HIGH with 1 <= LOW <= HIGH <= 65535, for example 49153-65535"
)]
pub struct HostPortRangeError;

impl FromStr for HostPortRange {
    type Err = HostPortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (low, high) = text.split_once('-').ok_or(HostPortRangeError)?;
        let low = low.trim().parse().map_err(|_| HostPortRangeError)?;
        let high = high.trim().parse().map_err(|_| HostPortRangeError)?;
        Self::new(low, high).ok_or(HostPortRangeError)
    }
}

/// A port a task asked for that it cannot have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortConflict {
    /// A fixed host port another task holds.
    Held {
        port: u16,
        protocol: Protocol,
        task_id: String,
    },
    /// No port of the range is free for the protocol.
    Exhausted {
        protocol: Protocol,
        range: HostPortRange,
    },
}

impl PortConflict {
    /// The conflict as ECS reports a task it could not place: a RunTask failure with the
    /// reason `RESOURCE:PORTS`, not an exception. ECS answers a RunTask whose ports are
    /// taken on every container instance that way (HTTP 200, the task listed in
    /// `failures`), and clients that check placement read exactly that; with `count` > 1
    /// the tasks that did fit still run. Skiff has no container instances, so the
    /// failure's ARN is the cluster's, and `detail` says which port, which task holds it,
    /// and what to do.
    pub(crate) fn failure(&self, cluster_arn: &str) -> Failure {
        let detail = match self {
            PortConflict::Held {
                port,
                protocol,
                task_id,
            } => format!(
                "Host port {port}/{} is already published by task {task_id}: stop that task, or use another hostPort (0 picks a free one).",
                protocol_name(*protocol)
            ),
            PortConflict::Exhausted { protocol, range } => format!(
                "No host port of the dynamic range {range} is free for {}: stop tasks, or start skiff server with a larger --host-port-range.",
                protocol_name(*protocol)
            ),
        };
        Failure {
            arn: cluster_arn.to_owned(),
            reason: "RESOURCE:PORTS".into(),
            detail: Some(detail),
        }
    }
}

/// The host ports held by tasks not yet STOPPED.
#[derive(Debug)]
pub(crate) struct HostPorts {
    range: HostPortRange,
    /// Where the search for a dynamic port starts.
    next: u16,
    held: HashMap<(Protocol, u16), String>,
}

impl HostPorts {
    pub(crate) fn new(range: HostPortRange) -> Self {
        Self {
            range,
            next: range.low,
            held: HashMap::new(),
        }
    }

    /// Publishes every port mapping of `containers` for `task_id`: all of them, or none
    /// when one conflicts.
    pub(crate) fn allocate(
        &mut self,
        task_id: &str,
        containers: &[ContainerDefinition],
    ) -> Result<Vec<PortBinding>, PortConflict> {
        let mut bindings = Vec::new();
        for c in containers {
            for pm in &c.port_mappings {
                let protocol = protocol(pm.protocol_name());
                let taken = match pm.host_port.filter(|p| *p != 0) {
                    Some(port) => self.take(task_id, protocol, port),
                    None => self.take_dynamic(task_id, protocol),
                };
                match taken {
                    Ok(host_port) => bindings.push(PortBinding {
                        container_name: c.name.clone(),
                        container_port: pm.container_port.unwrap_or_default(),
                        host_port,
                        protocol,
                    }),
                    Err(conflict) => {
                        self.release(task_id);
                        return Err(conflict);
                    }
                }
            }
        }
        Ok(bindings)
    }

    /// Marks a stored task's bindings held (at start).
    pub(crate) fn claim(&mut self, task_id: &str, bindings: &[PortBinding]) {
        for b in bindings {
            self.held
                .insert((b.protocol, b.host_port), task_id.to_owned());
        }
    }

    /// Gives back every port `task_id` holds.
    pub(crate) fn release(&mut self, task_id: &str) {
        self.held.retain(|_, holder| holder != task_id);
    }

    fn take(&mut self, task_id: &str, protocol: Protocol, port: u16) -> Result<u16, PortConflict> {
        match self.held.get(&(protocol, port)) {
            Some(holder) => Err(PortConflict::Held {
                port,
                protocol,
                task_id: holder.clone(),
            }),
            None => {
                self.held.insert((protocol, port), task_id.to_owned());
                Ok(port)
            }
        }
    }

    fn take_dynamic(&mut self, task_id: &str, protocol: Protocol) -> Result<u16, PortConflict> {
        let HostPortRange { low, high } = self.range;
        let start = if self.range.contains(self.next) {
            self.next
        } else {
            low
        };
        let port = (start..=high)
            .chain(low..start)
            .find(|port| !self.held.contains_key(&(protocol, *port)))
            .ok_or(PortConflict::Exhausted {
                protocol,
                range: self.range,
            })?;
        self.next = port.checked_add(1).unwrap_or(low);
        self.held.insert((protocol, port), task_id.to_owned());
        Ok(port)
    }
}

/// A port mapping's protocol as the agent's plan names it; registration lets only tcp
/// and udp through.
fn protocol(name: &str) -> Protocol {
    match name {
        "udp" => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
        _ => "tcp",
    }
}

/// A bridge task's firewall: everything from the task network (`task_network`), as the
/// bridge allows by default, and its published container ports from anywhere (what the
/// host ports forward to); any egress. Bridge tasks have no security groups.
pub(crate) fn bridge_policy(task_network: Ipv4Net, bindings: &[PortBinding]) -> SecurityPolicy {
    let rule = |protocol, ports, peer| SecurityRule {
        protocol,
        ports,
        sources: vec![peer],
        groups: vec![],
    };
    let anywhere = Ipv4Net::default();
    let mut ingress = vec![rule(Protocol::All, None, task_network)];
    ingress.extend(bindings.iter().map(|b| {
        let port = Some((b.container_port, b.container_port));
        rule(b.protocol, port, anywhere)
    }));
    SecurityPolicy {
        ingress,
        egress: vec![rule(Protocol::All, None, anywhere)],
    }
}

/// The ECS view of a container's published ports.
pub(crate) fn network_bindings(bindings: &[PortBinding], container: &str) -> Vec<NetworkBinding> {
    bindings
        .iter()
        .filter(|b| b.container_name == container)
        .map(|b| NetworkBinding {
            bind_ip: "0.0.0.0".into(),
            container_port: b.container_port,
            host_port: b.host_port,
            protocol: protocol_name(b.protocol).into(),
        })
        .collect()
}

impl Control {
    pub(crate) fn host_ports(&self) -> std::sync::MutexGuard<'_, HostPorts> {
        // Every update is one statement on the table: a panic cannot leave it torn.
        self.inner
            .ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod run_tests;

#[cfg(test)]
mod tests {
    use model::task_definition::PortMapping;

    use super::*;

    fn container(name: &str, mappings: &[(u16, u16, &str)]) -> ContainerDefinition {
        ContainerDefinition {
            name: name.into(),
            image: "busybox".into(),
            port_mappings: mappings
                .iter()
                .map(|(container, host, protocol)| PortMapping {
                    container_port: Some(*container),
                    host_port: Some(*host),
                    protocol: Some((*protocol).into()),
                    name: None,
                    app_protocol: None,
                    container_port_range: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn host_ports(bindings: &[PortBinding]) -> Vec<u16> {
        bindings.iter().map(|b| b.host_port).collect()
    }

    #[test]
    fn ranges_parse_from_low_dash_high() {
        assert_eq!(
            "1000-1002".parse::<HostPortRange>().unwrap(),
            HostPortRange::new(1000, 1002).unwrap()
        );
        for bad in ["", "1000", "0-10", "20-10", "1-65536", "a-b"] {
            let error = bad.parse::<HostPortRange>().unwrap_err().to_string();
            assert!(error.contains("LOW-HIGH"), "{bad}: {error}");
        }
        assert_eq!(HostPortRange::default().to_string(), "49153-65535");
    }

    #[test]
    fn fixed_ports_are_exclusive_per_protocol_until_released() {
        let mut ports = HostPorts::new(HostPortRange::default());
        let web = [container("web", &[(80, 8080, "tcp")])];
        let bound = ports.allocate("a", &web).unwrap();
        assert_eq!(
            bound,
            vec![PortBinding {
                container_name: "web".into(),
                container_port: 80,
                host_port: 8080,
                protocol: Protocol::Tcp,
            }]
        );
        assert_eq!(
            ports.allocate("b", &web),
            Err(PortConflict::Held {
                port: 8080,
                protocol: Protocol::Tcp,
                task_id: "a".into()
            })
        );
        let dns = [container("dns", &[(53, 8080, "udp")])];
        assert!(
            ports.allocate("c", &dns).is_ok(),
            "udp 8080 is another port"
        );
        ports.release("a");
        assert!(ports.allocate("b", &web).is_ok());
    }

    #[test]
    fn a_conflict_gives_back_what_the_task_already_took() {
        let mut ports = HostPorts::new(HostPortRange::new(5000, 5009).unwrap());
        ports
            .allocate("a", &[container("x", &[(1, 9000, "tcp")])])
            .unwrap();
        let both = [container("y", &[(1, 0, "tcp"), (2, 9000, "tcp")])];
        assert!(ports.allocate("b", &both).is_err());
        assert_eq!(ports.held.len(), 1, "b's dynamic port was given back");
    }

    #[test]
    fn dynamic_ports_come_from_the_range_and_move_on() {
        let mut ports = HostPorts::new(HostPortRange::new(5000, 5002).unwrap());
        let one = [container("app", &[(80, 0, "tcp")])];
        let first = ports.allocate("a", &one).unwrap();
        let second = ports.allocate("b", &one).unwrap();
        assert_eq!(host_ports(&first), vec![5000]);
        assert_eq!(host_ports(&second), vec![5001]);
        ports.release("a");
        let third = ports.allocate("c", &one).unwrap();
        assert_eq!(
            host_ports(&third),
            vec![5002],
            "a released port waits its turn"
        );
        let fourth = ports.allocate("d", &one).unwrap();
        assert_eq!(host_ports(&fourth), vec![5000], "the search wraps around");
        let error = ports.allocate("e", &one).unwrap_err();
        let failure = error.failure("arn:cluster");
        assert_eq!(failure.reason, "RESOURCE:PORTS");
        assert!(failure.detail.unwrap().contains("5000-5002"));
    }

    #[test]
    fn a_fixed_port_inside_the_range_is_skipped_by_dynamic_ones() {
        let mut ports = HostPorts::new(HostPortRange::new(5000, 5001).unwrap());
        ports.claim(
            "old",
            &[PortBinding {
                container_name: "app".into(),
                container_port: 80,
                host_port: 5000,
                protocol: Protocol::Tcp,
            }],
        );
        let got = ports
            .allocate("new", &[container("app", &[(80, 0, "tcp")])])
            .unwrap();
        assert_eq!(host_ports(&got), vec![5001]);
        let held = ports.allocate("late", &[container("app", &[(80, 5000, "tcp")])]);
        let detail = held.unwrap_err().failure("arn").detail.unwrap();
        assert!(
            detail.contains("5000/tcp") && detail.contains("task old"),
            "{detail}"
        );
    }
}
