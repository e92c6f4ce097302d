//! What the balancer is told to do: target groups, load balancers and listeners as the
//! user specifies them (`*Spec`), validated into the records persisted in the store
//! (`*Config`), and the ARNs and DNS names that identify them.
//!
//! ```text
//! arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<16 hex>
//! arn:aws:elasticloadbalancing:<region>:<account>:loadbalancer/app|net/<name>/<16 hex>
//! arn:aws:elasticloadbalancing:<region>:<account>:listener/app|net/<lb name>/<lb id>/<16 hex>
//! <name>-<16 hex>.<region>.elb.localhost                       (a load balancer's DNS name)
//! ```

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use model::arn::Scope;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::LbError;

/// Default `deregistration_delay.timeout_seconds`, as in ELBv2.
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(300);
/// Longest `deregistration_delay.timeout_seconds` ELBv2 accepts.
const MAX_DEREGISTRATION_DELAY_SECONDS: u64 = 3600;

/// A listener's or target group's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Tcp => "TCP",
        }
    }

    /// Parses an ELBv2 protocol name; only HTTP and TCP are served.
    pub fn parse(value: &str) -> Result<Self, LbError> {
        match value {
            "HTTP" => Ok(Protocol::Http),
            "TCP" => Ok(Protocol::Tcp),
            _ => Err(LbError::UnsupportedProtocol {
                protocol: value.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of load balancer: HTTP (application) or TCP (network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerType {
    Application,
    Network,
}

impl LoadBalancerType {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancerType::Application => "application",
            LoadBalancerType::Network => "network",
        }
    }

    /// The protocol this type's listeners speak.
    pub fn listener_protocol(self) -> Protocol {
        match self {
            LoadBalancerType::Application => Protocol::Http,
            LoadBalancerType::Network => Protocol::Tcp,
        }
    }

    fn arn_segment(self) -> &'static str {
        match self {
            LoadBalancerType::Application => "app",
            LoadBalancerType::Network => "net",
        }
    }
}

/// How a target group picks a target for each request (or connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
        }
    }
}

/// A registered target: an IPv4 address (a task's private IP) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub id: String,
    pub port: u16,
}

impl Target {
    /// The socket address traffic goes to; the id must be an IPv4 literal.
    pub fn socket_addr(&self) -> Result<SocketAddr, LbError> {
        let ip: Ipv4Addr = self.id.parse().map_err(|_| LbError::InvalidTarget {
            id: self.id.clone(),
            reason: "the id is not an IPv4 address: Skiff's target groups hold ip targets, register the task's private IPv4 address",
        })?;
        if self.port == 0 {
            return Err(LbError::InvalidTarget {
                id: self.id.clone(),
                reason: "port 0 is not a valid target port: give a port from 1 to 65535",
            });
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, self.port)))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.port)
    }
}

/// Which HTTP status codes count as a passed health check: "200", "200,202", "200-299".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Matcher {
    text: String,
    ranges: Vec<(u16, u16)>,
}

impl Matcher {
    pub fn parse(value: &str) -> Result<Self, LbError> {
        let invalid = || LbError::InvalidMatcher {
            value: value.to_owned(),
        };
        let code = |s: &str| -> Result<u16, LbError> {
            let code: u16 = s.trim().parse().map_err(|_| invalid())?;
            if (200..=499).contains(&code) {
                Ok(code)
            } else {
                Err(invalid())
            }
        };
        let mut ranges = Vec::new();
        for part in value.split(',') {
            let range = match part.split_once('-') {
                Some((low, high)) => (code(low)?, code(high)?),
                None => (code(part)?, code(part)?),
            };
            if range.0 > range.1 {
                return Err(invalid());
            }
            ranges.push(range);
        }
        Ok(Matcher {
            text: value.to_owned(),
            ranges,
        })
    }

    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            text: "200".into(),
            ranges: vec![(200, 200)],
        }
    }
}

impl TryFrom<String> for Matcher {
    type Error = LbError;
    fn try_from(value: String) -> Result<Self, LbError> {
        Matcher::parse(&value)
    }
}

impl From<Matcher> for String {
    fn from(matcher: Matcher) -> String {
        matcher.text
    }
}

/// How a target group checks its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// HTTP: `GET path` must answer a status the matcher accepts; TCP: a connect must
    /// succeed.
    pub protocol: Protocol,
    /// The port checked; `None` is the target's own port ("traffic-port").
    pub port: Option<u16>,
    pub path: String,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

impl HealthCheck {
    /// ELBv2's defaults for a target group of `protocol`.
    pub fn defaults(protocol: Protocol) -> Self {
        HealthCheck {
            protocol,
            port: None,
            path: "/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(match protocol {
                Protocol::Http => 5,
                Protocol::Tcp => 10,
            }),
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            matcher: Matcher::default(),
        }
    }

    fn validate(&self) -> Result<(), LbError> {
        let invalid = |reason: &str| {
            Err(LbError::InvalidHealthCheck {
                reason: reason.to_owned(),
            })
        };
        if self.interval.is_zero() || self.timeout.is_zero() {
            return invalid("the interval and the timeout must be positive");
        }
        if self.timeout >= self.interval {
            return invalid("the timeout must be shorter than the interval");
        }
        if !(1..=10).contains(&self.healthy_threshold)
            || !(1..=10).contains(&self.unhealthy_threshold)
        {
            return invalid("the healthy and unhealthy threshold counts must be from 1 to 10");
        }
        if self.protocol == Protocol::Http && !self.path.starts_with('/') {
            return invalid("the health check path must start with '/'");
        }
        Ok(())
    }
}

/// The target group attributes Skiff honours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroupAttributes {
    #[serde(with = "millis")]
    pub deregistration_delay: Duration,
    pub algorithm: Algorithm,
}

impl Default for TargetGroupAttributes {
    fn default() -> Self {
        TargetGroupAttributes {
            deregistration_delay: DEFAULT_DEREGISTRATION_DELAY,
            algorithm: Algorithm::RoundRobin,
        }
    }
}

pub const ATTR_DEREGISTRATION_DELAY: &str = "deregistration_delay.timeout_seconds";
pub const ATTR_ALGORITHM: &str = "load_balancing.algorithm.type";

impl TargetGroupAttributes {
    /// The attributes as ELBv2's key/value pairs.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        vec![
            (
                ATTR_DEREGISTRATION_DELAY.into(),
                self.deregistration_delay.as_secs().to_string(),
            ),
            (ATTR_ALGORITHM.into(), self.algorithm.as_str().into()),
        ]
    }

    /// Applies ELBv2 key/value pairs; nothing changes if any pair is invalid.
    pub fn apply(&self, pairs: &[(String, String)]) -> Result<Self, LbError> {
        let mut next = self.clone();
        for (key, value) in pairs {
            let invalid = |expected| LbError::InvalidAttribute {
                key: key.clone(),
                value: value.clone(),
                expected,
            };
            match key.as_str() {
                ATTR_DEREGISTRATION_DELAY => {
                    let seconds: u64 = value
                        .parse()
                        .ok()
                        .filter(|s| *s <= MAX_DEREGISTRATION_DELAY_SECONDS)
                        .ok_or_else(|| invalid("a number of seconds from 0 to 3600"))?;
                    next.deregistration_delay = Duration::from_secs(seconds);
                }
                ATTR_ALGORITHM => {
                    next.algorithm = match value.as_str() {
                        "round_robin" => Algorithm::RoundRobin,
                        "least_outstanding_requests" => Algorithm::LeastOutstandingRequests,
                        _ => return Err(invalid("round_robin or least_outstanding_requests")),
                    }
                }
                _ => return Err(LbError::UnknownAttribute { key: key.clone() }),
            }
        }
        Ok(next)
    }
}

/// A target group as the user asks for it.
#[derive(Debug, Clone)]
pub struct TargetGroupSpec {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub vpc_id: Option<String>,
    /// Only `ip` is supported; `None` means `ip`.
    pub target_type: Option<String>,
    pub health_check: HealthCheck,
}

/// A target group as persisted under `elb/target-groups/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroupConfig {
    pub arn: String,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub vpc_id: Option<String>,
    pub target_type: String,
    pub health_check: HealthCheck,
    pub attributes: TargetGroupAttributes,
    pub targets: Vec<Target>,
}

impl TargetGroupSpec {
    pub(crate) fn into_config(self, scope: &Scope) -> Result<TargetGroupConfig, LbError> {
        validate_name("target group", &self.name)?;
        let target_type = self.target_type.unwrap_or_else(|| "ip".into());
        if target_type != "ip" {
            return Err(LbError::UnsupportedTargetType { value: target_type });
        }
        if self.port == 0 {
            return Err(LbError::InvalidPort {
                what: "target group",
            });
        }
        self.health_check.validate()?;
        Ok(TargetGroupConfig {
            arn: format!(
                "{}:targetgroup/{}/{}",
                arn_prefix(scope),
                self.name,
                random_id()
            ),
            name: self.name,
            protocol: self.protocol,
            port: self.port,
            vpc_id: self.vpc_id,
            target_type,
            health_check: self.health_check,
            attributes: TargetGroupAttributes::default(),
            targets: Vec::new(),
        })
    }
}

/// A load balancer as the user asks for it.
#[derive(Debug, Clone)]
pub struct LoadBalancerSpec {
    pub name: String,
    pub lb_type: LoadBalancerType,
    pub scheme: Option<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
}

/// A load balancer as persisted under `elb/load-balancers/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerConfig {
    pub arn: String,
    pub name: String,
    pub lb_type: LoadBalancerType,
    pub scheme: String,
    pub dns_name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
}

impl LoadBalancerSpec {
    pub(crate) fn into_config(self, scope: &Scope) -> Result<LoadBalancerConfig, LbError> {
        validate_name("load balancer", &self.name)?;
        if self.name.starts_with("internal-") {
            return Err(LbError::InvalidName {
                kind: "load balancer",
                name: self.name,
            });
        }
        let id = random_id();
        Ok(LoadBalancerConfig {
            arn: format!(
                "{}:loadbalancer/{}/{}/{id}",
                arn_prefix(scope),
                self.lb_type.arn_segment(),
                self.name
            ),
            dns_name: format!("{}-{id}.{}.elb.localhost", self.name, scope.region),
            name: self.name,
            lb_type: self.lb_type,
            scheme: self.scheme.unwrap_or_else(|| "internet-facing".into()),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            subnets: self.subnets,
            security_groups: self.security_groups,
        })
    }
}

/// A listener as the user asks for it: a port and the target group it forwards to.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub load_balancer_arn: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_group_arn: String,
}

/// A listener as persisted under `elb/listeners/<port>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    pub arn: String,
    pub load_balancer_arn: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_group_arn: String,
}

impl ListenerConfig {
    pub(crate) fn new(spec: ListenerSpec, lb: &LoadBalancerConfig) -> Self {
        // listener/<type>/<lb name>/<lb id>/<listener id>
        let lb_path = lb
            .arn
            .split_once(":loadbalancer/")
            .map(|(_, path)| path)
            .unwrap_or_default();
        let prefix = lb.arn.split_once(":loadbalancer/").map(|(p, _)| p);
        ListenerConfig {
            arn: format!(
                "{}:listener/{lb_path}/{}",
                prefix.unwrap_or_default(),
                random_id()
            ),
            load_balancer_arn: spec.load_balancer_arn,
            protocol: spec.protocol,
            port: spec.port,
            target_group_arn: spec.target_group_arn,
        }
    }
}

fn arn_prefix(scope: &Scope) -> String {
    format!(
        "arn:aws:elasticloadbalancing:{}:{}",
        scope.region, scope.account
    )
}

/// The resource name inside a target group or load balancer ARN.
pub(crate) fn name_in_arn<'a>(arn: &'a str, resource: &str) -> Option<&'a str> {
    let (_, path) = arn.split_once(&format!(":{resource}/"))?;
    let mut parts = path.split('/');
    if resource == "loadbalancer" {
        parts.next()?;
    }
    parts.next().filter(|name| !name.is_empty())
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), LbError> {
    let valid = (1..=32).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(LbError::InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Durations persisted as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            region: "us-east-1".into(),
            account: "000000000000".into(),
        }
    }

    #[test]
    fn matcher_accepts_codes_lists_and_ranges() {
        let m = Matcher::parse("200-299,404").unwrap();
        assert!(m.matches(200) && m.matches(299) && m.matches(404));
        assert!(!m.matches(300) && !m.matches(500));
        assert!(Matcher::parse("200").unwrap().matches(200));
        for bad in ["", "abc", "100", "299-200", "200-600"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arns_and_names() {
        let tg = TargetGroupSpec {
            name: "web".into(),
            protocol: Protocol::Http,
            port: 80,
            vpc_id: None,
            target_type: None,
            health_check: HealthCheck::defaults(Protocol::Http),
        }
        .into_config(&scope())
        .unwrap();
        assert!(tg
            .arn
            .starts_with("arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/web/"));
        assert_eq!(name_in_arn(&tg.arn, "targetgroup"), Some("web"));

        let lb = LoadBalancerSpec {
            name: "web-lb".into(),
            lb_type: LoadBalancerType::Network,
            scheme: None,
            subnets: vec![],
            security_groups: vec![],
        }
        .into_config(&scope())
        .unwrap();
        assert!(lb.arn.contains(":loadbalancer/net/web-lb/"));
        assert_eq!(name_in_arn(&lb.arn, "loadbalancer"), Some("web-lb"));
        assert!(lb.dns_name.ends_with(".us-east-1.elb.localhost"));
        let listener = ListenerConfig::new(
            ListenerSpec {
                load_balancer_arn: lb.arn.clone(),
                protocol: Protocol::Tcp,
                port: 9000,
                target_group_arn: tg.arn.clone(),
            },
            &lb,
        );
        let lb_path = lb.arn.split_once(":loadbalancer/").unwrap().1;
        assert!(listener.arn.contains(&format!(":listener/{lb_path}/")));

        for bad in ["", "-web", "web-", "web_1", &"x".repeat(33)] {
            assert!(validate_name("target group", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes_apply_all_or_nothing() {
        let attrs = TargetGroupAttributes::default();
        let next = attrs
            .apply(&[
                (ATTR_DEREGISTRATION_DELAY.into(), "5".into()),
                (ATTR_ALGORITHM.into(), "least_outstanding_requests".into()),
            ])
            .unwrap();
        assert_eq!(next.deregistration_delay, Duration::from_secs(5));
        assert_eq!(next.algorithm, Algorithm::LeastOutstandingRequests);
        assert!(attrs
            .apply(&[(ATTR_ALGORITHM.into(), "random".into())])
            .is_err());
        assert!(matches!(
            attrs.apply(&[("stickiness.enabled".into(), "true".into())]),
            Err(LbError::UnknownAttribute { .. })
        ));
    }

    #[test]
    fn health_check_rules() {
        let mut hc = HealthCheck::defaults(Protocol::Http);
        assert!(hc.validate().is_ok());
        hc.timeout = hc.interval;
        assert!(hc.validate().is_err());
        let mut hc = HealthCheck::defaults(Protocol::Http);
        hc.path = "health".into();
        assert!(hc.validate().is_err());
    }
}
