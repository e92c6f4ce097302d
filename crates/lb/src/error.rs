//! The balancer's error type. Each variant knows the ELBv2 error code it is reported
//! under on the wire ([`LbError::code`]) and its HTTP status, so the API layer renders
//! it without a mapping table of its own.

use std::net::SocketAddr;

/// Everything the balancer's management API and data plane can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("target group {arn} not found: check the ARN, or list target groups with `aws elbv2 describe-target-groups`")]
    TargetGroupNotFound { arn: String },

    #[error("load balancer {arn} not found: check the ARN, or list load balancers with `aws elbv2 describe-load-balancers`")]
    LoadBalancerNotFound { arn: String },

    #[error("listener {arn} not found: check the ARN, or list the load balancer's listeners with `aws elbv2 describe-listeners`")]
    ListenerNotFound { arn: String },

    #[error(
        "a target group named {name} already exists: pick another name or delete the existing one"
    )]
    DuplicateTargetGroupName { name: String },

    #[error(
        "a load balancer named {name} already exists: pick another name or delete the existing one"
    )]
    DuplicateLoadBalancerName { name: String },

    #[error("the load balancer already has a listener on port {port}: use another port or delete that listener")]
    DuplicateListener { port: u16 },

    #[error("port {port} is already used by listener {listener_arn}: every Skiff listener shares one address, so pick a port no other listener uses")]
    PortTaken { port: u16, listener_arn: String },

    #[error("cannot listen on {address}: is another program using that port? pick another listener port")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("target group {arn} is in use by listener {listener_arn}: delete the listener (or its load balancer) first")]
    TargetGroupInUse { arn: String, listener_arn: String },

    #[error("invalid {kind} name {name:?}: use 1 to 32 letters, digits and hyphens, not starting or ending with a hyphen")]
    InvalidName { kind: &'static str, name: String },

    #[error("port 0 is not a valid {what} port: give a port from 1 to 65535")]
    InvalidPort { what: &'static str },

    #[error("protocol {protocol} is not supported by Skiff's load balancer: use HTTP (application) or TCP (network)")]
    UnsupportedProtocol { protocol: String },

    #[error(
        "a listener of a {lb_type} load balancer cannot use protocol {protocol}: use {expected}"
    )]
    ListenerProtocol {
        lb_type: &'static str,
        protocol: &'static str,
        expected: &'static str,
    },

    #[error("listener protocol {listener} cannot forward to target group {arn} whose protocol is {target_group}: use a target group with protocol {listener}")]
    IncompatibleProtocols {
        listener: &'static str,
        target_group: &'static str,
        arn: String,
    },

    #[error("target type {value:?} is not supported: Skiff's tasks are registered by IP, use --target-type ip")]
    UnsupportedTargetType { value: String },

    #[error("invalid health check: {reason}")]
    InvalidHealthCheck { reason: String },

    #[error("invalid health check matcher {value:?}: use HTTP codes 200-499 as a single code (200), a list (200,202) or a range (200-299)")]
    InvalidMatcher { value: String },

    #[error("unknown target group attribute {key:?}: Skiff supports deregistration_delay.timeout_seconds and load_balancing.algorithm.type")]
    UnknownAttribute { key: String },

    #[error("invalid value {value:?} for attribute {key}: expected {expected}")]
    InvalidAttribute {
        key: String,
        value: String,
        expected: &'static str,
    },

    #[error("invalid target {id}: {reason}")]
    InvalidTarget { id: String, reason: &'static str },

    #[error("the load balancer state store failed")]
    Store(#[from] store::StoreError),
}

impl LbError {
    /// The ELBv2 error code (the `<Code>` of the XML error response).
    pub fn code(&self) -> &'static str {
        match self {
            LbError::TargetGroupNotFound { .. } => "TargetGroupNotFound",
            LbError::LoadBalancerNotFound { .. } => "LoadBalancerNotFound",
            LbError::ListenerNotFound { .. } => "ListenerNotFound",
            LbError::DuplicateTargetGroupName { .. } => "DuplicateTargetGroupName",
            LbError::DuplicateLoadBalancerName { .. } => "DuplicateLoadBalancerName",
            LbError::DuplicateListener { .. } => "DuplicateListener",
            LbError::PortTaken { .. } | LbError::Bind { .. } => "InvalidConfigurationRequest",
            LbError::TargetGroupInUse { .. } => "ResourceInUse",
            LbError::UnsupportedProtocol { .. } | LbError::ListenerProtocol { .. } => {
                "UnsupportedProtocol"
            }
            LbError::IncompatibleProtocols { .. } => "IncompatibleProtocols",
            LbError::InvalidName { .. }
            | LbError::InvalidPort { .. }
            | LbError::UnsupportedTargetType { .. }
            | LbError::InvalidHealthCheck { .. }
            | LbError::InvalidMatcher { .. }
            | LbError::UnknownAttribute { .. }
            | LbError::InvalidAttribute { .. } => "ValidationError",
            LbError::InvalidTarget { .. } => "InvalidTarget",
            LbError::Store(_) => "InternalFailure",
        }
    }

    /// The HTTP status AWS answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            LbError::Store(_) => 500,
            _ => 400,
        }
    }
}
