//! The supervisor's side of the control protocol (see [`crate::protocol`]) and the status
//! it serves.
//!
//! [`StatusHub`] holds the latest [`TaskStatus`] with a version number. Publishing a new
//! status first rewrites `status.json` atomically (write a temporary file, fsync, rename),
//! so a status that clients saw is always on disk for the next agent, then wakes every
//! watcher. Each connection is served by its own small thread: connections are rare (one
//! per agent call) and a blocking thread per `watch` is the simplest correct design.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::{decode, encode, Request, Response, TaskPhase, TaskStatus};
use crate::SupervisorError;

const CONNECTION_STACK: usize = 128 * 1024;
/// Longest request accepted; protocol requests are tiny.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug)]
struct Published {
    version: u64,
    status: TaskStatus,
    watchers: usize,
}

/// The latest task status, persisted and broadcast.
#[derive(Debug)]
pub struct StatusHub {
    path: PathBuf,
    published: Mutex<Published>,
    changed: Condvar,
}

impl StatusHub {
    /// Persists `initial` and returns the hub serving it.
    pub fn new(path: PathBuf, initial: TaskStatus) -> Result<Arc<Self>, SupervisorError> {
        write_atomically(&path, &initial)?;
        Ok(Arc::new(StatusHub {
            path,
            published: Mutex::new(Published {
                version: 0,
                status: initial,
                watchers: 0,
            }),
            changed: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Persists and broadcasts `status` if it differs from the current one.
    pub fn publish(&self, status: &TaskStatus) -> Result<(), SupervisorError> {
        let mut published = self.lock();
        if published.status == *status {
            return Ok(());
        }
        write_atomically(&self.path, status)?;
        published.status = status.clone();
        published.version += 1;
        drop(published);
        self.changed.notify_all();
        Ok(())
    }

    pub fn current(&self) -> TaskStatus {
        self.lock().status.clone()
    }

    /// Waits up to `timeout` for every `watch` connection to send the final status.
    pub fn wait_for_watchers(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut published = self.lock();
        while published.watchers > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            published = self
                .changed
                .wait_timeout(published, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn watch(&self, stream: &mut UnixStream) -> std::io::Result<()> {
        let mut published = self.lock();
        published.watchers += 1;
        let mut seen = None;
        let result = loop {
            if seen != Some(published.version) {
                seen = Some(published.version);
                let status = published.status.clone();
                let done = status.phase == TaskPhase::Stopped;
                drop(published);
                let sent = stream.write_all(encode(&Response::Status { status }).as_bytes());
                published = self.lock();
                if sent.is_err() || done {
                    break sent;
                }
            }
            published = self
                .changed
                .wait(published)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        };
        published.watchers -= 1;
        drop(published);
        self.changed.notify_all();
        result
    }
}

/// Writes `value` as JSON to `path` so that readers see the old or the new file, never a
/// torn one.
pub fn write_atomically(path: &Path, value: &impl serde::Serialize) -> Result<(), SupervisorError> {
    let temporary = path.with_extension("json.tmp");
    let error = |source| SupervisorError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).expect("status always serializes");
    let mut file = File::create(&temporary).map_err(error)?;
    file.write_all(&bytes).map_err(error)?;
    file.sync_data().map_err(error)?;
    fs::rename(&temporary, path).map_err(error)
}

/// Binds the control socket, replacing a stale socket file from a dead supervisor.
pub fn bind(path: &Path) -> Result<UnixListener, SupervisorError> {
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed stale control socket"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SupervisorError::Listen {
                path: path.to_owned(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| SupervisorError::Listen {
        path: path.to_owned(),
        source,
    })
}

/// Serves connections on a background thread. `on_stop` receives stop reasons.
pub fn serve(
    listener: UnixListener,
    hub: Arc<StatusHub>,
    on_stop: impl Fn(String) + Send + Sync + 'static,
) -> Result<(), SupervisorError> {
    let on_stop = Arc::new(on_stop);
    std::thread::Builder::new()
        .name("control".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(error = %error, "accepting a control connection failed");
                        continue;
                    }
                };
                let hub = hub.clone();
                let on_stop = on_stop.clone();
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || {
                        if let Err(error) = handle(stream, &hub, &*on_stop) {
                            tracing::debug!(error = %error, "control connection ended");
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(error = %error, "cannot start a control connection thread");
                }
            }
        })
        .map_err(SupervisorError::Thread)?;
    Ok(())
}

fn handle(
    mut stream: UnixStream,
    hub: &StatusHub,
    on_stop: &dyn Fn(String),
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let request = match decode::<Request>(line.trim_end()) {
        Ok(request) => request,
        Err(error) => {
            let message = format!(
                "{error}: send one JSON request per line, e.g. {{\"v\":1,\"op\":\"status\"}}"
            );
            return stream.write_all(encode(&Response::Error { message }).as_bytes());
        }
    };
    match request {
        Request::Status => stream.write_all(
            encode(&Response::Status {
                status: hub.current(),
            })
            .as_bytes(),
        ),
        Request::Stop { reason } => {
            on_stop(reason);
            stream.write_all(encode(&Response::Accepted).as_bytes())
        }
        Request::Watch => hub.watch(&mut stream),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::protocol::StopCode;

    fn status(phase: TaskPhase) -> TaskStatus {
        TaskStatus {
            task_id: "t".into(),
            phase,
            stop_code: None,
            stopped_reason: None,
            containers: Vec::new(),
        }
    }

    fn call(path: &Path, request: &Request) -> Vec<Response> {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(encode(request).as_bytes()).unwrap();
        BufReader::new(stream)
            .lines()
            .map(|line| decode(&line.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn serves_status_stop_and_watch() {
        let temp = tempfile::tempdir().unwrap();
        let socket = temp.path().join("s.sock");
        let hub =
            StatusHub::new(temp.path().join("status.json"), status(TaskPhase::Running)).unwrap();
        let (stops, stop_requests) = mpsc::channel();
        let stops = Mutex::new(stops);
        serve(bind(&socket).unwrap(), hub.clone(), move |reason| {
            stops.lock().unwrap().send(reason).unwrap();
        })
        .unwrap();

        assert_eq!(
            call(&socket, &Request::Status),
            vec![Response::Status {
                status: status(TaskPhase::Running)
            }]
        );
        assert_eq!(
            call(
                &socket,
                &Request::Stop {
                    reason: "bye".into()
                }
            ),
            vec![Response::Accepted]
        );
        assert_eq!(stop_requests.recv().unwrap(), "bye");

        let watcher = {
            let socket = socket.clone();
            std::thread::spawn(move || call(&socket, &Request::Watch))
        };
        while hub.lock().watchers == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.publish(&status(TaskPhase::Stopping)).unwrap();
        let mut stopped = status(TaskPhase::Stopped);
        stopped.stop_code = Some(StopCode::UserInitiated);
        hub.publish(&stopped).unwrap();
        hub.wait_for_watchers(Duration::from_secs(5));
        let seen: Vec<TaskPhase> = watcher
            .join()
            .unwrap()
            .into_iter()
            .map(|response| match response {
                Response::Status { status } => status.phase,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // Intermediate states may coalesce, but the watch always ends on Stopped.
        assert_eq!(seen.first(), Some(&TaskPhase::Running));
        assert_eq!(seen.last(), Some(&TaskPhase::Stopped));
        let on_disk: TaskStatus =
            serde_json::from_slice(&fs::read(temp.path().join("status.json")).unwrap()).unwrap();
        assert_eq!(on_disk, stopped);
    }

    #[test]
    fn bad_requests_get_an_error_reply() {
        let temp = tempfile::tempdir().unwrap();
        let socket = temp.path().join("s.sock");
        let hub =
            StatusHub::new(temp.path().join("status.json"), status(TaskPhase::Running)).unwrap();
        serve(bind(&socket).unwrap(), hub, |_| {}).unwrap();
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(b"{\"v\":9,\"op\":\"status\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        match decode::<Response>(&reply).unwrap() {
            Response::Error { message } => assert!(message.contains("version 9"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
