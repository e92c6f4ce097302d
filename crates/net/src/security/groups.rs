//! Security group member sets: one named set of IPv4 addresses per group that some
//! task's policy names, called by the group id, in the bridge's ip table:
//!
//! ```text
//! table ip skiff_<bridge>
//!   set sg-0a1b2c3d4e5f60718 { type ipv4_addr; elements = { <member addresses> } }
//!   chain in_<task> { ip saddr @sg-0a1b2c3d4e5f60718 tcp dport 8080 accept; ...; drop }
//! ```
//!
//! Rules match the set, not its members, so a task joining or leaving a group changes
//! one element of one set, however many tasks' rules name the group. Changes are sent
//! as element additions and deletions against the contents this process installed; a set
//! found in the kernel at start has unknown contents, and its first update flushes and
//! refills it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{FlushObject, NfCmd, NfListObject, Set, SetType, SetTypeValue};

use crate::nft::{self, Expr, Table};
use crate::NetError;

/// The member sets of one bridge, as this process last installed them.
#[derive(Debug, Default)]
pub(super) struct GroupSets {
    /// Each set's members; None for a set found in the kernel, contents unknown.
    sets: HashMap<String, Option<BTreeSet<Ipv4Addr>>>,
}

impl GroupSets {
    /// Records sets found in the kernel by `load`.
    pub(super) fn learn(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            self.sets.entry(name).or_insert(None);
        }
    }

    /// Commands that bring each listed group's set to exactly `members`, creating the
    /// sets that do not exist yet. Call [`GroupSets::installed`] once they are applied.
    pub(super) fn update_commands(
        &self,
        batch: &mut Batch<'static>,
        table: &Table,
        members: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) {
        for (group, wanted) in members {
            let wanted: BTreeSet<Ipv4Addr> = wanted.iter().copied().collect();
            match self.sets.get(group) {
                Some(Some(current)) => {
                    let added = elements(wanted.difference(current));
                    let removed = elements(current.difference(&wanted));
                    if !added.is_empty() {
                        batch.add(table.elements(group, added));
                    }
                    if !removed.is_empty() {
                        batch.delete(table.elements(group, removed));
                    }
                }
                _ => {
                    let set = member_set(table, group);
                    batch.add(NfListObject::Set(Box::new(set.clone())));
                    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set))));
                    let all = elements(wanted.iter());
                    if !all.is_empty() {
                        batch.add(table.elements(group, all));
                    }
                }
            }
        }
    }

    /// Records that the commands of [`GroupSets::update_commands`] for `members` took
    /// effect.
    pub(super) fn installed(&mut self, members: &BTreeMap<String, Vec<Ipv4Addr>>) {
        for (group, wanted) in members {
            self.sets
                .insert(group.clone(), Some(wanted.iter().copied().collect()));
        }
    }

    /// Forgets what this process believes the listed sets hold, after a failed update:
    /// their next update flushes and refills them.
    pub(super) fn unknown(&mut self, groups: impl IntoIterator<Item = String>) {
        for group in groups {
            self.sets.insert(group, None);
        }
    }

    /// The sets of groups `members` leaves out: no policy names them any more.
    pub(super) fn stale(&self, members: &BTreeMap<String, Vec<Ipv4Addr>>) -> Vec<String> {
        let mut stale: Vec<String> = self
            .sets
            .keys()
            .filter(|group| !members.contains_key(*group))
            .cloned()
            .collect();
        stale.sort();
        stale
    }

    /// Commands that delete the sets `stale` names; see [`GroupSets::removed`].
    pub(super) fn removal_commands(batch: &mut Batch<'static>, table: &Table, stale: &[String]) {
        for group in stale {
            batch.delete(NfListObject::Set(Box::new(member_set(table, group))));
        }
    }

    pub(super) fn removed(&mut self, stale: &[String]) {
        for group in stale {
            self.sets.remove(group);
        }
    }
}

/// Commands that create the sets `groups` names if missing, leaving existing ones as
/// they are: a policy's rules can only name sets that exist.
pub(super) fn ensure_commands<'g>(
    batch: &mut Batch<'static>,
    table: &Table,
    groups: impl IntoIterator<Item = &'g String>,
) {
    for group in groups {
        batch.add(NfListObject::Set(Box::new(member_set(table, group))));
    }
}

/// A reference to a group's set in a rule: `@<group id>`.
pub(super) fn reference(group: &str) -> Expr {
    nft::string(format!("@{group}"))
}

/// Whether `name` is a security group id, which names its member set: `sg-` and
/// lower-case letters and digits, short enough for any kernel's set names (32 bytes).
pub(super) fn is_group_id(name: &str) -> bool {
    name.strip_prefix("sg-").is_some_and(|rest| {
        !rest.is_empty()
            && name.len() < 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Refuses a policy or update naming something that is not a group id, before it can
/// reach nft as a set name.
pub(super) fn check_group_ids<'g>(
    groups: impl IntoIterator<Item = &'g String>,
) -> Result<(), NetError> {
    match groups.into_iter().find(|group| !is_group_id(group)) {
        Some(group) => Err(NetError::InvalidGroupId {
            group: group.clone(),
        }),
        None => Ok(()),
    }
}

fn member_set(table: &Table, group: &str) -> Set<'static> {
    Set {
        family: table.family,
        table: table.name.clone().into(),
        name: group.to_owned().into(),
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        ..Set::default()
    }
}

fn elements<'a>(addresses: impl Iterator<Item = &'a Ipv4Addr>) -> Vec<Expr> {
    addresses
        .map(|a| nft::address(*a))
        .collect::<Vec<Expression<'static>>>()
}
