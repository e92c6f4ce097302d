//! A control plane on an in-memory store with a scripted agent, for unit tests.

use std::sync::Arc;
use std::time::Duration;

use model::agent::{FromAgent, TaskReport, ToAgent};
use model::arn::Scope;
use model::ops::*;
use model::task::{Task, TaskStatus};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{Control, ControlConfig};

pub(crate) struct Harness {
    pub control: Control,
    /// What the agent is sent about tasks (all but the network messages).
    pub to_agent: mpsc::UnboundedReceiver<ToAgent>,
    /// The `Security` and `Names` messages the agent is sent.
    pub network: mpsc::UnboundedReceiver<ToAgent>,
    pub from_agent: mpsc::UnboundedSender<FromAgent>,
}

impl Harness {
    pub async fn new() -> Self {
        let store = Arc::new(store::SqliteStore::in_memory().unwrap());
        let control = Control::new(
            store,
            ControlConfig {
                scope: Scope {
                    region: "us-east-1".into(),
                    account: "000000000000".into(),
                },
                subnet: "10.1.0.0/24".parse().unwrap(),
                stopped_task_retention: Duration::from_secs(3600),
                host_port_range: crate::HostPortRange::default(),
            },
        )
        .await
        .unwrap();
        let (to_tx, mut sent) = mpsc::unbounded_channel();
        let (from_agent, from_rx) = mpsc::unbounded_channel();
        control.attach_agent(to_tx, from_rx);
        let (tasks_tx, to_agent) = mpsc::unbounded_channel();
        let (network_tx, network) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = sent.recv().await {
                let route = match message {
                    ToAgent::Security(_) | ToAgent::Names { .. } => &network_tx,
                    _ => &tasks_tx,
                };
                // A test that dropped a receiver does not want its messages.
                let _ = route.send(message);
            }
        });
        Harness {
            control,
            to_agent,
            network,
            from_agent,
        }
    }

    /// Calls an operation by name with a JSON body, as the HTTP layer does.
    pub async fn call(
        &self,
        op: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, model::EcsError> {
        let request = Request::parse(op, body.to_string().as_bytes()).unwrap();
        self.control.handle(request).await
    }

    pub async fn setup_cluster_and_family(&self) {
        self.call("CreateCluster", json!({"clusterName": "demo"}))
            .await
            .unwrap();
        self.call(
            "RegisterTaskDefinition",
            json!({
                "family": "web", "cpu": "256", "memory": "512",
                "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc",
                "containerDefinitions": [{"name": "app", "image": "busybox", "command": ["sleep", "1000"]}]
            }),
        )
        .await
        .unwrap();
    }

    pub async fn run(&self, body: serde_json::Value) -> Vec<Task> {
        let out = self.call("RunTask", body).await.unwrap();
        serde_json::from_value(out["tasks"].clone()).unwrap()
    }

    pub async fn describe(&self, arn: &str) -> Task {
        let out = self
            .call("DescribeTasks", json!({"cluster": "demo", "tasks": [arn]}))
            .await
            .unwrap();
        serde_json::from_value(out["tasks"][0].clone()).unwrap()
    }

    /// Sends a report and waits until the control plane has applied it.
    pub async fn report(&self, report: TaskReport) {
        let arn = report.task_arn.clone();
        let before = self.describe(&arn).await.version;
        self.from_agent.send(FromAgent::Report(report)).unwrap();
        for _ in 0..200 {
            if self.describe(&arn).await.version > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("report for {arn} was not applied");
    }

    pub fn status_report(arn: &str, status: TaskStatus) -> TaskReport {
        TaskReport {
            task_arn: arn.to_string(),
            last_status: Some(status),
            ..Default::default()
        }
    }
}
