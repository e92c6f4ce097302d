//! CreateSubnet, DescribeSubnets, DeleteSubnet.

use model::vpc::{Filter, Subnet};
use store::{Expect, Op, StoreError, StoreJsonExt};

use super::{subnet_key, vpc_key, NetworkError};
use crate::Control;

/// A subnet with the addresses it has left for tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetView {
    pub subnet: Subnet,
    pub available_ip_address_count: u32,
}

impl Control {
    /// CreateSubnet: inside its VPC, overlapping no other subnet of it.
    pub async fn create_subnet(
        &self,
        vpc_id: &str,
        cidr_block: &str,
        availability_zone: Option<&str>,
    ) -> Result<SubnetView, NetworkError> {
        let cidr = model::vpc::parse_network(cidr_block)?;
        let zone = availability_zone.map_or_else(|| self.availability_zone(), str::to_owned);
        loop {
            let vpc = self.vpc(vpc_id).await?;
            let siblings: Vec<Subnet> = self
                .store()
                .list_json::<Subnet>("subnets/")
                .await?
                .into_iter()
                .map(|s| s.value)
                .filter(|s| s.vpc_id == vpc_id)
                .collect();
            model::vpc::check_subnet_cidr(cidr, &vpc.value, &siblings)?;
            let subnet = Subnet {
                subnet_id: model::vpc::new_id("subnet"),
                vpc_id: vpc_id.to_owned(),
                cidr_block: cidr,
                availability_zone: zone.clone(),
                default_for_az: false,
                map_public_ip_on_launch: false,
            };
            // Re-writing the VPC at the revision read serializes subnet creation in it.
            let ops = vec![
                Op::put_json(subnet_key(&subnet.subnet_id), &subnet, Expect::Absent)?,
                Op::put_json(
                    vpc_key(vpc_id),
                    &vpc.value,
                    Expect::Revision(vpc.mod_revision),
                )?,
            ];
            match self.store().txn(ops).await {
                Ok(_) => {
                    tracing::info!(subnet_id = %subnet.subnet_id, vpc_id, %cidr, "subnet created");
                    return Ok(self.subnet_view(subnet).await);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// DescribeSubnets: the subnets named (all when none), that match every filter.
    pub async fn describe_subnets(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<SubnetView>, NetworkError> {
        let subnets = self.store().list_json::<Subnet>("subnets/").await?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !subnets.iter().any(|s| s.value.subnet_id == **id))
        {
            return Err(NetworkError::SubnetNotFound {
                id: missing.clone(),
            });
        }
        let mut out = Vec::new();
        for subnet in subnets.into_iter().map(|s| s.value) {
            let fields = [
                ("subnet-id", subnet.subnet_id.clone()),
                ("vpc-id", subnet.vpc_id.clone()),
                ("cidr-block", subnet.cidr_block.to_string()),
                ("cidr", subnet.cidr_block.to_string()),
                ("availability-zone", subnet.availability_zone.clone()),
                ("default-for-az", subnet.default_for_az.to_string()),
                ("state", "available".to_owned()),
                ("owner-id", self.scope().account.clone()),
            ];
            if (ids.is_empty() || ids.contains(&subnet.subnet_id))
                && Filter::all_match(filters, &fields, "subnets")?
            {
                out.push(self.subnet_view(subnet).await);
            }
        }
        Ok(out)
    }

    async fn subnet_view(&self, subnet: Subnet) -> SubnetView {
        let available_ip_address_count = self.inner.ipam.lock().await.available(subnet.cidr_block);
        SubnetView {
            subnet,
            available_ip_address_count,
        }
    }

    /// DeleteSubnet: refused while tasks not yet STOPPED use the subnet.
    pub async fn delete_subnet(&self, id: &str) -> Result<(), NetworkError> {
        loop {
            let subnet = self
                .store()
                .get_json::<Subnet>(&subnet_key(id))
                .await?
                .ok_or_else(|| NetworkError::SubnetNotFound { id: id.to_owned() })?;
            let users = self
                .tasks_using(|plan| plan.network.subnet_id == id)
                .await?;
            if !users.is_empty() {
                return Err(NetworkError::DependencyViolation {
                    id: id.to_owned(),
                    dependents: format!("tasks {} run in it", users.join(", ")),
                });
            }
            match self
                .store()
                .delete(&subnet_key(id), Expect::Revision(subnet.mod_revision))
                .await
            {
                Ok(_) => {
                    tracing::info!(subnet_id = id, "subnet deleted");
                    return Ok(());
                }
                // RunTask re-writes the subnet with its tasks: look at the tasks again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
