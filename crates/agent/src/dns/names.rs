//! The `local.` zone: the service names the control plane sends, answered with authority.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hickory_server::authority::{
    Authority, LookupControlFlow, LookupError, LookupObject, LookupOptions, MessageRequest,
    UpdateResult, ZoneType,
};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::RequestInfo;

use super::ZONE;

/// How long a client may keep any answer of the zone, positive or negative (the SOA
/// minimum too). The table follows tasks as they start, stop and change health, and a
/// cached address outlives the task it names by up to this long; a service scaled up
/// is found as late. Five seconds, as CoreDNS serves Kubernetes service names, keeps
/// that short while a burst of lookups still hits the client's cache, where it has one
/// (glibc and musl have none: they ask on every lookup, and see the rotation).
pub(crate) const TTL: u32 = 5;
/// The SOA's refresh, retry and expire times, which only secondaries read: there are none.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// The service name table and the zone that serves it. Lookups take a reference to the
/// current table under a read lock held for a pointer copy; `replace` builds the new
/// table outside the lock, so neither side waits on the other for long.
pub(crate) struct ServiceNames {
    origin: LowerName,
    table: RwLock<Arc<Table>>,
    /// Where the next A answer's rotation starts.
    next: AtomicUsize,
}

#[derive(Default)]
struct Table {
    addresses: HashMap<LowerName, Vec<Ipv4Addr>>,
    /// Bumped by every replacement: the zone's SOA serial.
    serial: u32,
}

/// The records of one answer.
#[derive(Default)]
pub(crate) struct Records(Vec<Record>);

impl LookupObject for Records {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Record> + Send + 'a> {
        Box::new(self.0.iter())
    }

    fn take_additionals(&mut self) -> Option<Box<dyn LookupObject>> {
        None
    }
}

/// An empty zone: every name in it is NXDOMAIN until the first `replace`.
impl Default for ServiceNames {
    fn default() -> Self {
        Self {
            origin: LowerName::from(Name::from_ascii(ZONE).expect("the zone name is valid")),
            table: RwLock::new(Arc::default()),
            next: AtomicUsize::new(0),
        }
    }
}

impl ServiceNames {
    pub(crate) fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// Replaces the whole table: `<service>.<cluster>.local` to the addresses of the
    /// service's tasks. Names that are not DNS names under `local.` are left out.
    pub(crate) fn replace(&self, names: BTreeMap<String, Vec<Ipv4Addr>>) {
        let mut addresses = HashMap::with_capacity(names.len());
        for (name, list) in names {
            match self.owner_name(&name) {
                Some(owner) => {
                    addresses.insert(owner, list);
                }
                None => tracing::warn!(name, "ignoring a service name that is not under {ZONE}"),
            }
        }
        tracing::debug!(names = addresses.len(), "service names replaced");
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let serial = table.serial.wrapping_add(1);
        *table = Arc::new(Table { addresses, serial });
    }

    fn owner_name(&self, name: &str) -> Option<LowerName> {
        let mut parsed = Name::from_ascii(name).ok()?;
        parsed.set_fqdn(true);
        let owner = LowerName::from(parsed);
        (self.origin.zone_of(&owner) && owner != self.origin).then_some(owner)
    }

    fn current(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The answer for `name` and `rtype`: records, an existing name without records of
    /// that type, or NXDOMAIN.
    fn answer(&self, name: &LowerName, rtype: RecordType) -> Result<Records, LookupError> {
        let table = self.current();
        if let Some(addresses) = table.addresses.get(name) {
            return match rtype {
                RecordType::A if !addresses.is_empty() => Ok(self.rotated(name, addresses)),
                _ => Err(LookupError::NameExists),
            };
        }
        if *name == self.origin {
            return match rtype {
                RecordType::SOA => Ok(Records(vec![self.soa(table.serial)])),
                RecordType::NS => {
                    Ok(Records(vec![self.record(
                        &self.origin,
                        RData::NS(NS(self.origin.clone().into())),
                    )]))
                }
                _ => Err(LookupError::NameExists),
            };
        }
        // The labels between the zone and a service name exist, without records.
        if table.addresses.keys().any(|owner| name.zone_of(owner)) {
            Err(LookupError::NameExists)
        } else {
            Err(LookupError::ResponseCode(ResponseCode::NXDomain))
        }
    }

    /// Every address, starting one further along than the previous answer did.
    fn rotated(&self, name: &LowerName, addresses: &[Ipv4Addr]) -> Records {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % addresses.len();
        let (before, after) = addresses.split_at(start);
        Records(
            after
                .iter()
                .chain(before)
                .map(|address| self.record(name, RData::A(A(*address))))
                .collect(),
        )
    }

    fn soa(&self, serial: u32) -> Record {
        let origin: Name = self.origin.clone().into();
        let contact = Name::from_ascii("hostmaster")
            .and_then(|label| label.append_domain(&origin))
            .expect("hostmaster.local. is a valid name");
        self.record(
            &self.origin,
            RData::SOA(SOA::new(
                origin,
                contact,
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                TTL,
            )),
        )
    }

    fn record(&self, owner: &LowerName, data: RData) -> Record {
        Record::from_rdata(owner.clone().into(), TTL, data)
    }
}

#[async_trait::async_trait]
impl Authority for ServiceNames {
    type Lookup = Records;

    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn is_axfr_allowed(&self) -> bool {
        false
    }

    async fn update(&self, _update: &MessageRequest) -> UpdateResult<bool> {
        Err(ResponseCode::Refused)
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<Records> {
        LookupControlFlow::Break(self.answer(name, rtype))
    }

    async fn search(
        &self,
        request: RequestInfo<'_>,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<Records> {
        LookupControlFlow::Break(self.answer(request.query.name(), request.query.query_type()))
    }

    /// The zone is not signed: it has no NSEC records.
    async fn get_nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<Records> {
        LookupControlFlow::Break(Ok(Records::default()))
    }
}
