//! VPCs, subnets and security groups: the records behind the EC2 API subset, the
//! default network every server starts with, and the checks RunTask makes against them.
//!
//! State lives in the store beside the ECS records:
//!
//! ```text
//! vpcs/<vpc id>                Vpc
//! subnets/<subnet id>          Subnet
//! security-groups/<group id>   SecurityGroup (its ingress and egress rules inline)
//! ```
//!
//! First start creates, as in a new AWS account, a default VPC over the server's task
//! network (`--subnet`), one default subnet covering it, and the VPC's `default` group.
//! Writes that must see a consistent VPC (a subnet that may not overlap its siblings, a
//! group name unique in its VPC) re-write the VPC record at the revision they read, so
//! concurrent writers to one VPC serialize through compare-and-swap, with any store
//! backend. A subnet or group that tasks not yet STOPPED use cannot be deleted; RunTask
//! guards its write with the subnet's revision so a concurrent DeleteSubnet cannot slip
//! in between.
//!
//! Tasks run only in subnets of the default VPC: their addresses come from the subnet's
//! CIDR (see [`crate::ipam`]) and the host bridge routes the whole VPC on-link.

mod enforce;
mod groups;
mod policy;
mod subnets;

#[cfg(test)]
mod tests;

use model::agent::{SecurityPolicy, TaskPlan};
use model::ops::NetworkConfiguration;
use model::task::TaskStatus;
use model::vpc::{Filter, SecurityGroup, Subnet, Vpc, VpcError};
use model::EcsError;
use store::{Expect, Op, StoreError, StoreJsonExt, Versioned};

use crate::tasks::network_subnet;
use crate::{Control, TaskRecord};

pub(crate) use enforce::NetworkSync;
pub use groups::{GroupRef, PermissionRequest};
pub use subnets::SubnetView;

pub(crate) fn vpc_key(id: &str) -> String {
    format!("vpcs/{id}")
}

pub(crate) fn subnet_key(id: &str) -> String {
    format!("subnets/{id}")
}

pub(crate) fn group_key(id: &str) -> String {
    format!("security-groups/{id}")
}

/// Where a task's interface goes, as RunTask resolved it.
pub(crate) struct TaskNetwork {
    pub subnet: Subnet,
    pub security_groups: Vec<String>,
    /// The rules of those groups, compiled.
    pub policy: SecurityPolicy,
}

impl Control {
    /// Creates the default VPC, subnet and security group on first start. A default VPC
    /// whose CIDR is not the task network (the server restarted with another `--subnet`)
    /// follows the task network, and so does its default subnet.
    pub(crate) async fn ensure_default_network(&self) -> Result<(), StoreError> {
        let cidr = self.inner.config.subnet;
        let vpcs = self.store().list_json::<Vpc>("vpcs/").await?;
        let Some(current) = vpcs.into_iter().find(|v| v.value.is_default) else {
            let vpc = Vpc {
                vpc_id: model::vpc::new_id("vpc"),
                cidr_block: cidr,
                is_default: true,
            };
            let subnet = Subnet {
                subnet_id: model::vpc::new_id("subnet"),
                vpc_id: vpc.vpc_id.clone(),
                cidr_block: cidr,
                availability_zone: self.availability_zone(),
                default_for_az: true,
                map_public_ip_on_launch: false,
            };
            let group = SecurityGroup::default_for(&vpc.vpc_id);
            self.store()
                .txn(vec![
                    Op::put_json(vpc_key(&vpc.vpc_id), &vpc, Expect::Absent)?,
                    Op::put_json(subnet_key(&subnet.subnet_id), &subnet, Expect::Absent)?,
                    Op::put_json(group_key(&group.group_id), &group, Expect::Absent)?,
                ])
                .await?;
            tracing::info!(vpc_id = %vpc.vpc_id, subnet_id = %subnet.subnet_id, group_id = %group.group_id, %cidr, "created the default VPC, subnet and security group");
            return Ok(());
        };
        if current.value.cidr_block == cidr {
            return Ok(());
        }
        tracing::warn!(vpc_id = %current.value.vpc_id, old = %current.value.cidr_block, new = %cidr, "the task network changed: moving the default VPC and its default subnet to it");
        let mut ops = vec![Op::put_json(
            &current.key,
            &Vpc {
                cidr_block: cidr,
                ..current.value.clone()
            },
            Expect::Revision(current.mod_revision),
        )?];
        for subnet in self.store().list_json::<Subnet>("subnets/").await? {
            if subnet.value.vpc_id == current.value.vpc_id && subnet.value.default_for_az {
                let moved = Subnet {
                    cidr_block: cidr,
                    ..subnet.value
                };
                ops.push(Op::put_json(
                    &subnet.key,
                    &moved,
                    Expect::Revision(subnet.mod_revision),
                )?);
            }
        }
        self.store().txn(ops).await?;
        Ok(())
    }

    /// The operation that fails RunTask's write if the subnet is deleted before it
    /// commits: the subnet re-written at the revision read now. Called under the
    /// allocation lock, which serializes RunTasks, so only DeleteSubnet can interfere.
    pub(crate) async fn subnet_guard(&self, subnet_id: &str) -> Result<Op, EcsError> {
        let key = subnet_key(subnet_id);
        let current = self
            .store()
            .get_json::<Subnet>(&key)
            .await
            .map_err(crate::internal)?
            .ok_or_else(|| {
                EcsError::InvalidParameter(format!(
                    "Error retrieving subnet information for [{subnet_id}]: The subnet ID '{subnet_id}' does not exist"
                ))
            })?;
        Op::put_json(key, &current.value, Expect::Revision(current.mod_revision))
            .map_err(crate::internal)
    }

    /// The account that owns the network resources (EC2's `ownerId`).
    pub fn owner_id(&self) -> &str {
        &self.scope().account
    }

    fn availability_zone(&self) -> String {
        format!("{}a", self.scope().region)
    }

    /// CreateVpc: a VPC and its `default` security group.
    pub async fn create_vpc(&self, cidr_block: &str) -> Result<Vpc, NetworkError> {
        let cidr = model::vpc::parse_network(cidr_block)?;
        model::vpc::check_vpc_cidr(cidr)?;
        let vpc = Vpc {
            vpc_id: model::vpc::new_id("vpc"),
            cidr_block: cidr,
            is_default: false,
        };
        let group = SecurityGroup::default_for(&vpc.vpc_id);
        self.store()
            .txn(vec![
                Op::put_json(vpc_key(&vpc.vpc_id), &vpc, Expect::Absent)?,
                Op::put_json(group_key(&group.group_id), &group, Expect::Absent)?,
            ])
            .await?;
        tracing::info!(vpc_id = %vpc.vpc_id, %cidr, "VPC created");
        Ok(vpc)
    }

    /// DescribeVpcs: the VPCs named (all when none), that match every filter.
    pub async fn describe_vpcs(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Vpc>, NetworkError> {
        let vpcs = self.store().list_json::<Vpc>("vpcs/").await?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !vpcs.iter().any(|v| v.value.vpc_id == **id))
        {
            return Err(NetworkError::VpcNotFound {
                id: missing.clone(),
            });
        }
        let mut out = Vec::new();
        for vpc in vpcs.into_iter().map(|v| v.value) {
            let fields = [
                ("vpc-id", vpc.vpc_id.clone()),
                ("cidr", vpc.cidr_block.to_string()),
                ("cidr-block", vpc.cidr_block.to_string()),
                ("is-default", vpc.is_default.to_string()),
                ("state", "available".to_owned()),
                ("owner-id", self.scope().account.clone()),
            ];
            if (ids.is_empty() || ids.contains(&vpc.vpc_id))
                && Filter::all_match(filters, &fields, "VPCs")?
            {
                out.push(vpc);
            }
        }
        Ok(out)
    }

    async fn vpc(&self, id: &str) -> Result<Versioned<Vpc>, NetworkError> {
        self.store()
            .get_json::<Vpc>(&vpc_key(id))
            .await?
            .ok_or_else(|| NetworkError::VpcNotFound { id: id.to_owned() })
    }

    async fn default_vpc(&self) -> Result<Vpc, NetworkError> {
        self.store()
            .list_json::<Vpc>("vpcs/")
            .await?
            .into_iter()
            .map(|v| v.value)
            .find(|v| v.is_default)
            .ok_or(NetworkError::NoDefaultVpc)
    }

    /// The ids of tasks not yet STOPPED that `uses` picks, sorted.
    async fn tasks_using(
        &self,
        uses: impl Fn(&TaskPlan) -> bool,
    ) -> Result<Vec<String>, NetworkError> {
        Ok(self
            .store()
            .list_json::<TaskRecord>("tasks/")
            .await?
            .into_iter()
            .filter(|r| r.value.task.last_status != TaskStatus::Stopped && uses(&r.value.plan))
            .map(|r| r.value.plan.task_id)
            .collect())
    }

    /// Resolves RunTask's `awsvpcConfiguration`: the named subnets and security groups
    /// must exist and share one VPC, the default VPC; without one, the default subnet and
    /// the default VPC's `default` group. Messages are ECS's.
    pub(crate) async fn task_network(
        &self,
        network: Option<&NetworkConfiguration>,
    ) -> Result<TaskNetwork, EcsError> {
        let vpc = self.default_vpc().await.map_err(NetworkError::into_ecs)?;
        let subnets = self
            .store()
            .list_json::<Subnet>("subnets/")
            .await
            .map_err(crate::internal)?;
        let default_subnet = subnets
            .iter()
            .find(|s| s.value.vpc_id == vpc.vpc_id && s.value.default_for_az)
            .map_or("", |s| s.value.subnet_id.as_str());
        let subnet_id = network_subnet(network, default_subnet)?;
        if subnet_id.is_empty() {
            return Err(EcsError::InvalidParameter(format!(
                "The default VPC {} has no default subnet: name a subnet in networkConfiguration.awsvpcConfiguration.subnets.",
                vpc.vpc_id
            )));
        }
        let awsvpc = network.and_then(|n| n.awsvpc_configuration.as_ref());
        let named = awsvpc.map_or(&[][..], |c| c.subnets.as_slice());
        let find = |id: &str| subnets.iter().find(|s| s.value.subnet_id == id);
        let not_found = |id: &str| {
            EcsError::InvalidParameter(format!(
                "Error retrieving subnet information for [{id}]: The subnet ID '{id}' does not exist"
            ))
        };
        if let Some(id) = named.iter().find(|id| find(id).is_none()) {
            return Err(not_found(id));
        }
        let subnet = find(&subnet_id)
            .cloned()
            .ok_or_else(|| not_found(&subnet_id))?;
        let task_vpc = subnet.value.vpc_id.clone();
        if let Some(other) = named
            .iter()
            .filter_map(|id| find(id))
            .find(|s| s.value.vpc_id != task_vpc)
        {
            return Err(EcsError::InvalidParameter(format!(
                "The subnets {subnet_id} and {} are in different VPCs: name subnets of one VPC.",
                other.value.subnet_id
            )));
        }
        let groups = self
            .store()
            .list_json::<SecurityGroup>("security-groups/")
            .await
            .map_err(crate::internal)?;
        let mut security_groups = Vec::new();
        for id in awsvpc.map_or(&[][..], |c| c.security_groups.as_slice()) {
            let group = groups.iter().find(|g| g.value.group_id == *id).ok_or_else(|| {
                EcsError::InvalidParameter(format!(
                    "Error retrieving security group information for [{id}]: The security group '{id}' does not exist"
                ))
            })?;
            if group.value.vpc_id != task_vpc {
                return Err(EcsError::InvalidParameter(format!(
                    "Security group {id} does not appear to belong to the same VPC as the input subnets: it is in {}, the subnets in {task_vpc}.",
                    group.value.vpc_id
                )));
            }
            if !security_groups.contains(id) {
                security_groups.push(id.clone());
            }
        }
        if task_vpc != vpc.vpc_id {
            return Err(EcsError::InvalidParameter(format!(
                "Subnet {subnet_id} is in {task_vpc}: only the default VPC's subnets ({}) can run tasks on this server yet; name one of them.",
                vpc.vpc_id
            )));
        }
        if !self.inner.config.subnet.contains(&subnet.value.cidr_block) {
            return Err(EcsError::InvalidParameter(format!(
                "Subnet {subnet_id} ({}) lies outside this server's task network {}: name a subnet inside it.",
                subnet.value.cidr_block, self.inner.config.subnet
            )));
        }
        if security_groups.is_empty() {
            security_groups.extend(
                groups
                    .iter()
                    .filter(|g| g.value.vpc_id == task_vpc && g.value.is_default())
                    .map(|g| g.value.group_id.clone()),
            );
        }
        let policy = policy::task_policy(
            groups
                .iter()
                .map(|g| &g.value)
                .filter(|g| security_groups.contains(&g.group_id)),
        );
        Ok(TaskNetwork {
            subnet: subnet.value,
            security_groups,
            policy,
        })
    }
}

/// A refused or failed VPC, subnet or security group operation. [`NetworkError::code`]
/// is EC2's error code.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Invalid(#[from] VpcError),

    #[error("The vpc ID '{id}' does not exist: list VPCs with describe-vpcs")]
    VpcNotFound { id: String },

    #[error("The subnet ID '{id}' does not exist: list subnets with describe-subnets")]
    SubnetNotFound { id: String },

    #[error("The security group '{group}' does not exist{}: list groups with describe-security-groups", vpc_id.as_ref().map(|v| format!(" in VPC '{v}'")).unwrap_or_default())]
    GroupNotFound {
        group: String,
        vpc_id: Option<String>,
    },

    #[error("The security group '{name}' already exists for VPC '{vpc_id}': pick another name")]
    GroupDuplicate { name: String, vpc_id: String },

    #[error("the specified group: \"{id}\" name: \"default\" cannot be deleted by a user: every VPC keeps its default group")]
    CannotDeleteDefault { id: String },

    #[error("resource {id} has a dependent object: {dependents}; stop or change those first")]
    DependencyViolation { id: String, dependents: String },

    #[error("the specified rule \"{rule}\" already exists in {group_id}: it is in force already; drop it from the request")]
    PermissionDuplicate { rule: String, group_id: String },

    #[error("The specified rule \"{rule}\" does not exist in {group_id}: list its rules with describe-security-groups")]
    PermissionNotFound { rule: String, group_id: String },

    #[error("security group {group_id} is in {group_vpc}, not {vpc_id}: rules can only name groups of the same VPC")]
    GroupOtherVpc {
        group_id: String,
        group_vpc: String,
        vpc_id: String,
    },

    #[error("there is no default VPC: the server creates it on first start; restart skiff server to recreate it")]
    NoDefaultVpc,

    #[error("the state store failed")]
    Store(#[from] StoreError),
}

impl NetworkError {
    /// EC2's error code.
    pub fn code(&self) -> &'static str {
        match self {
            NetworkError::Invalid(e) => e.code(),
            NetworkError::VpcNotFound { .. } => "InvalidVpcID.NotFound",
            NetworkError::SubnetNotFound { .. } => "InvalidSubnetID.NotFound",
            NetworkError::GroupNotFound { .. } => "InvalidGroup.NotFound",
            NetworkError::GroupDuplicate { .. } => "InvalidGroup.Duplicate",
            NetworkError::CannotDeleteDefault { .. } => "CannotDelete",
            NetworkError::DependencyViolation { .. } => "DependencyViolation",
            NetworkError::PermissionDuplicate { .. } => "InvalidPermission.Duplicate",
            NetworkError::PermissionNotFound { .. } => "InvalidPermission.NotFound",
            NetworkError::GroupOtherVpc { .. } => "InvalidParameterValue",
            NetworkError::NoDefaultVpc => "VPCIdNotSpecified",
            NetworkError::Store(_) => "InternalError",
        }
    }

    /// 500 for the server's own faults, 400 for what the client can correct.
    pub fn http_status(&self) -> u16 {
        match self {
            NetworkError::Store(_) => 500,
            _ => 400,
        }
    }

    fn into_ecs(self) -> EcsError {
        match self {
            NetworkError::Store(e) => crate::internal(e),
            other => EcsError::InvalidParameter(other.to_string()),
        }
    }
}
