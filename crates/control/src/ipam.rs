//! Task address allocation from the task network. The control plane is the only writer,
//! so an in-memory set of addresses held by tasks that are not yet STOPPED, rebuilt from
//! the store at start, is the whole state.
//!
//! The task network is the default VPC's CIDR; each subnet of it allocates from its own
//! CIDR, but every task sees the whole network on-link with the bridge (the network's
//! first host) as its gateway, so one set of addresses serves every subnet.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::task::TaskStatus;
use store::StoreJsonExt;

use crate::{Control, TaskRecord};

pub(crate) struct Ipam {
    subnet: Ipv4Net,
    in_use: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    pub(crate) fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            in_use: BTreeSet::new(),
        }
    }

    pub(crate) fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().unwrap_or(self.subnet.network())
    }

    pub(crate) fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }

    /// The lowest free host address of `within` (a subnet of the task network), the
    /// gateway excluded.
    pub(crate) fn allocate(&mut self, within: Ipv4Net) -> Option<Ipv4Addr> {
        let gateway = self.gateway();
        let address = within
            .hosts()
            .find(|a| *a != gateway && !self.in_use.contains(a))?;
        self.in_use.insert(address);
        Some(address)
    }

    /// How many addresses of `within` are free for tasks.
    pub(crate) fn available(&self, within: Ipv4Net) -> u32 {
        let hosts = match within.prefix_len() {
            32 => 1,
            31 => 2,
            len => (1u32 << (32 - len)) - 2,
        };
        let gateway = u32::from(within.contains(&self.gateway()));
        let (first, last) = (within.network(), within.broadcast());
        let used = self.in_use.range(first..=last).count();
        hosts.saturating_sub(gateway + u32::try_from(used).unwrap_or(u32::MAX))
    }

    pub(crate) fn claim(&mut self, address: Ipv4Addr) {
        self.in_use.insert(address);
    }

    pub(crate) fn release(&mut self, address: Ipv4Addr) {
        self.in_use.remove(&address);
    }
}

impl Control {
    /// Claims the addresses and host ports of every task not yet STOPPED, from one
    /// listing of the task records: the in-memory allocation tables at start.
    pub(crate) async fn rebuild_allocations(&self) -> Result<(), store::StoreError> {
        let records = self.store().list_json::<TaskRecord>("tasks/").await?;
        let mut ipam = self.inner.ipam.lock().await;
        let mut ports = self.host_ports();
        for record in records.into_iter().map(|r| r.value) {
            if record.task.last_status != TaskStatus::Stopped {
                ipam.claim(record.plan.network.address);
                ports.claim(record.task.id(), &record.plan.network.port_bindings);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut ipam = Ipam::new("10.9.0.0/29".parse().unwrap());
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 9, 0, 1));
        let net = "10.9.0.0/29".parse().unwrap();
        assert_eq!(ipam.available(net), 5);
        let a: Vec<_> = (0..5).map(|_| ipam.allocate(net).unwrap()).collect();
        assert_eq!(a[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(a[4], Ipv4Addr::new(10, 9, 0, 6));
        assert_eq!(ipam.allocate(net), None, "the /29 has 5 task addresses");
        assert_eq!(ipam.available(net), 0);
        ipam.release(a[1]);
        assert_eq!(ipam.allocate(net), Some(a[1]));
    }

    #[test]
    fn allocates_within_a_subnet_of_the_network() {
        let mut ipam = Ipam::new("10.9.0.0/16".parse().unwrap());
        let upper: Ipv4Net = "10.9.128.0/28".parse().unwrap();
        assert_eq!(ipam.available(upper), 14);
        assert_eq!(ipam.allocate(upper), Some(Ipv4Addr::new(10, 9, 128, 1)));
        assert_eq!(ipam.available(upper), 13);
        let lower: Ipv4Net = "10.9.0.0/28".parse().unwrap();
        assert_eq!(
            ipam.available(lower),
            13,
            "the gateway is not a task address"
        );
        assert_eq!(ipam.allocate(lower), Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(
            ipam.available("10.9.0.0/16".parse().unwrap()),
            65534 - 1 - 2
        );
    }
}
