//! The ELBv2 API subset (version 2015-12-01, signing name `elasticloadbalancing`) over
//! the Query protocol: decodes each action's members as botocore's elbv2 model names
//! them, calls [`lb::Balancer`], and writes the result shapes (`TargetGroup`,
//! `LoadBalancer`, `Listener`, `TargetHealthDescription`, `TargetGroupAttribute`).
//!
//! Input rules ELBv2 enforces on the wire (health check ranges, one forward action per
//! listener) are checked here; the balancer checks the rest. Its errors carry their ELBv2
//! codes ([`lb::LbError::code`]).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use lb::{
    HealthCheck, ListenerConfig, ListenerSpec, LoadBalancerConfig, LoadBalancerSpec,
    LoadBalancerType, Matcher, Protocol, Target, TargetGroupAttributes, TargetGroupInfo,
    TargetGroupQuery, TargetGroupSpec, TargetHealth,
};

use crate::query::{Params, QueryFault, QueryRequest, XmlWriter};
use crate::server::ApiState;

pub(crate) const VERSION: &str = "2015-12-01";
pub(crate) const SIGNING_NAME: &str = "elasticloadbalancing";
pub(crate) const NAMESPACE: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";

type Outcome = Result<XmlWriter, QueryFault>;

/// Serves one ELBv2 action.
pub(crate) async fn handle(state: &ApiState, request: &QueryRequest) -> Outcome {
    let b = &state.balancer;
    let p = request.params();
    let span = tracing::debug_span!("elbv2", action = %request.action);
    let _entered = span.enter();
    let outcome = match request.action.as_str() {
        "CreateTargetGroup" => {
            let group = b.create_target_group(target_group_spec(&p)?).await.map_err(fault)?;
            Ok(target_groups(&[group]))
        }
        "DescribeTargetGroups" => {
            let query = TargetGroupQuery {
                arns: p.strings("TargetGroupArns"),
                names: p.strings("Names"),
                load_balancer_arn: p.get("LoadBalancerArn").map(str::to_owned),
            };
            Ok(target_groups(&b.describe_target_groups(&query).await.map_err(fault)?))
        }
        "DeleteTargetGroup" => {
            b.delete_target_group(p.required("TargetGroupArn")?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        "DescribeTargetGroupAttributes" => {
            let attrs = b.target_group_attributes(p.required("TargetGroupArn")?).await.map_err(fault)?;
            Ok(attributes(&attrs))
        }
        "ModifyTargetGroupAttributes" => {
            let arn = p.required("TargetGroupArn")?;
            let mut pairs = Vec::new();
            for attr in p.structs("Attributes") {
                pairs.push((attr.required("Key")?.to_owned(), attr.get("Value").unwrap_or_default().to_owned()));
            }
            if pairs.is_empty() {
                return Err(QueryFault::validation("Attributes must name at least one attribute: e.g. Key=deregistration_delay.timeout_seconds,Value=30"));
            }
            Ok(attributes(&b.modify_target_group_attributes(arn, &pairs).await.map_err(fault)?))
        }
        "RegisterTargets" => {
            let arn = p.required("TargetGroupArn")?;
            let group = b.target_group(arn).await.map_err(fault)?
                .ok_or_else(|| fault(lb::LbError::TargetGroupNotFound { arn: arn.to_owned() }))?;
            b.register_targets(arn, &targets(&p, group.port)?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        "DeregisterTargets" => {
            let arn = p.required("TargetGroupArn")?;
            let group = b.target_group(arn).await.map_err(fault)?
                .ok_or_else(|| fault(lb::LbError::TargetGroupNotFound { arn: arn.to_owned() }))?;
            b.deregister_targets(arn, &targets(&p, group.port)?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        "DescribeTargetHealth" => {
            let arn = p.required("TargetGroupArn")?;
            let group = b.target_group(arn).await.map_err(fault)?
                .ok_or_else(|| fault(lb::LbError::TargetGroupNotFound { arn: arn.to_owned() }))?;
            let wanted = if p.structs("Targets").is_empty() { None } else { Some(targets(&p, group.port)?) };
            let health = b.describe_target_health(arn, wanted.as_deref()).await.map_err(fault)?;
            Ok(target_health(&health, &group))
        }
        "CreateLoadBalancer" => {
            let lb = b.create_load_balancer(load_balancer_spec(&p)?).await.map_err(fault)?;
            Ok(load_balancers(&[lb], state))
        }
        "DescribeLoadBalancers" => {
            let lbs = b
                .describe_load_balancers(&p.strings("LoadBalancerArns"), &p.strings("Names"))
                .await
                .map_err(fault)?;
            Ok(load_balancers(&lbs, state))
        }
        "DeleteLoadBalancer" => {
            b.delete_load_balancer(p.required("LoadBalancerArn")?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        "CreateListener" => {
            let listener = b.create_listener(listener_spec(state, &p).await?).await.map_err(fault)?;
            Ok(listeners(&[listener]))
        }
        "DescribeListeners" => {
            let lb_arn = p.get("LoadBalancerArn");
            let arns = p.strings("ListenerArns");
            if lb_arn.is_none() && arns.is_empty() {
                return Err(QueryFault::validation("give LoadBalancerArn or ListenerArns"));
            }
            Ok(listeners(&b.describe_listeners(lb_arn, &arns).await.map_err(fault)?))
        }
        "DeleteListener" => {
            b.delete_listener(p.required("ListenerArn")?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        other => Err(QueryFault::new(
            400,
            "InvalidAction",
            format!("ELBv2 action {other} is not supported by Skiff: see docs/load-balancing.md for the supported subset"),
        )),
    };
    if let Err(f) = &outcome {
        if f.status >= 500 {
            tracing::error!(action = %request.action, error = %f.message, "ELBv2 action failed");
        } else {
            tracing::debug!(action = %request.action, code = f.code, "ELBv2 action refused");
        }
    }
    outcome
}

fn fault(error: lb::LbError) -> QueryFault {
    QueryFault::new(
        error.http_status(),
        error.code(),
        model::error_chain(&error),
    )
}

fn protocol(value: &str) -> Result<Protocol, QueryFault> {
    Protocol::parse(value).map_err(fault)
}

/// A number in `range`, or the default.
fn ranged(
    p: &Params<'_>,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, QueryFault> {
    let expected = "a whole number";
    match p.parsed::<u32>(name, expected)? {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v),
        Some(v) => Err(QueryFault::validation(format!(
            "{name} is {v}: it must be from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

fn target_group_spec(p: &Params<'_>) -> Result<TargetGroupSpec, QueryFault> {
    let name = p.required("Name")?.to_owned();
    let protocol = protocol(p.get("Protocol").unwrap_or("HTTP"))?;
    let port = p
        .parsed::<u16>("Port", "a port from 1 to 65535")?
        .ok_or_else(|| {
            QueryFault::validation(
                "Port is required for an ip target group: give the port targets listen on",
            )
        })?;
    let mut hc = HealthCheck::defaults(protocol);
    if let Some(value) = p.get("HealthCheckProtocol") {
        hc.protocol = self::protocol(value)?;
    }
    if p.parsed::<bool>("HealthCheckEnabled", "true or false")? == Some(false) {
        return Err(QueryFault::validation("HealthCheckEnabled=false is not supported: Skiff routes by health, so every target group is health checked"));
    }
    hc.port = match p.get("HealthCheckPort") {
        None | Some("traffic-port") => None,
        Some(value) => Some(
            value
                .parse()
                .ok()
                .filter(|port: &u16| *port > 0)
                .ok_or_else(|| {
                    QueryFault::validation(format!(
                        "HealthCheckPort {value:?} must be traffic-port or a port from 1 to 65535"
                    ))
                })?,
        ),
    };
    if let Some(path) = p.get("HealthCheckPath") {
        hc.path = path.to_owned();
    }
    let interval = ranged(p, "HealthCheckIntervalSeconds", 5..=300, secs(hc.interval))?;
    let timeout = ranged(
        p,
        "HealthCheckTimeoutSeconds",
        2..=120,
        secs(hc.timeout).min(interval.saturating_sub(1)).max(2),
    )?;
    hc.interval = Duration::from_secs(interval.into());
    hc.timeout = Duration::from_secs(timeout.into());
    hc.healthy_threshold = ranged(p, "HealthyThresholdCount", 2..=10, hc.healthy_threshold)?;
    hc.unhealthy_threshold = ranged(p, "UnhealthyThresholdCount", 2..=10, hc.unhealthy_threshold)?;
    if let Some(code) = p.nested("Matcher").get("HttpCode") {
        hc.matcher = Matcher::parse(code).map_err(fault)?;
    }
    Ok(TargetGroupSpec {
        name,
        protocol,
        port,
        vpc_id: p.get("VpcId").map(str::to_owned),
        target_type: p.get("TargetType").map(str::to_owned),
        health_check: hc,
    })
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

fn targets(p: &Params<'_>, default_port: u16) -> Result<Vec<Target>, QueryFault> {
    let structs = p.structs("Targets");
    if structs.is_empty() {
        return Err(QueryFault::validation(
            "Targets must list at least one target: Id=<task IPv4 address>,Port=<port>",
        ));
    }
    structs
        .iter()
        .map(|t| {
            Ok(Target {
                id: t.required("Id")?.to_owned(),
                port: t
                    .parsed::<u16>("Port", "a port from 1 to 65535")?
                    .unwrap_or(default_port),
            })
        })
        .collect()
}

fn load_balancer_spec(p: &Params<'_>) -> Result<LoadBalancerSpec, QueryFault> {
    let lb_type = match p.get("Type").unwrap_or("application") {
        "application" => LoadBalancerType::Application,
        "network" => LoadBalancerType::Network,
        other => {
            return Err(QueryFault::validation(format!(
                "load balancer type {other:?} is not supported: use application (HTTP) or network (TCP)"
            )))
        }
    };
    let scheme = p.get("Scheme").map(str::to_owned);
    if let Some(s) = &scheme {
        if s != "internet-facing" && s != "internal" {
            return Err(QueryFault::validation(format!(
                "Scheme {s:?} must be internet-facing or internal"
            )));
        }
    }
    let mut subnets = p.strings("Subnets");
    subnets.extend(
        p.structs("SubnetMappings")
            .iter()
            .filter_map(|m| m.get("SubnetId").map(str::to_owned)),
    );
    Ok(LoadBalancerSpec {
        name: p.required("Name")?.to_owned(),
        lb_type,
        scheme,
        subnets,
        security_groups: p.strings("SecurityGroups"),
    })
}

async fn listener_spec(state: &ApiState, p: &Params<'_>) -> Result<ListenerSpec, QueryFault> {
    let lb_arn = p.required("LoadBalancerArn")?;
    let port = p
        .parsed::<u16>("Port", "a port from 1 to 65535")?
        .ok_or_else(|| {
            QueryFault::validation(
                "Port is required: give the port the listener accepts connections on",
            )
        })?;
    let actions = p.structs("DefaultActions");
    let [action] = actions.as_slice() else {
        return Err(QueryFault::validation(
            "DefaultActions must hold exactly one action: Type=forward,TargetGroupArn=<arn>",
        ));
    };
    if action.required("Type")? != "forward" {
        return Err(QueryFault::new(
            400,
            "InvalidLoadBalancerAction",
            "only forward actions are supported: Type=forward,TargetGroupArn=<arn>",
        ));
    }
    let forwarded: Vec<&str> = action
        .nested("ForwardConfig")
        .structs("TargetGroups")
        .iter()
        .filter_map(|g| g.get("TargetGroupArn"))
        .collect();
    let target_group_arn = match (action.get("TargetGroupArn"), forwarded.as_slice()) {
        (Some(arn), []) => arn,
        (None, [arn]) => arn,
        (Some(arn), [other]) if arn == *other => arn,
        _ => {
            return Err(QueryFault::validation(
                "a forward action must name exactly one target group (weighted forwarding is not supported)",
            ))
        }
    };
    let protocol = match p.get("Protocol") {
        Some(value) => protocol(value)?,
        None => {
            let lbs = state
                .balancer
                .describe_load_balancers(&[lb_arn.to_owned()], &[])
                .await
                .map_err(fault)?;
            lbs.first()
                .map(|lb| lb.lb_type.listener_protocol())
                .unwrap_or(Protocol::Http)
        }
    };
    Ok(ListenerSpec {
        load_balancer_arn: lb_arn.to_owned(),
        protocol,
        port,
        target_group_arn: target_group_arn.to_owned(),
    })
}

// --- result shapes ----------------------------------------------------------------------

fn target_groups(groups: &[TargetGroupInfo]) -> XmlWriter {
    let mut w = XmlWriter::new();
    w.list("TargetGroups", groups, |w, g| {
        let hc = &g.health_check;
        w.text("TargetGroupArn", &g.arn)
            .text("TargetGroupName", &g.name)
            .text("Protocol", g.protocol)
            .text("Port", g.port)
            .optional("VpcId", g.vpc_id.as_ref())
            .text("HealthCheckProtocol", hc.protocol)
            .text(
                "HealthCheckPort",
                hc.port.map_or("traffic-port".to_owned(), |p| p.to_string()),
            )
            .text("HealthCheckEnabled", true)
            .text("HealthCheckIntervalSeconds", hc.interval.as_secs())
            .text("HealthCheckTimeoutSeconds", hc.timeout.as_secs())
            .text("HealthyThresholdCount", hc.healthy_threshold)
            .text("UnhealthyThresholdCount", hc.unhealthy_threshold);
        if hc.protocol == Protocol::Http {
            w.text("HealthCheckPath", &hc.path)
                .structure("Matcher", |w| {
                    w.text("HttpCode", hc.matcher.as_str());
                });
        }
        w.text_list("LoadBalancerArns", &g.load_balancer_arns)
            .text("TargetType", &g.target_type);
        if g.protocol == Protocol::Http {
            w.text("ProtocolVersion", "HTTP1");
        }
        w.text("IpAddressType", "ipv4");
    });
    w
}

fn attributes(attrs: &TargetGroupAttributes) -> XmlWriter {
    let mut w = XmlWriter::new();
    w.list("Attributes", attrs.to_pairs(), |w, (key, value)| {
        w.text("Key", key).text("Value", value);
    });
    w
}

fn target_health(health: &[TargetHealth], group: &TargetGroupInfo) -> XmlWriter {
    let mut w = XmlWriter::new();
    w.list("TargetHealthDescriptions", health, |w, h| {
        w.structure("Target", |w| {
            w.text("Id", &h.target.id).text("Port", h.target.port);
        })
        .text(
            "HealthCheckPort",
            group.health_check.port.unwrap_or(h.target.port),
        )
        .structure("TargetHealth", |w| {
            w.text("State", h.state.as_str())
                .optional("Reason", h.reason.map(|r| r.as_str()))
                .optional(
                    "Description",
                    h.description
                        .as_deref()
                        .or(h.reason.map(|r| r.description())),
                );
        });
    });
    w
}

fn load_balancers(lbs: &[LoadBalancerConfig], state: &ApiState) -> XmlWriter {
    let address = state.balancer.address().to_string();
    let mut w = XmlWriter::new();
    w.list("LoadBalancers", lbs, |w, lb| {
        let created = DateTime::from_timestamp_millis(lb.created_at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        w.text("LoadBalancerArn", &lb.arn)
            .text("DNSName", &lb.dns_name)
            .text("CanonicalHostedZoneId", "ZSKIFFLOCAL")
            .text("CreatedTime", created)
            .text("LoadBalancerName", &lb.name)
            .text("Scheme", &lb.scheme)
            .structure("State", |w| {
                w.text("Code", "active");
            })
            .text("Type", lb.lb_type.as_str());
        // Every listener binds the balancer's one address: shown as each zone's address.
        let zones: Vec<Option<&String>> = if lb.subnets.is_empty() {
            vec![None]
        } else {
            lb.subnets.iter().map(Some).collect()
        };
        w.list(
            "AvailabilityZones",
            zones.iter().enumerate(),
            |w, (i, subnet)| {
                let zone = format!("{}{}", state.region, char::from(b'a' + (i % 26) as u8));
                w.text("ZoneName", zone).optional("SubnetId", *subnet).list(
                    "LoadBalancerAddresses",
                    [&address],
                    |w, ip| {
                        w.text("IpAddress", ip);
                    },
                );
            },
        );
        if lb.lb_type == LoadBalancerType::Application {
            w.text_list("SecurityGroups", &lb.security_groups);
        }
        w.text("IpAddressType", "ipv4");
    });
    w
}

fn listeners(listeners: &[ListenerConfig]) -> XmlWriter {
    let mut w = XmlWriter::new();
    w.list("Listeners", listeners, |w, l| {
        w.text("ListenerArn", &l.arn)
            .text("LoadBalancerArn", &l.load_balancer_arn)
            .text("Port", l.port)
            .text("Protocol", l.protocol)
            .list("DefaultActions", [l], |w, l| {
                w.text("Type", "forward")
                    .text("TargetGroupArn", &l.target_group_arn)
                    .structure("ForwardConfig", |w| {
                        w.list("TargetGroups", [l], |w, l| {
                            w.text("TargetGroupArn", &l.target_group_arn)
                                .text("Weight", 1);
                        })
                        .structure("TargetGroupStickinessConfig", |w| {
                            w.text("Enabled", false);
                        });
                    });
            });
    });
    w
}
