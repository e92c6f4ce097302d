//! A service's `loadBalancers`: which container port of each task the target groups
//! send traffic to.

use model::service::LoadBalancer;
use model::task_definition::TaskDefinition;
use model::EcsError;

use crate::Control;

/// Load balancers one service may name (ECS's limit).
const MAX_LOAD_BALANCERS: usize = 5;

impl Control {
    /// Checks each entry names a target group, and a container of the task definition
    /// with that port in its portMappings.
    pub(crate) async fn validate_load_balancers(
        &self,
        balancers: &[LoadBalancer],
        definition: &TaskDefinition,
    ) -> Result<(), EcsError> {
        if balancers.len() > MAX_LOAD_BALANCERS {
            return Err(EcsError::InvalidParameter(format!(
                "A service can have at most {MAX_LOAD_BALANCERS} load balancers; {} were given.",
                balancers.len()
            )));
        }
        for balancer in balancers {
            let (Some(_), Some(container), Some(port)) = (
                balancer.target_group_arn.as_deref(),
                balancer.container_name.as_deref(),
                balancer.container_port,
            ) else {
                return Err(EcsError::InvalidParameter(
                    "Each load balancer needs targetGroupArn, containerName and containerPort \
                     (Fargate services register task IPs with target groups)."
                        .into(),
                ));
            };
            let definition_container = definition
                .container_definitions
                .iter()
                .find(|c| c.name == container)
                .ok_or_else(|| {
                    EcsError::InvalidParameter(format!(
                        "The container {container} does not exist in the task definition {}.",
                        definition.family
                    ))
                })?;
            if !definition_container
                .port_mappings
                .iter()
                .any(|m| m.container_port == Some(port))
            {
                return Err(EcsError::InvalidParameter(format!(
                    "The container {container} does not have a container port {port} in the \
                     task definition: add it to the container's portMappings."
                )));
            }
        }
        Ok(())
    }
}
