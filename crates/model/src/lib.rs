//! Skiff's domain model: the ECS resources as they travel on the wire (botocore's ECS
//! shapes, camelCase JSON), the Fargate validation rules, resource names (ARNs and ids)
//! and the task state machine. Pure data and pure functions: no I/O.

pub mod agent;
pub mod arn;
pub mod cluster;
pub mod error;
pub mod ops;
pub mod service;
pub mod tag;
pub mod task;
pub mod task_definition;
pub mod validate;
pub mod vpc;

pub use error::EcsError;

/// Whether `name` is a valid cluster or service name: 1-255 letters, digits, hyphens
/// and underscores.
fn is_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Seconds since the Unix epoch, as ECS puts timestamps on the wire.
pub type Timestamp = f64;

/// An error and its sources on one line (`error: source: source...`), for a task's
/// `stoppedReason` or an API message where the chain must travel as text.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The current time as an ECS timestamp (millisecond precision).
pub fn now() -> Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (elapsed.as_millis() as f64) / 1000.0
}
