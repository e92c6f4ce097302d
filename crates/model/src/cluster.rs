//! Clusters: a named group of tasks and services.

use serde::{Deserialize, Serialize};

use crate::tag::Tag;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub cluster_arn: String,
    pub cluster_name: String,
    /// ACTIVE, or INACTIVE once deleted.
    pub status: String,
    #[serde(default)]
    pub registered_container_instances_count: u32,
    #[serde(default)]
    pub running_tasks_count: u32,
    #[serde(default)]
    pub pending_tasks_count: u32,
    #[serde(default)]
    pub active_services_count: u32,
    #[serde(default)]
    pub statistics: Vec<KeyValuePair>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub settings: Vec<ClusterSetting>,
    #[serde(default)]
    pub capacity_providers: Vec<String>,
    #[serde(default)]
    pub default_capacity_provider_strategy: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValuePair {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSetting {
    pub name: String,
    pub value: String,
}

/// Cluster names: 1-255 letters, digits, hyphens and underscores.
pub fn validate_cluster_name(name: &str) -> Result<(), crate::EcsError> {
    if crate::is_resource_name(name) {
        Ok(())
    } else {
        Err(crate::EcsError::InvalidParameter(format!(
            "Invalid cluster name '{name}': up to 255 letters (uppercase and lowercase), numbers, underscores and hyphens are allowed."
        )))
    }
}
