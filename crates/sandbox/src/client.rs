//! The agent's handle on one task's supervisor.
//!
//! Each call opens a connection to `supervisor.sock`, sends one request and reads the
//! reply (see [`supervisor::protocol`]). When the supervisor has exited, the socket is
//! gone or refuses connections; the client then answers from `status.json`, which the
//! supervisor rewrote before exiting, so a stopped task stays describable. A status file
//! that is not final with no supervisor behind it means the supervisor died abnormally:
//! that is [`SandboxError::SupervisorLost`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use supervisor::protocol::{decode, encode, Request, Response};
use supervisor::{LogEntry, LogFollower, TaskDir, TaskPhase, TaskStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::SandboxError;

/// How often `follow_logs` looks for new log lines.
const LOG_POLL: Duration = Duration::from_millis(200);

/// A connection-per-call client of one task's supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorClient {
    task_id: String,
    dir: TaskDir,
}

impl SupervisorClient {
    pub(crate) fn new(task_id: String, dir: TaskDir) -> Self {
        SupervisorClient { task_id, dir }
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The task's current status.
    pub async fn status(&self) -> Result<TaskStatus, SandboxError> {
        let Some(stream) = self.connect().await? else {
            return self.final_status();
        };
        let mut lines = self.request(stream, &Request::Status).await?;
        self.read_status(&mut lines)
            .await?
            .map_or_else(|| self.final_status(), Ok)
    }

    /// Asks the supervisor to stop the task; returns once the stop has begun. Stopping
    /// a task that already stopped succeeds.
    pub async fn stop(&self, reason: &str) -> Result<(), SandboxError> {
        let Some(stream) = self.connect().await? else {
            return self.final_status().map(drop);
        };
        let mut lines = self
            .request(
                stream,
                &Request::Stop {
                    reason: reason.to_owned(),
                },
            )
            .await?;
        match self.read(&mut lines).await? {
            Some(Response::Accepted) => Ok(()),
            Some(other) => Err(self.unexpected(other)),
            None => self.final_status().map(drop),
        }
    }

    /// The current status, then one per change, ending after the Stopped status.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = TaskStatus> + Send + 'static, SandboxError> {
        enum State {
            Live(tokio::io::Lines<BufReader<UnixStream>>, SupervisorClient),
            Final(TaskStatus),
            Done,
        }
        let state = match self.connect().await? {
            Some(stream) => State::Live(self.request(stream, &Request::Watch).await?, self.clone()),
            None => State::Final(self.final_status()?),
        };
        Ok(futures::stream::unfold(state, |state| async move {
            match state {
                State::Final(status) => Some((status, State::Done)),
                State::Done => None,
                State::Live(mut lines, client) => match client.read_status(&mut lines).await {
                    Ok(Some(status)) if status.phase == TaskPhase::Stopped => {
                        Some((status, State::Done))
                    }
                    Ok(Some(status)) => Some((status, State::Live(lines, client))),
                    // The supervisor exited between messages: its last word is on disk.
                    Ok(None) => client
                        .final_status()
                        .ok()
                        .map(|status| (status, State::Done)),
                    Err(error) => {
                        tracing::warn!(task_id = %client.task_id, error = %error, "status watch ended");
                        None
                    }
                },
            }
        }))
    }

    /// Every log entry of `container` written at or after `since`.
    pub fn logs(
        &self,
        container: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<LogEntry>, SandboxError> {
        supervisor::read_logs(&self.dir, container, since).map_err(|source| {
            SandboxError::Supervisor {
                path: self.dir.container_log(container),
                source,
            }
        })
    }

    /// The log entries of `container` from `since` on, as they are written, ending once
    /// the task has stopped and everything was read.
    pub fn follow_logs(
        &self,
        container: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<impl Stream<Item = LogEntry> + Send + 'static, SandboxError> {
        let follower = LogFollower::open(&self.dir, container, since).map_err(|source| {
            SandboxError::Supervisor {
                path: self.dir.container_log(container),
                source,
            }
        })?;
        let client = self.clone();
        let batches = futures::stream::unfold(Some((follower, client)), |state| async move {
            let (mut follower, client) = state?;
            loop {
                // Checked before polling: whatever was written before the task stopped is
                // then read by this poll.
                let stopped = match client.status().await {
                    Ok(status) => status.phase == TaskPhase::Stopped,
                    Err(SandboxError::SupervisorLost { .. }) => true,
                    Err(_) => false,
                };
                match follower.poll() {
                    Ok(entries) if !entries.is_empty() => {
                        return Some((entries, Some((follower, client))))
                    }
                    Ok(_) if stopped => return None,
                    Ok(_) => tokio::time::sleep(LOG_POLL).await,
                    Err(error) => {
                        tracing::warn!(task_id = %client.task_id, error = %error, "log follow ended");
                        return None;
                    }
                }
            }
        });
        Ok(futures::StreamExt::flat_map(batches, futures::stream::iter))
    }

    async fn connect(&self) -> Result<Option<UnixStream>, SandboxError> {
        match UnixStream::connect(self.dir.socket()).await {
            Ok(stream) => Ok(Some(stream)),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(SandboxError::Connection {
                task_id: self.task_id.clone(),
                source,
            }),
        }
    }

    async fn request(
        &self,
        mut stream: UnixStream,
        request: &Request,
    ) -> Result<tokio::io::Lines<BufReader<UnixStream>>, SandboxError> {
        stream
            .write_all(encode(request).as_bytes())
            .await
            .map_err(|source| SandboxError::Connection {
                task_id: self.task_id.clone(),
                source,
            })?;
        Ok(BufReader::new(stream).lines())
    }

    /// The next reply, or None when the supervisor closed the connection first.
    async fn read(
        &self,
        lines: &mut tokio::io::Lines<BufReader<UnixStream>>,
    ) -> Result<Option<Response>, SandboxError> {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(source) => {
                return Err(SandboxError::Connection {
                    task_id: self.task_id.clone(),
                    source,
                })
            }
        };
        decode(&line)
            .map(Some)
            .map_err(|source| SandboxError::Protocol {
                task_id: self.task_id.clone(),
                source,
            })
    }

    async fn read_status(
        &self,
        lines: &mut tokio::io::Lines<BufReader<UnixStream>>,
    ) -> Result<Option<TaskStatus>, SandboxError> {
        match self.read(lines).await? {
            Some(Response::Status { status }) => Ok(Some(status)),
            Some(other) => Err(self.unexpected(other)),
            None => Ok(None),
        }
    }

    fn unexpected(&self, response: Response) -> SandboxError {
        let message = match response {
            Response::Error { message } => message,
            other => format!("unexpected reply {other:?}"),
        };
        SandboxError::Refused {
            task_id: self.task_id.clone(),
            message,
        }
    }

    /// The status the supervisor left on disk; it must be final.
    fn final_status(&self) -> Result<TaskStatus, SandboxError> {
        let path = self.dir.status();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SupervisorLost {
                    task_id: self.task_id.clone(),
                })
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let status: TaskStatus =
            serde_json::from_slice(&bytes).map_err(|source| SandboxError::Json { path, source })?;
        if status.phase == TaskPhase::Stopped {
            Ok(status)
        } else {
            Err(SandboxError::SupervisorLost {
                task_id: self.task_id.clone(),
            })
        }
    }
}
