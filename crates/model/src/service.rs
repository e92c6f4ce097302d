//! Services: N copies of a task definition kept running, replaced when they fail, and
//! moved to a new revision by rolling deployments. The shapes are botocore's `Service`,
//! `Deployment`, `ServiceEvent` and the service operations' requests and responses.
//!
//! The ECS rules the scheduler applies, in one place:
//!
//! ```text
//! minimumHealthyPercent (default 100)  lower bound = ceil(desired x min% / 100)
//! maximumPercent        (default 200)  upper bound = floor(desired x max% / 100)
//! circuit breaker threshold            clamp(ceil(desired / 2), 10, 200) failed tasks
//! ```

use serde::{Deserialize, Serialize};

use crate::ops::NetworkConfiguration;
use crate::tag::Tag;
use crate::task::Failure;
use crate::{EcsError, Timestamp};

/// Events a service keeps, newest first (ECS shows the last 100).
pub const MAX_EVENTS: usize = 100;
/// DescribeServices takes at most this many services.
pub const MAX_DESCRIBE: usize = 10;
/// The largest desiredCount Skiff accepts for one service.
pub const MAX_DESIRED_COUNT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub service_arn: String,
    pub service_name: String,
    pub cluster_arn: String,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    pub service_registries: Vec<serde_json::Value>,
    /// ACTIVE, DRAINING (being deleted) or INACTIVE (deleted).
    pub status: String,
    pub desired_count: u32,
    pub running_count: u32,
    pub pending_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub capacity_provider_strategy: Vec<serde_json::Value>,
    pub platform_version: String,
    pub platform_family: String,
    pub task_definition: String,
    pub deployment_configuration: DeploymentConfiguration,
    pub deployments: Vec<Deployment>,
    pub events: Vec<ServiceEvent>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub placement_constraints: Vec<serde_json::Value>,
    #[serde(default)]
    pub placement_strategy: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    pub health_check_grace_period_seconds: u32,
    pub scheduling_strategy: String,
    pub deployment_controller: DeploymentController,
    #[serde(default)]
    pub tags: Vec<Tag>,
    pub created_by: String,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<String>,
    pub enable_execute_command: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_group_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_healthy_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarms: Option<serde_json::Value>,
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        Self {
            deployment_circuit_breaker: Some(CircuitBreaker {
                enable: false,
                rollback: false,
            }),
            maximum_percent: Some(200),
            minimum_healthy_percent: Some(100),
            alarms: None,
        }
    }
}

impl DeploymentConfiguration {
    /// Fills in ECS's defaults for what a request left out.
    pub fn with_defaults(mut self) -> Self {
        let defaults = Self::default();
        self.deployment_circuit_breaker = self
            .deployment_circuit_breaker
            .or(defaults.deployment_circuit_breaker);
        self.maximum_percent = self.maximum_percent.or(defaults.maximum_percent);
        self.minimum_healthy_percent = self
            .minimum_healthy_percent
            .or(defaults.minimum_healthy_percent);
        self
    }

    /// Overlays the fields an UpdateService request gives on the current configuration.
    pub fn updated_with(&self, update: &DeploymentConfiguration) -> Self {
        Self {
            deployment_circuit_breaker: update
                .deployment_circuit_breaker
                .clone()
                .or_else(|| self.deployment_circuit_breaker.clone()),
            maximum_percent: update.maximum_percent.or(self.maximum_percent),
            minimum_healthy_percent: update
                .minimum_healthy_percent
                .or(self.minimum_healthy_percent),
            alarms: update.alarms.clone().or_else(|| self.alarms.clone()),
        }
    }

    /// ECS's bounds on the two percentages.
    pub fn validate(&self) -> Result<(), EcsError> {
        let max = self.maximum_percent.unwrap_or(200);
        let min = self.minimum_healthy_percent.unwrap_or(100);
        if !(100..=200).contains(&max) {
            return Err(EcsError::InvalidParameter(format!(
                "deploymentConfiguration.maximumPercent must be between 100 and 200 for a \
                 Fargate service; {max} was given."
            )));
        }
        if min > 100 {
            return Err(EcsError::InvalidParameter(format!(
                "deploymentConfiguration.minimumHealthyPercent must be between 0 and 100; \
                 {min} was given."
            )));
        }
        Ok(())
    }

    /// The fewest tasks that must stay healthy during a deployment (rounded up).
    pub fn minimum_healthy(&self, desired: u32) -> u32 {
        let percent = self.minimum_healthy_percent.unwrap_or(100);
        (desired * percent).div_ceil(100)
    }

    /// The most tasks that may run during a deployment (rounded down), never fewer than
    /// the desired count.
    pub fn maximum_tasks(&self, desired: u32) -> u32 {
        let percent = self.maximum_percent.unwrap_or(200);
        (desired * percent / 100).max(desired)
    }

    pub fn circuit_breaker(&self) -> CircuitBreaker {
        self.deployment_circuit_breaker.clone().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

/// Task launch failures that fail a deployment when its circuit breaker is on.
pub fn circuit_breaker_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(10, 200)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentController {
    #[serde(rename = "type")]
    pub kind: String,
}

impl Default for DeploymentController {
    fn default() -> Self {
        Self { kind: "ECS".into() }
    }
}

/// A deployment's place in the service: PRIMARY is the newest; ACTIVE ones still have
/// tasks being drained; INACTIVE ones are finished (and leave the list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub status: String,
    pub task_definition: String,
    pub desired_count: u32,
    pub pending_count: u32,
    pub running_count: u32,
    pub failed_tasks: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default)]
    pub capacity_provider_strategy: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    pub platform_version: String,
    pub platform_family: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    /// IN_PROGRESS, COMPLETED or FAILED.
    pub rollout_state: String,
    pub rollout_state_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: Timestamp,
    pub message: String,
}

/// Service names: 1-255 letters, digits, hyphens and underscores.
pub fn validate_service_name(name: &str) -> Result<(), EcsError> {
    if crate::is_resource_name(name) {
        Ok(())
    } else {
        Err(EcsError::InvalidParameter(format!(
            "Invalid service name '{name}': up to 255 letters (uppercase and lowercase), \
             numbers, underscores and hyphens are allowed."
        )))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateServiceRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub service_name: String,
    #[serde(default)]
    pub task_definition: Option<String>,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    pub service_registries: Vec<serde_json::Value>,
    #[serde(default)]
    pub desired_count: Option<u32>,
    #[serde(default)]
    pub client_token: Option<String>,
    #[serde(default)]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub capacity_provider_strategy: Vec<serde_json::Value>,
    #[serde(default)]
    pub platform_version: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub deployment_configuration: Option<DeploymentConfiguration>,
    #[serde(default)]
    pub placement_constraints: Vec<serde_json::Value>,
    #[serde(default)]
    pub placement_strategy: Vec<serde_json::Value>,
    #[serde(default)]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default)]
    pub health_check_grace_period_seconds: Option<u32>,
    #[serde(default)]
    pub scheduling_strategy: Option<String>,
    #[serde(default)]
    pub deployment_controller: Option<DeploymentController>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(rename = "enableECSManagedTags")]
    #[serde(default)]
    pub enable_ecs_managed_tags: Option<bool>,
    #[serde(default)]
    pub propagate_tags: Option<String>,
    #[serde(default)]
    pub enable_execute_command: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResponse {
    pub service: Service,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateServiceRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub service: String,
    #[serde(default)]
    pub desired_count: Option<u32>,
    #[serde(default)]
    pub task_definition: Option<String>,
    #[serde(default)]
    pub capacity_provider_strategy: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub deployment_configuration: Option<DeploymentConfiguration>,
    #[serde(default)]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default)]
    pub placement_constraints: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub placement_strategy: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub platform_version: Option<String>,
    #[serde(default)]
    pub force_new_deployment: Option<bool>,
    #[serde(default)]
    pub health_check_grace_period_seconds: Option<u32>,
    #[serde(default)]
    pub enable_execute_command: Option<bool>,
    #[serde(rename = "enableECSManagedTags")]
    #[serde(default)]
    pub enable_ecs_managed_tags: Option<bool>,
    #[serde(default)]
    pub load_balancers: Option<Vec<LoadBalancer>>,
    #[serde(default)]
    pub propagate_tags: Option<String>,
    #[serde(default)]
    pub service_registries: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteServiceRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub service: String,
    #[serde(default)]
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeServicesRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeServicesResponse {
    pub services: Vec<Service>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListServicesRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<u32>,
    #[serde(default)]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub scheduling_strategy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListServicesResponse {
    pub service_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_bounds_round_as_ecs_does() {
        let config = DeploymentConfiguration {
            minimum_healthy_percent: Some(50),
            maximum_percent: Some(150),
            ..DeploymentConfiguration::default()
        };
        // 3 x 50% = 1.5 -> 2 (up); 3 x 150% = 4.5 -> 4 (down).
        assert_eq!(config.minimum_healthy(3), 2);
        assert_eq!(config.maximum_tasks(3), 4);
        let defaults = DeploymentConfiguration::default();
        assert_eq!(defaults.minimum_healthy(3), 3);
        assert_eq!(defaults.maximum_tasks(3), 6);
        // maximumPercent 100 with desired 1 still allows the one task.
        let tight = DeploymentConfiguration {
            maximum_percent: Some(100),
            minimum_healthy_percent: Some(0),
            ..DeploymentConfiguration::default()
        };
        assert_eq!(tight.maximum_tasks(1), 1);
        assert_eq!(tight.minimum_healthy(1), 0);
    }

    #[test]
    fn circuit_breaker_threshold_is_clamped() {
        assert_eq!(circuit_breaker_threshold(1), 10);
        assert_eq!(circuit_breaker_threshold(30), 15);
        assert_eq!(circuit_breaker_threshold(1000), 200);
    }

    #[test]
    fn percentages_are_validated_and_updates_overlay() {
        let bad = DeploymentConfiguration {
            maximum_percent: Some(90),
            ..DeploymentConfiguration::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("maximumPercent"));
        let current = DeploymentConfiguration::default();
        let update = DeploymentConfiguration {
            deployment_circuit_breaker: None,
            maximum_percent: None,
            minimum_healthy_percent: Some(50),
            alarms: None,
        };
        let merged = current.updated_with(&update);
        assert_eq!(merged.minimum_healthy_percent, Some(50));
        assert_eq!(merged.maximum_percent, Some(200));
    }

    #[test]
    fn service_names_follow_ecs_rules() {
        assert!(validate_service_name("web_1-a").is_ok());
        assert!(validate_service_name("").is_err());
        assert!(validate_service_name("a b").is_err());
    }
}
