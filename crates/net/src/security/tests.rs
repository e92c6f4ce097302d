//! The shape of the per-task transactions; the kernel's view is in `host::security_tests`.

use serde_json::json;

use super::*;

const TASK: &str = "0123456789abcdef0123456789abcdef";

fn firewall() -> TaskFirewall {
    TaskFirewall::new("skiff9", "10.77.0.0/16".parse().expect("subnet"))
}

fn rule(protocol: Protocol, ports: Option<(u16, u16)>, sources: &[&str]) -> SecurityRule {
    SecurityRule {
        protocol,
        ports,
        sources: sources.iter().map(|s| s.parse().expect("net")).collect(),
        groups: vec![],
    }
}

fn commands(batch: Batch<'static>) -> Vec<Value> {
    serde_json::to_value(batch.to_nftables()).expect("json")["nftables"]
        .as_array()
        .expect("commands")
        .clone()
}

#[test]
fn a_policy_rebuilds_only_the_tasks_two_chains() {
    let policy = SecurityPolicy {
        ingress: vec![
            rule(
                Protocol::Tcp,
                Some((80, 90)),
                &["10.0.0.0/8", "10.1.0.0/16", "192.0.2.9/32"],
            ),
            rule(Protocol::Udp, None, &[]),
        ],
        egress: vec![rule(Protocol::Icmp, Some((1, 2)), &["0.0.0.0/0"])],
    };
    let mut batch = Batch::new();
    firewall().policy_commands(&mut batch, TASK, &policy);
    let commands = commands(batch);
    for command in &commands {
        let text = command.to_string();
        assert!(
            text.contains(&format!("\"in_{TASK}\"")) || text.contains(&format!("\"out_{TASK}\"")),
            "{command}"
        );
        assert!(command.get("add").is_some() || command.get("flush").is_some());
    }
    let rules = |chain: String| -> Vec<Value> {
        commands
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain.as_str())
            .map(|c| c["add"]["rule"]["expr"].clone())
            .collect()
    };
    let ingress = rules(format!("in_{TASK}"));
    // The rule without peers matches nothing and is left out; prefixes are merged.
    assert_eq!(ingress.len(), 2, "{ingress:#?}");
    assert_eq!(
        ingress[0],
        json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.9"]}}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": {"range": [80, 90]}}},
            {"accept": {}}
        ])
    );
    assert_eq!(ingress[1], json!([{"drop": {}}]));
    let egress = rules(format!("out_{TASK}"));
    assert_eq!(
        egress[0],
        json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"set": [{"prefix": {"addr": "0.0.0.0", "len": 0}}]}}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
                       "right": 1}},
            {"return": {}}
        ])
    );
}

#[test]
fn removal_deletes_chains_only_after_emptying_them_and_their_map_elements() {
    let mut batch = Batch::new();
    let installed = Installed {
        address: Some(Ipv4Addr::new(10, 77, 0, 5)),
        version: 0,
    };
    firewall().removal_commands(&mut batch, TASK, "sk0123456789abc", installed);
    let commands: Vec<String> = commands(batch).iter().map(Value::to_string).collect();
    for chain in [
        format!("in_{TASK}"),
        format!("out_{TASK}"),
        format!("guard_{TASK}"),
    ] {
        let position = |verb: &str, kind: &str| {
            commands
                .iter()
                .position(|c| {
                    c.starts_with(&format!("{{\"{verb}\":{{\"{kind}\"")) && c.contains(&chain)
                })
                .unwrap_or_else(|| panic!("{verb} {kind} {chain}: {commands:#?}"))
        };
        assert!(position("flush", "chain") < position("delete", "element"));
        assert!(position("delete", "element") < position("delete", "chain"));
    }
}

#[test]
fn reversed_port_ranges_are_refused() {
    let mut reversed = SecurityPolicy {
        ingress: vec![rule(Protocol::Tcp, Some((90, 80)), &[])],
        egress: vec![],
    };
    assert!(matches!(
        check_policy(&reversed),
        Err(NetError::InvalidPortRange { low: 90, high: 80 })
    ));
    reversed.ingress[0].protocol = Protocol::All;
    assert!(
        check_policy(&reversed).is_ok(),
        "ports do not apply to protocol all"
    );
}

#[test]
fn the_guard_checks_ethernet_arp_and_ip_sources() {
    let rules: Vec<String> = guard_rules(Ipv4Addr::new(10, 77, 0, 5))
        .into_iter()
        .map(|rule| serde_json::to_string(&rule).expect("json"))
        .collect();
    assert_eq!(rules.len(), 7);
    assert!(rules[0].contains("0a:58:0a:4d:00:05") && rules[0].contains("!="));
    assert!(rules[1].contains("saddr ether") && rules[2].contains("saddr ip"));
    assert!(rules[4].contains("10.77.0.5") && rules[4].contains("drop"));
    assert!(rules[6].contains("drop"));
}

#[test]
fn a_listing_yields_tasks_and_their_addresses() {
    let other = "fedcba9876543210fedcba9876543210";
    let listing = json!({"nftables": [
        {"metainfo": {}},
        {"map": {"name": "ingress", "elem": [["10.77.0.5", {"jump": {"target": format!("in_{TASK}")}}]]}},
        {"chain": {"name": format!("in_{TASK}")}},
        {"chain": {"name": format!("guard_{other}")}},
        {"chain": {"name": "forward"}},
        {"chain": {"name": "in_notatask"}},
        {"set": {"name": "sg-0a1b2c3d4e5f6", "type": "ipv4_addr"}},
        {"set": {"name": "not-a-group", "type": "ipv4_addr"}},
    ]});
    let mut found = HashMap::new();
    let mut sets = Vec::new();
    learn(&listing, &mut found, &mut sets);
    assert_eq!(sets, ["sg-0a1b2c3d4e5f6"]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[TASK].address, Some(Ipv4Addr::new(10, 77, 0, 5)));
    assert_eq!(found[other].address, None);
}

#[test]
fn a_rule_naming_groups_matches_each_groups_set_beside_its_ranges() {
    let policy = SecurityPolicy {
        ingress: vec![SecurityRule {
            groups: vec!["sg-aa".to_owned(), "sg-bb".to_owned()],
            ..rule(Protocol::Tcp, Some((8080, 8080)), &["192.0.2.0/24"])
        }],
        egress: vec![],
    };
    let mut batch = Batch::new();
    firewall().policy_commands(&mut batch, TASK, &policy);
    let commands = commands(batch);
    let sets: Vec<&Value> = commands
        .iter()
        .filter_map(|c| c["add"].get("set"))
        .collect();
    assert_eq!(
        sets.len(),
        2,
        "both sets are created if missing: {commands:#?}"
    );
    assert!(
        commands
            .iter()
            .all(|c| c.get("flush").is_none() || c["flush"].get("set").is_none()),
        "a policy never empties a member set"
    );
    let peers: Vec<Value> = commands
        .iter()
        .filter(|c| c["add"]["rule"]["chain"] == format!("in_{TASK}").as_str())
        .map(|c| c["add"]["rule"]["expr"][0]["match"]["right"].clone())
        .collect();
    assert_eq!(
        peers.len(),
        4,
        "ranges, two groups, the final drop: {peers:#?}"
    );
    assert!(peers[0]["set"].is_array(), "{peers:#?}");
    assert_eq!(peers[1..], [json!("@sg-aa"), json!("@sg-bb"), Value::Null]);
}

#[test]
fn member_updates_send_only_the_difference_to_known_sets() {
    let table = firewall().ip;
    let mut sets = GroupSets::default();
    let members = |addresses: &[u8]| {
        BTreeMap::from([(
            "sg-aa".to_owned(),
            addresses
                .iter()
                .map(|&a| Ipv4Addr::new(10, 77, 0, a))
                .collect(),
        )])
    };
    // Unknown (here: never seen) sets are created, flushed and filled.
    let mut batch = Batch::new();
    sets.update_commands(&mut batch, &table, &members(&[1, 2]));
    let first: Vec<String> = commands(batch).iter().map(Value::to_string).collect();
    assert!(first[0].starts_with(r#"{"add":{"set""#), "{first:#?}");
    assert!(first[1].starts_with(r#"{"flush":{"set""#), "{first:#?}");
    assert!(first[2].contains("10.77.0.1") && first[2].contains("10.77.0.2"));
    sets.installed(&members(&[1, 2]));
    // Known ones get the difference only.
    let mut batch = Batch::new();
    sets.update_commands(&mut batch, &table, &members(&[2, 3]));
    let next: Vec<String> = commands(batch).iter().map(Value::to_string).collect();
    assert_eq!(next.len(), 2, "{next:#?}");
    assert!(next[0].starts_with(r#"{"add":{"element""#) && next[0].contains("10.77.0.3"));
    assert!(next[1].starts_with(r#"{"delete":{"element""#) && next[1].contains("10.77.0.1"));
    // Sets the update leaves out are stale.
    assert_eq!(sets.stale(&BTreeMap::new()), ["sg-aa"]);
    assert!(sets.stale(&members(&[])).is_empty());
}

#[test]
fn only_group_ids_name_sets() {
    for good in ["sg-0a1b2c3d4e5f60718", "sg-a"] {
        assert!(groups::is_group_id(good), "{good}");
    }
    for bad in [
        "sg-",
        "default",
        "sg-A1",
        "sg-1;flush",
        "sg-0123456789abcdef0123456789abcd",
    ] {
        assert!(!groups::is_group_id(bad), "{bad}");
    }
}
