//! Names and addresses derived from a task id or a task address.
//!
//! Everything the host needs to find a task's network again after an agent restart is
//! derived here, deterministically, so no state has to be persisted:
//!
//! - the named network namespace `skiff-<task_id>` under `/run/netns`;
//! - the host-side veth `sk<first 13 hex digits>`: exactly 15 bytes, the IFNAMSIZ limit;
//! - the task's MAC address `0a:58:<the four IPv4 octets>` (the CNI bridge convention):
//!   locally administered, unicast, and stable for an address, so neighbours' ARP caches
//!   stay right when an address is reused by a later task;
//! - the host-side veth's MAC address `0e:` and the next 10 digits of the task id. It is
//!   set when the veth is created, so with the name it identifies the owning task by 23 of
//!   its 32 digits from the first instant: that is how a leftover interface of the same
//!   task is told apart from another task's. Its first octet differs from the task and
//!   bridge MACs' `0a`, so a bridge port never shadows a task's address.

use std::net::Ipv4Addr;

use crate::NetError;

/// Length of a task id: 32 lowercase hex digits, the last segment of a task ARN.
const TASK_ID_LEN: usize = 32;
/// Prefix of the named network namespaces this crate owns.
const NETNS_PREFIX: &str = "skiff-";
/// Prefix of host-side veth names.
const HOST_VETH_PREFIX: &str = "sk";
/// Linux rejects interface names of IFNAMSIZ (16) bytes or more, counting the NUL.
const MAX_INTERFACE_NAME_LEN: usize = 15;
/// First two octets of every task MAC address: locally administered, unicast.
const MAC_PREFIX: [u8; 2] = [0x0a, 0x58];
/// First octet of every host-side veth MAC address: locally administered, unicast.
const HOST_MAC_PREFIX: u8 = 0x0e;

/// Checks that `task_id` is 32 lowercase hex digits.
pub(crate) fn validate_task_id(task_id: &str) -> Result<(), NetError> {
    let valid = task_id.len() == TASK_ID_LEN
        && task_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(NetError::InvalidTaskId {
            task_id: task_id.to_owned(),
        })
    }
}

/// Name of the task's network namespace (the file name under `/run/netns`).
pub(crate) fn netns_name(task_id: &str) -> String {
    format!("{NETNS_PREFIX}{task_id}")
}

/// The task id encoded in a namespace file name, if the name is one of ours.
pub(crate) fn task_id_from_netns_name(name: &str) -> Option<&str> {
    let task_id = name.strip_prefix(NETNS_PREFIX)?;
    validate_task_id(task_id).ok()?;
    Some(task_id)
}

/// Name of the host end of the task's veth pair. `task_id` must be valid.
pub(crate) fn host_interface(task_id: &str) -> String {
    let digits = MAX_INTERFACE_NAME_LEN - HOST_VETH_PREFIX.len();
    format!("{HOST_VETH_PREFIX}{}", &task_id[..digits])
}

/// MAC address of the host end of the task's veth pair: the task id digits that follow
/// the ones in `host_interface`. `task_id` must be valid.
pub(crate) fn host_mac(task_id: &str) -> [u8; 6] {
    let first = MAX_INTERFACE_NAME_LEN - HOST_VETH_PREFIX.len();
    let digits = &task_id.as_bytes()[first..first + 10];
    let mut mac = [HOST_MAC_PREFIX, 0, 0, 0, 0, 0];
    for (byte, pair) in mac[1..].iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_value(pair[0]) << 4 | hex_value(pair[1]);
    }
    mac
}

/// Value of a lowercase hex digit, as `validate_task_id` guarantees.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// MAC address of the task's `eth0`.
pub(crate) fn task_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [MAC_PREFIX[0], MAC_PREFIX[1], a, b, c, d]
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why `name` cannot be a Linux interface name (the kernel's `dev_valid_name`), if it
/// cannot.
pub(crate) fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK_ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn task_ids_must_be_32_lowercase_hex_digits() {
        assert!(validate_task_id(TASK_ID).is_ok());
        for bad in [
            "",
            "0123456789abcdef",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
            "../../../../etc/passwd0123456789a",
        ] {
            assert!(
                matches!(validate_task_id(bad), Err(NetError::InvalidTaskId { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn netns_names_round_trip_and_reject_foreign_names() {
        let name = netns_name(TASK_ID);
        assert_eq!(name, format!("skiff-{TASK_ID}"));
        assert_eq!(task_id_from_netns_name(&name), Some(TASK_ID));
        assert_eq!(task_id_from_netns_name(TASK_ID), None);
        assert_eq!(task_id_from_netns_name("skiff-1234"), None);
        assert_eq!(task_id_from_netns_name("cni-1234"), None);
    }

    #[test]
    fn host_interface_names_fit_ifnamsiz() {
        let name = host_interface(TASK_ID);
        assert_eq!(name, "sk0123456789abc");
        assert_eq!(name.len(), MAX_INTERFACE_NAME_LEN);
        assert_eq!(interface_name_problem(&name), None);
    }

    #[test]
    fn task_mac_is_local_unicast_and_encodes_the_address() {
        let mac = task_mac(Ipv4Addr::new(10, 88, 1, 254));
        assert_eq!(format_mac(&mac), "0a:58:0a:58:01:fe");
        assert_eq!(mac[0] & 0b01, 0, "multicast bit set");
        assert_eq!(mac[0] & 0b10, 0b10, "locally administered bit clear");
    }

    #[test]
    fn host_mac_continues_the_task_id_where_the_name_stops() {
        let mac = host_mac(TASK_ID);
        // The name holds digits 0..13, the MAC digits 13..23.
        assert_eq!(format_mac(&mac), "0e:de:f0:12:34:56");
        assert_eq!(mac[0] & 0b01, 0, "multicast bit set");
        assert_eq!(mac[0] & 0b10, 0b10, "locally administered bit clear");
        assert_ne!(mac[0], task_mac(Ipv4Addr::new(10, 0, 0, 2))[0]);
        let other = "0123456789abcdef0123456789abcdee";
        assert_eq!(host_mac(other), mac, "digits past 23 are not encoded");
        let other = "0123456789abcdef1123456789abcdef";
        assert_ne!(host_mac(other), mac);
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert_eq!(interface_name_problem("skiff0"), None);
        for bad in [
            "",
            "a-very-long-bridge-name",
            ".",
            "..",
            "br/0",
            "br:0",
            "br 0",
        ] {
            assert!(
                interface_name_problem(bad).is_some(),
                "{bad:?} was accepted"
            );
        }
    }
}
