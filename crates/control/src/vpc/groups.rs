//! CreateSecurityGroup, DescribeSecurityGroups, DeleteSecurityGroup, and the
//! Authorize/Revoke operations on a group's ingress and egress rules.

use model::vpc::{Direction, Filter, IpPermission, SecurityGroup, SecurityGroupRule};
use store::{Expect, Op, StoreError, StoreJsonExt, Versioned};

use super::{group_key, vpc_key, NetworkError};
use crate::Control;

/// A security group named by id (`sg-…`) or by name (in the default VPC, or in the VPC
/// of the group a rule is added to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Id(String),
    Name(String),
}

/// One IpPermission of an Authorize/Revoke call: its address ranges already parsed,
/// its peer groups still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRequest {
    pub permission: IpPermission,
    pub groups: Vec<(GroupRef, Option<String>)>,
}

impl Control {
    /// CreateSecurityGroup: a new group in `vpc_id` (the default VPC when None) with no
    /// ingress and all egress allowed; the name must be unique in the VPC.
    pub async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
    ) -> Result<SecurityGroup, NetworkError> {
        model::vpc::check_group_name(name)?;
        let vpc_id = match vpc_id {
            Some(id) => id.to_owned(),
            None => self.default_vpc().await?.vpc_id,
        };
        loop {
            let vpc = self.vpc(&vpc_id).await?;
            if self
                .groups_in(&vpc_id)
                .await?
                .iter()
                .any(|g| g.group_name == name)
            {
                return Err(NetworkError::GroupDuplicate {
                    name: name.to_owned(),
                    vpc_id,
                });
            }
            let group = SecurityGroup::new(name, description, &vpc_id);
            // Re-writing the VPC at the revision read keeps names unique under races.
            let ops = vec![
                Op::put_json(group_key(&group.group_id), &group, Expect::Absent)?,
                Op::put_json(
                    vpc_key(&vpc_id),
                    &vpc.value,
                    Expect::Revision(vpc.mod_revision),
                )?,
            ];
            match self.store().txn(ops).await {
                Ok(_) => {
                    tracing::info!(group_id = %group.group_id, vpc_id = %vpc_id, name, "security group created");
                    return Ok(group);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn groups_in(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>, NetworkError> {
        Ok(self
            .store()
            .list_json::<SecurityGroup>("security-groups/")
            .await?
            .into_iter()
            .map(|g| g.value)
            .filter(|g| g.vpc_id == vpc_id)
            .collect())
    }

    pub(crate) async fn security_group(
        &self,
        id: &str,
    ) -> Result<Versioned<SecurityGroup>, NetworkError> {
        self.store()
            .get_json::<SecurityGroup>(&group_key(id))
            .await?
            .ok_or_else(|| NetworkError::GroupNotFound {
                group: id.to_owned(),
                vpc_id: None,
            })
    }

    /// Finds a group by id, or by name in `vpc_id` (the default VPC when None).
    async fn find_group(
        &self,
        group: &GroupRef,
        vpc_id: Option<&str>,
    ) -> Result<Versioned<SecurityGroup>, NetworkError> {
        let name = match group {
            GroupRef::Id(id) => return self.security_group(id).await,
            GroupRef::Name(name) => name,
        };
        let vpc_id = match vpc_id {
            Some(id) => id.to_owned(),
            None => self.default_vpc().await?.vpc_id,
        };
        self.store()
            .list_json::<SecurityGroup>("security-groups/")
            .await?
            .into_iter()
            .find(|g| g.value.vpc_id == vpc_id && g.value.group_name == *name)
            .ok_or(NetworkError::GroupNotFound {
                group: name.clone(),
                vpc_id: Some(vpc_id),
            })
    }

    /// DescribeSecurityGroups: the groups named by id or by name (names are looked up
    /// in the default VPC), all when none, that match every filter.
    pub async fn describe_security_groups(
        &self,
        ids: &[String],
        names: &[String],
        filters: &[Filter],
    ) -> Result<Vec<SecurityGroup>, NetworkError> {
        let mut wanted = Vec::new();
        for id in ids {
            wanted.push(self.security_group(id).await?.value.group_id);
        }
        for name in names {
            let group = self.find_group(&GroupRef::Name(name.clone()), None).await?;
            wanted.push(group.value.group_id);
        }
        let mut out = Vec::new();
        let groups = self
            .store()
            .list_json::<SecurityGroup>("security-groups/")
            .await?;
        for group in groups.into_iter().map(|g| g.value) {
            let fields = [
                ("group-id", group.group_id.clone()),
                ("group-name", group.group_name.clone()),
                ("vpc-id", group.vpc_id.clone()),
                ("description", group.description.clone()),
                ("owner-id", self.scope().account.clone()),
            ];
            if (wanted.is_empty() || wanted.contains(&group.group_id))
                && Filter::all_match(filters, &fields, "security groups")?
            {
                out.push(group);
            }
        }
        Ok(out)
    }

    /// DeleteSecurityGroup: refused for a VPC's `default` group, while tasks not yet
    /// STOPPED are in the group, and while other groups' rules name it. Returns its id.
    pub async fn delete_security_group(&self, group: &GroupRef) -> Result<String, NetworkError> {
        let found = self.find_group(group, None).await?;
        let id = found.value.group_id.clone();
        if found.value.is_default() {
            return Err(NetworkError::CannotDeleteDefault { id });
        }
        let users = self
            .tasks_using(|plan| plan.network.security_groups.contains(&id))
            .await?;
        if !users.is_empty() {
            return Err(NetworkError::DependencyViolation {
                dependents: format!("tasks {} are in it", users.join(", ")),
                id,
            });
        }
        let referencing: Vec<String> = self
            .groups_in(&found.value.vpc_id)
            .await?
            .into_iter()
            .filter(|g| g.group_id != id && g.references(&id))
            .map(|g| g.group_id)
            .collect();
        if !referencing.is_empty() {
            return Err(NetworkError::DependencyViolation {
                dependents: format!("rules of {} name it", referencing.join(", ")),
                id,
            });
        }
        self.store()
            .delete(&group_key(&id), Expect::Revision(found.mod_revision))
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => NetworkError::GroupNotFound {
                    group: id.clone(),
                    vpc_id: None,
                },
                e => e.into(),
            })?;
        tracing::info!(group_id = %id, "security group deleted");
        Ok(id)
    }

    /// AuthorizeSecurityGroupIngress/Egress: adds every rule of `permissions`; a rule
    /// the group already has fails the whole call. Returns the rules added.
    pub async fn authorize_security_group(
        &self,
        group: &GroupRef,
        direction: Direction,
        permissions: &[PermissionRequest],
    ) -> Result<Vec<SecurityGroupRule>, NetworkError> {
        self.change_rules(group, direction, permissions, true).await
    }

    /// RevokeSecurityGroupIngress/Egress: removes every rule of `permissions`; a rule
    /// the group does not have fails the whole call. Returns the rules removed.
    pub async fn revoke_security_group(
        &self,
        group: &GroupRef,
        direction: Direction,
        permissions: &[PermissionRequest],
    ) -> Result<Vec<SecurityGroupRule>, NetworkError> {
        self.change_rules(group, direction, permissions, false)
            .await
    }

    async fn change_rules(
        &self,
        group: &GroupRef,
        direction: Direction,
        permissions: &[PermissionRequest],
        add: bool,
    ) -> Result<Vec<SecurityGroupRule>, NetworkError> {
        let target = self.find_group(group, None).await?;
        let group_id = target.value.group_id.clone();
        let vpc_id = target.value.vpc_id.clone();
        let mut rules = Vec::new();
        for request in permissions {
            let mut permission = request.permission.clone();
            for (peer, description) in &request.groups {
                let peer = self.find_group(peer, Some(&vpc_id)).await?.value;
                if peer.vpc_id != vpc_id {
                    return Err(NetworkError::GroupOtherVpc {
                        group_id: peer.group_id,
                        group_vpc: peer.vpc_id,
                        vpc_id,
                    });
                }
                permission.groups.push((peer.group_id, description.clone()));
            }
            rules.extend(permission.rules()?);
        }
        loop {
            let mut current = self.security_group(&group_id).await?;
            let list = current.value.rules_mut(direction);
            for rule in &rules {
                let position = list.iter().position(|r| r.same_traffic(rule));
                match (add, position) {
                    (true, None) => list.push(rule.clone()),
                    (false, Some(index)) => {
                        list.remove(index);
                    }
                    (true, Some(_)) => {
                        return Err(NetworkError::PermissionDuplicate {
                            rule: rule.to_string(),
                            group_id,
                        })
                    }
                    (false, None) => {
                        return Err(NetworkError::PermissionNotFound {
                            rule: rule.to_string(),
                            group_id,
                        })
                    }
                }
            }
            match self
                .store()
                .put_json(
                    &current.key,
                    &current.value,
                    Expect::Revision(current.mod_revision),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(group_id = %group_id, ?direction, rules = rules.len(), added = add, "security group rules changed");
                    self.network_sync().wake();
                    return Ok(rules);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
