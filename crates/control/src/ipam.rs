//! Task address allocation from the task subnet. The control plane is the only writer,
//! so an in-memory set of addresses held by tasks that are not yet STOPPED, rebuilt from
//! the store at start, is the whole state.

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

    /// The lowest free host address, the gateway excluded.
    pub(crate) fn allocate(&mut self) -> Option<Ipv4Addr> {
        let gateway = self.gateway();
        let address = self
            .subnet
            .hosts()
            .find(|a| *a != gateway && !self.in_use.contains(a))?;
        self.in_use.insert(address);
        Some(address)
    }

    pub(crate) fn claim(&mut self, address: Ipv4Addr) {
        self.in_use.insert(address);
    }

    pub(crate) fn release(&mut self, address: Ipv4Addr) {
        self.in_use.remove(&address);
    }
}

impl Control {
    pub(crate) async fn rebuild_ipam(&self) -> Result<(), store::StoreError> {
        let records = self.store().list_json::<TaskRecord>("tasks/").await?;
        let mut ipam = self.inner.ipam.lock().await;
        for record in records {
            if record.value.task.last_status != TaskStatus::Stopped {
                ipam.claim(record.value.plan.network.address);
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
        let a: Vec<_> = (0..5).map(|_| ipam.allocate().unwrap()).collect();
        assert_eq!(a[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(a[4], Ipv4Addr::new(10, 9, 0, 6));
        assert_eq!(ipam.allocate(), None, "the /29 has 5 task addresses");
        ipam.release(a[1]);
        assert_eq!(ipam.allocate(), Some(a[1]));
    }
}
