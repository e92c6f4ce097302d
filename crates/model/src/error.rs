//! The ECS error shapes. Each variant is one `__type` of botocore's ECS model; the
//! message is what the user reads, so it says what was wrong and what to do.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EcsError {
    #[error("{0}")]
    Client(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    ClusterNotFound(String),
    #[error("{0}")]
    ClusterContainsTasks(String),
    #[error("{0}")]
    ClusterContainsServices(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ServiceNotFound(String),
    #[error("{0}")]
    ServiceNotActive(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    UnsupportedFeature(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Server(String),
}

impl EcsError {
    /// The `__type` this error has on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            EcsError::Client(_) => "ClientException",
            EcsError::InvalidParameter(_) => "InvalidParameterException",
            EcsError::ClusterNotFound(_) => "ClusterNotFoundException",
            EcsError::ClusterContainsTasks(_) => "ClusterContainsTasksException",
            EcsError::ClusterContainsServices(_) => "ClusterContainsServicesException",
            EcsError::ResourceNotFound(_) => "ResourceNotFoundException",
            EcsError::ServiceNotFound(_) => "ServiceNotFoundException",
            EcsError::ServiceNotActive(_) => "ServiceNotActiveException",
            EcsError::ResourceInUse(_) => "ResourceInUseException",
            EcsError::Conflict(_) => "ConflictException",
            EcsError::LimitExceeded(_) => "LimitExceededException",
            EcsError::UnsupportedFeature(_) => "UnsupportedFeatureException",
            EcsError::AccessDenied(_) => "AccessDeniedException",
            EcsError::Server(_) => "ServerException",
        }
    }

    /// The HTTP status: 500 for the server's own faults, 400 for everything the client
    /// can correct.
    pub fn http_status(&self) -> u16 {
        match self {
            EcsError::Server(_) => 500,
            _ => 400,
        }
    }

    pub fn cluster_not_found() -> Self {
        EcsError::ClusterNotFound(
            "Cluster not found. Create it with CreateCluster, or check the name with ListClusters."
                .into(),
        )
    }
}
