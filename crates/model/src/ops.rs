//! The request and response shapes of the ECS operations Skiff serves, named and
//! shaped as in botocore's ECS model, and [`Request`]: one message per operation, parsed
//! from the `X-Amz-Target` operation name and the JSON body in one place.
//!
//! Registering a task definition takes the task definition's own shape (plus `tags`),
//! so [`RegisterTaskDefinitionRequest`] wraps [`TaskDefinition`].

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterSetting};
use crate::service::{
    CreateServiceRequest, DeleteServiceRequest, DescribeServicesRequest, ListServicesRequest,
    UpdateServiceRequest,
};
use crate::tag::Tag;
use crate::task::{Failure, Task, TaskOverride};
use crate::task_definition::TaskDefinition;
use crate::EcsError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateClusterRequest {
    #[serde(default)]
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub settings: Vec<ClusterSetting>,
    #[serde(default)]
    pub capacity_providers: Vec<String>,
    #[serde(default)]
    pub default_capacity_provider_strategy: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateClusterResponse {
    pub cluster: Cluster,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeClustersRequest {
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default)]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeClustersResponse {
    pub clusters: Vec<Cluster>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListClustersRequest {
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListClustersResponse {
    pub cluster_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteClusterRequest {
    pub cluster: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteClusterResponse {
    pub cluster: Cluster,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTaskDefinitionRequest {
    pub task_definition: String,
    #[serde(default)]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTaskDefinitionResponse {
    pub task_definition: TaskDefinition,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskDefinitionsRequest {
    #[serde(default)]
    pub family_prefix: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskDefinitionsResponse {
    pub task_definition_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskDefinitionFamiliesRequest {
    #[serde(default)]
    pub family_prefix: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskDefinitionFamiliesResponse {
    pub families: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeregisterTaskDefinitionRequest {
    pub task_definition: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeregisterTaskDefinitionResponse {
    pub task_definition: TaskDefinition,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTaskRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub task_definition: String,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub capacity_provider_strategy: Vec<serde_json::Value>,
    #[serde(default)]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default)]
    pub overrides: Option<TaskOverride>,
    #[serde(default)]
    pub started_by: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub client_token: Option<String>,
    #[serde(default)]
    pub platform_version: Option<String>,
    #[serde(default)]
    pub placement_constraints: Vec<serde_json::Value>,
    #[serde(default)]
    pub placement_strategy: Vec<serde_json::Value>,
    #[serde(default)]
    pub enable_execute_command: Option<bool>,
    #[serde(default)]
    pub propagate_tags: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    #[serde(default)]
    pub enable_ecs_managed_tags: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTaskResponse {
    pub tasks: Vec<Task>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopTaskRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub task: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopTaskResponse {
    pub task: Task,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTasksRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTasksResponse {
    pub tasks: Vec<Task>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTasksRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub container_instance: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<u32>,
    #[serde(default)]
    pub started_by: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub desired_status: Option<String>,
    #[serde(default)]
    pub launch_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTasksResponse {
    pub task_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagResourceRequest {
    pub resource_arn: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagResourceResponse {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UntagResourceRequest {
    pub resource_arn: String,
    #[serde(default)]
    pub tag_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UntagResourceResponse {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTagsForResourceRequest {
    pub resource_arn: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTagsForResourceResponse {
    pub tags: Vec<Tag>,
}
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterTaskDefinitionRequest {
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(flatten)]
    pub task_definition: TaskDefinition,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterTaskDefinitionResponse {
    pub task_definition: TaskDefinition,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awsvpc_configuration: Option<AwsVpcConfiguration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsVpcConfiguration {
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<String>,
}

macro_rules! requests {
    ($($op:ident($input:ty)),* $(,)?) => {
        /// One ECS operation with its parsed input.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $($op($input),)*
        }

        impl Request {
            /// Parses an operation by its `X-Amz-Target` name and its JSON body. An
            /// operation Skiff does not serve is an `UnknownOperationException` for the
            /// caller; a body that is not the operation's shape is a
            /// `SerializationException` saying which field is wrong.
            pub fn parse(operation: &str, body: &[u8]) -> Result<Request, ParseError> {
                let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
                match operation {
                    $(stringify!($op) => serde_json::from_slice(body)
                        .map(Request::$op)
                        .map_err(|e| ParseError::Serialization(e.to_string())),)*
                    _ => Err(ParseError::UnknownOperation(operation.to_string())),
                }
            }

            /// The operation's name, as in `X-Amz-Target`.
            pub fn operation(&self) -> &'static str {
                match self {
                    $(Request::$op(_) => stringify!($op),)*
                }
            }
        }
    };
}

requests! {
    CreateCluster(CreateClusterRequest),
    DescribeClusters(DescribeClustersRequest),
    ListClusters(ListClustersRequest),
    DeleteCluster(DeleteClusterRequest),
    RegisterTaskDefinition(RegisterTaskDefinitionRequest),
    DescribeTaskDefinition(DescribeTaskDefinitionRequest),
    ListTaskDefinitions(ListTaskDefinitionsRequest),
    ListTaskDefinitionFamilies(ListTaskDefinitionFamiliesRequest),
    DeregisterTaskDefinition(DeregisterTaskDefinitionRequest),
    RunTask(RunTaskRequest),
    StopTask(StopTaskRequest),
    DescribeTasks(DescribeTasksRequest),
    ListTasks(ListTasksRequest),
    TagResource(TagResourceRequest),
    UntagResource(UntagResourceRequest),
    ListTagsForResource(ListTagsForResourceRequest),
    CreateService(CreateServiceRequest),
    UpdateService(UpdateServiceRequest),
    DeleteService(DeleteServiceRequest),
    DescribeServices(DescribeServicesRequest),
    ListServices(ListServicesRequest),
}

/// Why a request could not be turned into a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Operation {0} is not supported by this endpoint.")]
    UnknownOperation(String),
    #[error("The request body is not valid for this operation: {0}")]
    Serialization(String),
}

impl ParseError {
    pub fn type_name(&self) -> &'static str {
        match self {
            ParseError::UnknownOperation(_) => "UnknownOperationException",
            ParseError::Serialization(_) => "SerializationException",
        }
    }
}

impl From<ParseError> for EcsError {
    fn from(e: ParseError) -> Self {
        EcsError::InvalidParameter(e.to_string())
    }
}

/// Pagination: `maxResults` within 1..=100 (default 100) and an opaque `nextToken`
/// that is the last key returned.
pub fn page<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> String,
    next_token: Option<&str>,
    max_results: Option<u32>,
) -> Result<(Vec<T>, Option<String>), EcsError> {
    let max = max_results.unwrap_or(100);
    if !(1..=100).contains(&max) {
        return Err(EcsError::InvalidParameter(format!(
            "maxResults must be between 1 and 100; {max} was given."
        )));
    }
    let start = match next_token {
        None => 0,
        Some(token) => {
            let after = decode_token(token)?;
            items.partition_point(|i| key(i) <= after)
        }
    };
    let end = (start + max as usize).min(items.len());
    let slice = items[start..end].to_vec();
    let next = (end < items.len() && end > start).then(|| encode_token(&key(&items[end - 1])));
    Ok((slice, next))
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<String, EcsError> {
    let invalid = || {
        EcsError::InvalidParameter(
            "Invalid nextToken: pass the nextToken of the previous response unchanged.".into(),
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_operation_name() {
        let r = Request::parse("CreateCluster", br#"{"clusterName":"demo"}"#).unwrap();
        assert_eq!(r.operation(), "CreateCluster");
        match r {
            Request::CreateCluster(c) => assert_eq!(c.cluster_name.as_deref(), Some("demo")),
            other => panic!("wrong variant {other:?}"),
        }
        assert!(matches!(
            Request::parse("ListClusters", b"").unwrap(),
            Request::ListClusters(_)
        ));
        assert_eq!(
            Request::parse("Frobnicate", b"{}").unwrap_err().type_name(),
            "UnknownOperationException"
        );
        assert_eq!(
            Request::parse("RunTask", b"{\"count\": \"x\"")
                .unwrap_err()
                .type_name(),
            "SerializationException"
        );
    }

    #[test]
    fn register_keeps_unknown_fields() {
        let r = Request::parse(
            "RegisterTaskDefinition",
            br#"{"family":"web","containerDefinitions":[{"name":"a","image":"busybox","secrets":[{"name":"x","valueFrom":"y"}]}],"taskRoleArn":"r","tags":[{"key":"k","value":"v"}]}"#,
        )
        .unwrap();
        let Request::RegisterTaskDefinition(r) = r else {
            panic!("wrong variant")
        };
        assert_eq!(r.tags.len(), 1);
        assert_eq!(r.task_definition.extra["taskRoleArn"], "r");
        assert!(r.task_definition.container_definitions[0]
            .extra
            .contains_key("secrets"));
        assert!(!r.task_definition.extra.contains_key("tags"));
    }

    #[test]
    fn pages_walk_everything_once() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = page(&items, |s| s.clone(), token.as_deref(), Some(10)).unwrap();
            seen.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
        assert!(page(&items, |s| s.clone(), None, Some(0)).is_err());
        assert!(page(&items, |s| s.clone(), Some("zz"), None).is_err());
    }
}
