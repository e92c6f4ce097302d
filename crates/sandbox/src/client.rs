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
        let Some(mut lines) = self.request(stream, &Request::Status).await? else {
            return self.final_status();
        };
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
        let request = Request::Stop {
            reason: reason.to_owned(),
        };
        let Some(mut lines) = self.request(stream, &request).await? else {
            return self.final_status().map(drop);
        };
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
        let lines = match self.connect().await? {
            Some(stream) => self.request(stream, &Request::Watch).await?,
            None => None,
        };
        let state = match lines {
            Some(lines) => State::Live(lines, self.clone()),
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

    /// Sends `request`; None when the supervisor closed the connection before reading
    /// it (it was exiting: its final status is on disk by then).
    async fn request(
        &self,
        mut stream: UnixStream,
        request: &Request,
    ) -> Result<Option<tokio::io::Lines<BufReader<UnixStream>>>, SandboxError> {
        match stream.write_all(encode(request).as_bytes()).await {
            Ok(()) => Ok(Some(BufReader::new(stream).lines())),
            Err(error) if peer_gone(&error) => Ok(None),
            Err(source) => Err(SandboxError::Connection {
                task_id: self.task_id.clone(),
                source,
            }),
        }
    }

    /// The next reply, or None when the supervisor closed the connection first.
    async fn read(
        &self,
        lines: &mut tokio::io::Lines<BufReader<UnixStream>>,
    ) -> Result<Option<Response>, SandboxError> {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(error) if peer_gone(&error) => return Ok(None),
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

/// Whether an I/O error on a connected socket means the supervisor closed its end: it
/// accepted the connection while exiting (or the listener closed with it still queued).
fn peer_gone(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use supervisor::protocol::StopCode;

    fn stopped_status(task_id: &str) -> TaskStatus {
        TaskStatus {
            task_id: task_id.to_owned(),
            phase: TaskPhase::Stopped,
            stop_code: Some(StopCode::EssentialContainerExited),
            stopped_reason: Some("Essential container in task exited".into()),
            containers: vec![],
        }
    }

    /// A supervisor that accepts a connection and closes it unread, as one does while it
    /// exits, after writing its final status.
    async fn closing_supervisor(dir: &TaskDir, task_id: &str) -> UnixStream {
        std::fs::write(
            dir.status(),
            serde_json::to_vec(&stopped_status(task_id)).unwrap(),
        )
        .unwrap();
        let listener = tokio::net::UnixListener::bind(dir.socket()).unwrap();
        let client = UnixStream::connect(dir.socket()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        drop(accepted);
        drop(listener);
        client
    }

    #[tokio::test]
    async fn a_request_to_a_closed_supervisor_falls_back_to_the_final_status() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let task_id = "0123456789abcdef0123456789abcdef";
        let client = SupervisorClient::new(task_id.into(), dir.clone());
        let stream = closing_supervisor(&dir, task_id).await;
        // Writing to a peer that closed fails with EPIPE: the request reports None
        // instead of a connection error, and the callers read status.json.
        let sent = client.request(stream, &Request::Status).await.unwrap();
        assert!(sent.is_none());
        assert_eq!(client.final_status().unwrap(), stopped_status(task_id));
    }

    #[tokio::test]
    async fn status_and_stop_of_an_exited_supervisor_read_the_final_status() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(tmp.path());
        let task_id = "fedcba9876543210fedcba9876543210";
        let client = SupervisorClient::new(task_id.into(), dir.clone());
        drop(closing_supervisor(&dir, task_id).await);
        assert_eq!(client.status().await.unwrap(), stopped_status(task_id));
        client.stop("again").await.unwrap();
    }
}
