//! Amazon Resource Names for Skiff's resources and the identifiers users may give in
//! their place (a cluster name, a task id, `family:revision`).
//!
//! ```text
//! arn:aws:ecs:<region>:<account>:cluster/<name>
//! arn:aws:ecs:<region>:<account>:task-definition/<family>:<revision>
//! arn:aws:ecs:<region>:<account>:task/<cluster>/<32-hex id>
//! arn:aws:ecs:<region>:<account>:container/<cluster>/<task id>/<uuid>
//! arn:aws:ecs:<region>:<account>:service/<cluster>/<name>
//! ```

use rand::RngCore;

use crate::EcsError;

/// Where this installation's ARNs live: one region and one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub region: String,
    pub account: String,
}

impl Scope {
    fn prefix(&self) -> String {
        format!("arn:aws:ecs:{}:{}", self.region, self.account)
    }

    pub fn cluster(&self, name: &str) -> String {
        format!("{}:cluster/{name}", self.prefix())
    }

    pub fn task_definition(&self, family: &str, revision: u32) -> String {
        format!("{}:task-definition/{family}:{revision}", self.prefix())
    }

    pub fn task(&self, cluster: &str, task_id: &str) -> String {
        format!("{}:task/{cluster}/{task_id}", self.prefix())
    }

    pub fn service(&self, cluster: &str, name: &str) -> String {
        format!("{}:service/{cluster}/{name}", self.prefix())
    }

    pub fn container(&self, cluster: &str, task_id: &str, container_id: &str) -> String {
        format!(
            "{}:container/{cluster}/{task_id}/{container_id}",
            self.prefix()
        )
    }

    /// Parses any ECS ARN of this scope into the resource it names.
    pub fn parse(&self, arn: &str) -> Result<Resource, EcsError> {
        let invalid = || {
            EcsError::InvalidParameter(format!(
                "'{arn}' is not a valid ECS resource ARN of this endpoint (expected {}:<resource>).",
                self.prefix()
            ))
        };
        let rest = arn
            .strip_prefix(&self.prefix())
            .and_then(|r| r.strip_prefix(':'))
            .ok_or_else(invalid)?;
        let (kind, path) = rest.split_once('/').ok_or_else(invalid)?;
        let parts: Vec<&str> = path.split('/').collect();
        match (kind, parts.as_slice()) {
            ("cluster", [name]) if !name.is_empty() => Ok(Resource::Cluster(name.to_string())),
            ("task-definition", [family_rev]) => {
                let (family, revision) = family_rev.rsplit_once(':').ok_or_else(invalid)?;
                let revision = revision.parse().map_err(|_| invalid())?;
                Ok(Resource::TaskDefinition {
                    family: family.to_string(),
                    revision,
                })
            }
            ("task", [cluster, id]) => Ok(Resource::Task {
                cluster: cluster.to_string(),
                id: id.to_string(),
            }),
            ("service", [cluster, name]) => Ok(Resource::Service {
                cluster: cluster.to_string(),
                name: name.to_string(),
            }),
            _ => Err(invalid()),
        }
    }
}

/// A resource named by an ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Cluster(String),
    TaskDefinition { family: String, revision: u32 },
    Task { cluster: String, id: String },
    Service { cluster: String, name: String },
}

/// The name of a service given either by name or by ARN (`service/<cluster>/<name>`,
/// or the older `service/<name>`).
pub fn service_name(identifier: &str) -> &str {
    match identifier.split_once(":service/") {
        Some((_, path)) if identifier.starts_with("arn:") => {
            path.rsplit('/').next().unwrap_or(path)
        }
        _ => identifier,
    }
}

/// The name of a cluster given either by name or by ARN.
pub fn cluster_name(identifier: &str) -> &str {
    match identifier.split_once(":cluster/") {
        Some((_, name)) if identifier.starts_with("arn:") => name,
        _ => identifier,
    }
}

/// The id of a task given either by id or by ARN.
pub fn task_id(identifier: &str) -> &str {
    if identifier.starts_with("arn:") {
        identifier.rsplit('/').next().unwrap_or(identifier)
    } else {
        identifier
    }
}

/// How a task definition was named: `family`, `family:revision`, or a full ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionRef {
    pub family: String,
    /// None means the latest ACTIVE revision.
    pub revision: Option<u32>,
}

impl TaskDefinitionRef {
    pub fn parse(identifier: &str) -> Result<Self, EcsError> {
        let family_rev = match identifier.split_once(":task-definition/") {
            Some((_, rest)) if identifier.starts_with("arn:") => rest,
            _ => identifier,
        };
        let invalid = || {
            EcsError::Client(format!(
                "Invalid task definition '{identifier}': use family, family:revision or the task definition ARN."
            ))
        };
        match family_rev.rsplit_once(':') {
            Some((family, revision)) => {
                let revision: u32 = revision.parse().map_err(|_| invalid())?;
                if family.is_empty() || revision == 0 {
                    return Err(invalid());
                }
                Ok(Self {
                    family: family.to_string(),
                    revision: Some(revision),
                })
            }
            None if family_rev.is_empty() => Err(invalid()),
            None => Ok(Self {
                family: family_rev.to_string(),
                revision: None,
            }),
        }
    }
}

/// A fresh task id: 32 lower-case hex characters, as ECS's.
pub fn new_task_id() -> String {
    random_hex(16)
}

/// A fresh deployment id: `ecs-svc/` and 19 digits, as ECS's.
pub fn new_deployment_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let number = u64::from_le_bytes(bytes) % 9_000_000_000_000_000_000 + 1_000_000_000_000_000_000;
    format!("ecs-svc/{number}")
}

/// A fresh container id in UUID form.
pub fn new_uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
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
    fn arns_round_trip() {
        let s = scope();
        assert_eq!(
            s.parse(&s.cluster("demo")).unwrap(),
            Resource::Cluster("demo".into())
        );
        assert_eq!(
            s.parse(&s.task_definition("web", 3)).unwrap(),
            Resource::TaskDefinition {
                family: "web".into(),
                revision: 3
            }
        );
        let id = new_task_id();
        assert_eq!(
            s.parse(&s.task("demo", &id)).unwrap(),
            Resource::Task {
                cluster: "demo".into(),
                id: id.clone()
            }
        );
        assert!(s.parse("arn:aws:ecs:eu-west-1:1:cluster/x").is_err());
        assert!(s.parse("nonsense").is_err());
    }

    #[test]
    fn identifiers() {
        let s = scope();
        assert_eq!(cluster_name(&s.cluster("demo")), "demo");
        assert_eq!(cluster_name("demo"), "demo");
        assert_eq!(task_id(&s.task("demo", "abc")), "abc");
        assert_eq!(
            TaskDefinitionRef::parse("web:4").unwrap(),
            TaskDefinitionRef {
                family: "web".into(),
                revision: Some(4)
            }
        );
        assert_eq!(
            TaskDefinitionRef::parse(&s.task_definition("web", 2)).unwrap(),
            TaskDefinitionRef {
                family: "web".into(),
                revision: Some(2)
            }
        );
        assert_eq!(TaskDefinitionRef::parse("web").unwrap().revision, None);
        assert!(TaskDefinitionRef::parse("web:x").is_err());
        assert!(TaskDefinitionRef::parse("web:0").is_err());
    }

    #[test]
    fn ids_have_ecs_shape() {
        let id = new_task_id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(new_uuid().len(), 36);
    }
}
