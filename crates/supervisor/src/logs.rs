//! Container logs in the CRI format, size-bounded, and a reader for the agent.
//!
//! Every chunk a container writes to stdout or stderr becomes one line of
//! `task-dir/logs/<container>.log`:
//!
//! ```text
//! 2026-11-28T05:37:00.123456789Z stdout F a complete line
//! 2026-11-28T05:37:00.123456790Z stderr P the first 16 KiB of a longer line...
//! ```
//!
//! `F` marks the end of a line, `P` a fragment that continues in the next entry of the
//! same stream (lines longer than [`MAX_LINE`] are split). When a write would take the
//! file past its size limit, the file is renamed to `<container>.log.1` (replacing the
//! previous rotated file) and a new one is started, so a container uses at most twice the
//! limit on disk.
//!
//! [`LogFollower`] reads the rotated file then the current one, and on each
//! [`LogFollower::poll`] returns the entries appended since, following a rotation by
//! finishing the renamed file through its still-open descriptor before switching.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::layout::TaskDir;
use crate::SupervisorError;

/// Longest line written as one entry; longer lines are split into `P` fragments.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub stream: LogStream,
    /// The message continues in the next entry of the same stream.
    pub partial: bool,
    /// The message, without its newline; invalid UTF-8 is replaced.
    pub message: String,
}

impl LogEntry {
    /// Parses one CRI log line (without its newline).
    pub fn parse(line: &str) -> Option<LogEntry> {
        let mut fields = line.splitn(4, ' ');
        let timestamp = DateTime::parse_from_rfc3339(fields.next()?)
            .ok()?
            .with_timezone(&Utc);
        let stream = match fields.next()? {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            _ => return None,
        };
        let partial = match fields.next()? {
            "F" => false,
            "P" => true,
            _ => return None,
        };
        let message = fields.next().unwrap_or_default().to_owned();
        Some(LogEntry {
            timestamp,
            stream,
            partial,
            message,
        })
    }
}

/// Appends CRI entries to a container's log file, rotating it at a size limit.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

impl LogWriter {
    /// Opens (appending to) the container's log in `task_dir`.
    pub fn open(
        task_dir: &TaskDir,
        container: &str,
        max_bytes: u64,
    ) -> Result<Self, SupervisorError> {
        let path = task_dir.container_log(container);
        let rotated = task_dir.rotated_container_log(container);
        let file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(|source| write_error(&path, source))?
            .len();
        Ok(LogWriter {
            path,
            rotated,
            max_bytes,
            file,
            size,
        })
    }

    /// Writes one entry stamped with the current time.
    pub fn write_entry(
        &mut self,
        stream: LogStream,
        partial: bool,
        message: &[u8],
    ) -> Result<(), SupervisorError> {
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let tag = if partial { "P" } else { "F" };
        let mut line = Vec::with_capacity(timestamp.len() + message.len() + 12);
        line.extend_from_slice(timestamp.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.push(b' ');
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(message);
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(&line)
            .map_err(|source| write_error(&self.path, source))?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SupervisorError> {
        fs::rename(&self.path, &self.rotated)
            .map_err(|source| write_error(&self.rotated, source))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, SupervisorError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| write_error(path, source))
}

fn write_error(path: &Path, source: std::io::Error) -> SupervisorError {
    SupervisorError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Copies a container stream into its log until the stream closes (every process holding
/// its write end has exited). Write failures are logged and the stream is still drained so
/// that the container never blocks on a full pipe.
pub fn pump(mut source: impl Read, stream: LogStream, writer: Arc<Mutex<LogWriter>>) {
    let mut chunk = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    let emit = |partial: bool, message: &[u8]| {
        let mut writer = writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = writer.write_entry(stream, partial, message) {
            tracing::warn!(error = %error, stream = stream.as_str(), "dropping container log line");
        }
    };
    loop {
        let read = match source.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(error = %error, stream = stream.as_str(), "container stream read failed");
                break;
            }
        };
        pending.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(offset) = pending[start..].iter().position(|&b| b == b'\n') {
            let mut line = &pending[start..start + offset];
            while line.len() > MAX_LINE {
                emit(true, &line[..MAX_LINE]);
                line = &line[MAX_LINE..];
            }
            emit(false, line);
            start += offset + 1;
        }
        while pending.len() - start >= MAX_LINE {
            emit(true, &pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        emit(false, &pending);
    }
}

/// Reads every entry of a container's log (rotated file first) at or after `since`.
pub fn read_logs(
    task_dir: &TaskDir,
    container: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<LogEntry>, SupervisorError> {
    LogFollower::open(task_dir, container, since)?.poll()
}

/// Incremental reader of a container's log that survives rotation.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    since: Option<DateTime<Utc>>,
    rotated: Option<(PathBuf, File)>,
    current: Option<(File, u64)>,
    pending: Vec<u8>,
}

impl LogFollower {
    /// Starts reading at the beginning of the rotated file, or of the current one. The
    /// log need not exist yet: a container waiting for its dependencies has none.
    pub fn open(
        task_dir: &TaskDir,
        container: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Self, SupervisorError> {
        let rotated_path = task_dir.rotated_container_log(container);
        let rotated = open_existing(&rotated_path)?.map(|file| (rotated_path, file));
        Ok(LogFollower {
            path: task_dir.container_log(container),
            since,
            rotated,
            current: None,
            pending: Vec::new(),
        })
    }

    /// Returns the complete entries written since the previous call.
    pub fn poll(&mut self) -> Result<Vec<LogEntry>, SupervisorError> {
        let mut entries = Vec::new();
        if let Some((path, mut file)) = self.rotated.take() {
            self.drain(&mut file, &path, &mut entries)?;
            self.pending.clear();
        }
        loop {
            if self.current.is_none() {
                let Some(file) = open_existing(&self.path)? else {
                    break;
                };
                let inode = file
                    .metadata()
                    .map_err(|source| read_error(&self.path, source))?
                    .ino();
                self.current = Some((file, inode));
            }
            let Some((mut file, inode)) = self.current.take() else {
                break;
            };
            let path = self.path.clone();
            self.drain(&mut file, &path, &mut entries)?;
            match fs::metadata(&self.path) {
                Ok(meta) if meta.ino() != inode => {
                    // Rotated since we opened it: the writer no longer appends to our
                    // descriptor, so one more drain gets the rest of it. Switch files.
                    self.drain(&mut file, &path, &mut entries)?;
                    self.pending.clear();
                    continue;
                }
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(read_error(&self.path, error));
                }
                _ => {
                    self.current = Some((file, inode));
                    break;
                }
            }
        }
        Ok(entries)
    }

    fn drain(
        &mut self,
        file: &mut File,
        path: &Path,
        entries: &mut Vec<LogEntry>,
    ) -> Result<(), SupervisorError> {
        let start = self.pending.len();
        file.read_to_end(&mut self.pending)
            .map_err(|source| read_error(path, source))?;
        if self.pending.len() == start {
            return Ok(());
        }
        let mut consumed = 0;
        while let Some(offset) = self.pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[consumed..consumed + offset]);
            match LogEntry::parse(&line) {
                Some(entry) if self.since.is_none_or(|since| entry.timestamp >= since) => {
                    entries.push(entry)
                }
                Some(_) => {}
                None => tracing::debug!(path = %path.display(), "skipping malformed log line"),
            }
            consumed += offset + 1;
        }
        self.pending.drain(..consumed);
        Ok(())
    }
}

fn open_existing(path: &Path) -> Result<Option<File>, SupervisorError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(path, source)),
    }
}

fn read_error(path: &Path, source: std::io::Error) -> SupervisorError {
    SupervisorError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_dir() -> (tempfile::TempDir, TaskDir) {
        let temp = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(temp.path());
        fs::create_dir_all(dir.logs_dir()).unwrap();
        (temp, dir)
    }

    fn messages(entries: &[LogEntry]) -> Vec<(LogStream, bool, &str)> {
        entries
            .iter()
            .map(|e| (e.stream, e.partial, e.message.as_str()))
            .collect()
    }

    #[test]
    fn parses_cri_lines() {
        let entry = LogEntry::parse("2026-11-28T05:37:00.123456789Z stderr P a b  c").unwrap();
        assert_eq!(entry.stream, LogStream::Stderr);
        assert!(entry.partial);
        assert_eq!(entry.message, "a b  c");
        assert_eq!(entry.timestamp.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(
            LogEntry::parse("2026-11-28T05:37:00Z stdout F")
                .unwrap()
                .message,
            ""
        );
        assert!(LogEntry::parse("yesterday stdout F x").is_none());
        assert!(LogEntry::parse("2026-11-28T05:37:00Z stdin F x").is_none());
        assert!(LogEntry::parse("2026-11-28T05:37:00Z stdout X x").is_none());
    }

    #[test]
    fn pump_splits_lines_and_long_fragments() {
        let (_temp, dir) = task_dir();
        let writer = Arc::new(Mutex::new(LogWriter::open(&dir, "app", 1 << 30).unwrap()));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\ntwo\n{long}\ntail");
        pump(input.as_bytes(), LogStream::Stdout, writer.clone());
        pump(&b"err\n"[..], LogStream::Stderr, writer);
        let entries = read_logs(&dir, "app", None).unwrap();
        assert_eq!(
            messages(&entries),
            vec![
                (LogStream::Stdout, false, "one"),
                (LogStream::Stdout, false, "two"),
                (LogStream::Stdout, true, &long[..MAX_LINE]),
                (LogStream::Stdout, false, &long[MAX_LINE..]),
                (LogStream::Stdout, false, "tail"),
                (LogStream::Stderr, false, "err"),
            ]
        );
        let raw = fs::read_to_string(dir.container_log("app")).unwrap();
        let first = raw.lines().next().unwrap();
        assert!(first.ends_with("Z stdout F one"), "{first}");
        assert_eq!(
            first.split(' ').next().unwrap().len(),
            "2026-11-28T05:37:00.123456789Z".len()
        );
    }

    #[test]
    fn rotation_keeps_one_old_file_and_reader_spans_both() {
        let (_temp, dir) = task_dir();
        let mut writer = LogWriter::open(&dir, "app", 200).unwrap();
        for i in 0..12 {
            writer
                .write_entry(LogStream::Stdout, false, format!("line {i}").as_bytes())
                .unwrap();
        }
        assert!(fs::metadata(dir.container_log("app")).unwrap().len() <= 200);
        assert!(
            fs::metadata(dir.rotated_container_log("app"))
                .unwrap()
                .len()
                <= 200
        );
        let entries = read_logs(&dir, "app", None).unwrap();
        let got: Vec<_> = entries.iter().map(|e| e.message.clone()).collect();
        // The oldest lines were rotated away; what remains is contiguous and ends last.
        assert_eq!(got.last().unwrap(), "line 11");
        let first: usize = got[0].trim_start_matches("line ").parse().unwrap();
        let expected: Vec<_> = (first..12).map(|i| format!("line {i}")).collect();
        assert_eq!(got, expected);
        assert!(first > 0);
    }

    #[test]
    fn follower_sees_appends_and_rotations() {
        let (_temp, dir) = task_dir();
        let mut follower = LogFollower::open(&dir, "app", None).unwrap();
        assert!(
            follower.poll().unwrap().is_empty(),
            "no log yet is not an error"
        );
        let mut writer = LogWriter::open(&dir, "app", 120).unwrap();
        writer
            .write_entry(LogStream::Stdout, false, b"first")
            .unwrap();
        assert_eq!(
            messages(&follower.poll().unwrap()),
            vec![(LogStream::Stdout, false, "first")]
        );
        assert!(follower.poll().unwrap().is_empty());
        for word in ["a", "b", "c"] {
            writer
                .write_entry(LogStream::Stderr, false, word.as_bytes())
                .unwrap();
        }
        let got: Vec<_> = follower
            .poll()
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn since_filters_older_entries() {
        let (_temp, dir) = task_dir();
        let path = dir.container_log("app");
        fs::write(
            &path,
            "2020-01-01T00:00:00.000000000Z stdout F old\n2030-01-01T00:00:00.000000000Z stdout F new\n",
        )
        .unwrap();
        let since = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let entries = read_logs(&dir, "app", Some(since)).unwrap();
        assert_eq!(messages(&entries), vec![(LogStream::Stdout, false, "new")]);
    }
}
