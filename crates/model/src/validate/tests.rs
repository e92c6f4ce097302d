//! Fargate's registration and override rules, each with the error ECS gives.

use super::*;
use crate::task::ContainerOverride;
use crate::task_definition::{Capabilities, ContainerDependency, LinuxParameters, PortMapping};

fn td() -> TaskDefinition {
    TaskDefinition {
        family: "web".into(),
        cpu: Some("256".into()),
        memory: Some("512".into()),
        container_definitions: vec![ContainerDefinition {
            name: "app".into(),
            image: "busybox".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn err(td: TaskDefinition) -> String {
    task_definition(td).unwrap_err().to_string()
}

#[test]
fn accepts_and_normalises() {
    let mut d = td();
    d.cpu = Some("1 vCPU".into());
    d.memory = Some("2 GB".into());
    let ok = task_definition(d).unwrap();
    assert_eq!(ok.cpu.as_deref(), Some("1024"));
    assert_eq!(ok.memory.as_deref(), Some("2048"));
    assert_eq!(ok.network_mode.as_deref(), Some("awsvpc"));
    assert_eq!(ok.requires_compatibilities, vec!["FARGATE"]);
    assert_eq!(parse_cpu("0.25 vCPU").unwrap(), 256);
}

#[test]
fn size_table() {
    for (cpu, mem, ok) in [
        (256, 512, true),
        (256, 4096, false),
        (512, 4096, true),
        (1024, 9216, false),
        (4096, 30720, true),
        (8192, 20480, true),
        (8192, 18432, false),
        (16384, 122880, true),
        (300, 512, false),
    ] {
        assert_eq!(fargate_size(cpu, mem).is_ok(), ok, "{cpu}/{mem}");
    }
    let mut d = td();
    d.memory = Some("4096".into());
    assert!(err(d).starts_with("No Fargate configuration exists"));
    let mut d = td();
    d.cpu = None;
    assert!(err(d).contains("'cpu'"));
    let mut d = td();
    d.cpu = Some("lots".into());
    assert_eq!(err(d), "Invalid 'cpu' setting for task.");
}

#[test]
fn refuses_what_fargate_refuses() {
    type Mutation = Box<dyn Fn(&mut TaskDefinition)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "privileged",
            Box::new(|d| d.container_definitions[0].privileged = Some(true)),
        ),
        (
            "Network mode 'host' is not supported",
            Box::new(|d| d.network_mode = Some("host".into())),
        ),
        (
            "links",
            Box::new(|d| d.container_definitions[0].links = vec!["x".into()]),
        ),
        (
            "SYS_PTRACE",
            Box::new(|d| {
                d.container_definitions[0].linux_parameters = Some(LinuxParameters {
                    capabilities: Some(Capabilities {
                        add: vec!["NET_ADMIN".into()],
                        drop: vec![],
                    }),
                    ..Default::default()
                })
            }),
        ),
        (
            "hostPort",
            Box::new(|d| {
                d.container_definitions[0].port_mappings = vec![PortMapping {
                    container_port: Some(80),
                    host_port: Some(8080),
                    protocol: None,
                    name: None,
                    app_protocol: None,
                    container_port_range: None,
                }]
            }),
        ),
        (
            "stopTimeout",
            Box::new(|d| d.container_definitions[0].stop_timeout = Some(121)),
        ),
        (
            "ephemeral",
            Box::new(|d| {
                d.ephemeral_storage =
                    Some(crate::task_definition::EphemeralStorage { size_in_gi_b: 20 })
            }),
        ),
        (
            "essential",
            Box::new(|d| d.container_definitions[0].essential = Some(false)),
        ),
        ("family", Box::new(|d| d.family = "bad name".into())),
        (
            "unique",
            Box::new(|d| {
                let c = d.container_definitions[0].clone();
                d.container_definitions.push(c)
            }),
        ),
        (
            "at most 10",
            Box::new(|d| {
                let c = d.container_definitions[0].clone();
                d.container_definitions = (0..11)
                    .map(|i| ContainerDefinition {
                        name: format!("c{i}"),
                        ..c.clone()
                    })
                    .collect();
            }),
        ),
        (
            "memoryReservation",
            Box::new(|d| {
                d.container_definitions[0].memory = Some(100);
                d.container_definitions[0].memory_reservation = Some(100);
            }),
        ),
        (
            "exceeds the task's memory",
            Box::new(|d| d.container_definitions[0].memory = Some(1024)),
        ),
    ];
    for (expect, mutate) in cases {
        let mut d = td();
        mutate(&mut d);
        let msg = err(d);
        assert!(msg.contains(expect), "expected '{expect}' in: {msg}");
    }
}

fn mapping(container: u16, host: Option<u16>, protocol: Option<&str>) -> PortMapping {
    PortMapping {
        container_port: Some(container),
        host_port: host,
        protocol: protocol.map(Into::into),
        name: None,
        app_protocol: None,
        container_port_range: None,
    }
}

fn bridge_td(mappings: Vec<PortMapping>) -> TaskDefinition {
    let mut d = td();
    d.network_mode = Some("bridge".into());
    d.requires_compatibilities = vec!["EC2".into()];
    d.container_definitions[0].port_mappings = mappings;
    d
}

#[test]
fn bridge_mode_is_for_ec2_definitions() {
    let ok = task_definition(bridge_td(vec![])).unwrap();
    assert_eq!(ok.requires_compatibilities, vec!["EC2"]);
    assert_eq!(ok.compatibilities, vec!["EXTERNAL", "EC2"]);
    assert!(ok.is_bridge());

    let mut d = bridge_td(vec![]);
    d.requires_compatibilities = vec!["EC2".into(), "FARGATE".into()];
    assert!(err(d).starts_with("Fargate only supports network mode 'awsvpc'"));
    for mode in ["host", "none"] {
        let mut d = bridge_td(vec![]);
        d.network_mode = Some(mode.into());
        let msg = err(d);
        assert!(
            msg.contains(&format!("'{mode}' is not supported")) && msg.contains("bridge"),
            "{msg}"
        );
    }
}

#[test]
fn bridge_port_mappings() {
    let fine = vec![
        mapping(80, Some(8080), None),
        mapping(81, Some(0), None),
        mapping(82, None, Some("udp")),
        mapping(53, Some(8080), Some("udp")),
    ];
    assert!(task_definition(bridge_td(fine)).is_ok());

    let twice = bridge_td(vec![
        mapping(80, Some(8080), None),
        mapping(81, Some(8080), Some("tcp")),
    ]);
    let msg = err(twice);
    assert!(
        msg.contains("Host port 8080/tcp is mapped more than once"),
        "{msg}"
    );
    let mut other = bridge_td(vec![mapping(80, Some(9000), None)]);
    let mut sidecar = other.container_definitions[0].clone();
    sidecar.name = "sidecar".into();
    other.container_definitions.push(sidecar);
    assert!(err(other).contains("containers 'app' and 'sidecar'"));
    assert!(err(bridge_td(vec![mapping(0, None, None)])).contains("needs a containerPort"));
    assert!(err(bridge_td(vec![mapping(80, None, Some("sctp"))])).contains("tcp or udp"));
    // In awsvpc the same definition is refused: a hostPort can only repeat the port.
    let mut awsvpc = bridge_td(vec![mapping(80, Some(8080), None)]);
    awsvpc.network_mode = None;
    assert!(err(awsvpc).contains("with awsvpc, hostPort (8080)"));
}

#[test]
fn dependencies() {
    let mut d = td();
    let mut init = d.container_definitions[0].clone();
    init.name = "init".into();
    init.essential = Some(false);
    d.container_definitions[0].depends_on = vec![ContainerDependency {
        container_name: "init".into(),
        condition: "SUCCESS".into(),
    }];
    d.container_definitions.push(init.clone());
    assert!(task_definition(d.clone()).is_ok());

    d.container_definitions[1].essential = Some(true);
    assert!(err(d.clone()).contains("cannot wait for essential"));

    d.container_definitions[1].essential = Some(false);
    d.container_definitions[1].depends_on = vec![ContainerDependency {
        container_name: "app".into(),
        condition: "START".into(),
    }];
    assert!(err(d.clone()).contains("cycle"));

    d.container_definitions[1].depends_on[0].container_name = "ghost".into();
    assert!(err(d).contains("not in this task definition"));
}

#[test]
fn override_rules() {
    let d = task_definition(td()).unwrap();
    let mut o = TaskOverride::default();
    assert_eq!(overrides(&d, &o).unwrap(), (256, 512));
    o.cpu = Some("512".into());
    o.memory = Some("1024".into());
    assert_eq!(overrides(&d, &o).unwrap(), (512, 1024));
    o.memory = Some("512".into());
    assert!(overrides(&d, &o).is_err());
    let o = TaskOverride {
        container_overrides: vec![ContainerOverride {
            name: Some("nope".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(overrides(&d, &o).unwrap_err().to_string().contains("nope"));
}
