//! The supervisor crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the supervisor and its helpers.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot read {path}: check that the task directory exists and is readable")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: check free space and permissions of the task directory")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for this version of skiff: it was written by an incompatible driver")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed supervisor protocol message")]
    Protocol(#[source] serde_json::Error),
    #[error("supervisor protocol version {got} is not supported (this build speaks {}): upgrade the older side", crate::protocol::PROTOCOL_VERSION)]
    ProtocolVersion { got: u32 },
    #[error("cannot {step} while daemonizing the supervisor")]
    Daemonize {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(
        "cannot listen on control socket {path}: is another supervisor running for this task?"
    )]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: check the OCI runtime path in the driver configuration")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {operation}` for container {container} failed: {message}")]
    Runtime {
        program: PathBuf,
        operation: &'static str,
        container: String,
        message: String,
    },
    #[error(
        "cannot create a pipe for container output: the supervisor ran out of file descriptors"
    )]
    Pipe(#[source] nix::Error),
    #[error("cannot start a supervisor thread")]
    Thread(#[source] std::io::Error),
}

/// `error` followed by each of its sources, separated by `: `.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
