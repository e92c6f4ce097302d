//! The one place that reaps children.
//!
//! The supervisor is a child subreaper: container init processes reparent to it when the
//! runtime's `create` exits. A single thread blocks in `waitpid(-1)` and records every exit
//! in a table; code that ran a runtime command waits for that pid in the table, and the
//! task loop claims container exits from it after each wake-up. Nothing else may call
//! `wait` (`std::process::Child::wait` would steal or lose exits).
//!
//! Races handled here:
//! - a child that exits before its spawner registers interest: the exit stays in the table
//!   until claimed (unclaimed exits of stray orphans are pruned after [`UNCLAIMED_TTL`]);
//! - pid reuse: [`Reaper::spawn`] forks while holding the table lock and drops any stale
//!   entry for the new pid, and container claims ignore exits recorded before the
//!   container was created.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::SupervisorError;

/// How long an exit nobody claimed is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl Termination {
    /// The shell convention: the exit status, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Termination::Exited(code) => code,
            Termination::Signaled(signal) => 128 + signal,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    exited: HashMap<i32, (Termination, Instant)>,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Table>,
    /// Signalled when an exit is recorded or a child is spawned.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Handle on the reaping thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

impl Reaper {
    /// Starts the reaping thread; `on_exit` runs after each recorded exit.
    pub fn start(on_exit: impl Fn() + Send + 'static) -> Result<Self, SupervisorError> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || reap_forever(&thread_shared, on_exit))
            .map_err(SupervisorError::Thread)?;
        Ok(Reaper { shared })
    }

    /// Spawns `command` such that its exit is recorded for [`Reaper::wait`]; returns its
    /// pid. There is deliberately no `Child`: waiting on it would race with the reaper.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<i32> {
        let mut table = self.shared.lock();
        let pid = command.spawn()?.id() as i32;
        table.exited.remove(&pid);
        drop(table);
        self.shared.changed.notify_all();
        Ok(pid)
    }

    /// Blocks until `pid` (spawned through [`Reaper::spawn`]) has exited.
    pub fn wait(&self, pid: i32) -> Termination {
        let mut table = self.shared.lock();
        loop {
            if let Some((termination, _)) = table.exited.remove(&pid) {
                return termination;
            }
            table = self
                .shared
                .changed
                .wait(table)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Like [`Reaper::wait`], but gives up after `timeout`: None means `pid` still runs.
    pub fn wait_timeout(&self, pid: i32, timeout: Duration) -> Option<Termination> {
        let deadline = Instant::now() + timeout;
        let mut table = self.shared.lock();
        loop {
            if let Some((termination, _)) = table.exited.remove(&pid) {
                return Some(termination);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())?;
            table = self
                .shared
                .changed
                .wait_timeout(table, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Claims the exit of `pid` if it happened at or after `not_before`.
    pub fn try_take(&self, pid: i32, not_before: Instant) -> Option<Termination> {
        let mut table = self.shared.lock();
        match table.exited.get(&pid) {
            Some((termination, at)) if *at >= not_before => {
                let termination = *termination;
                table.exited.remove(&pid);
                Some(termination)
            }
            _ => None,
        }
    }
}

fn reap_forever(shared: &Shared, on_exit: impl Fn()) {
    loop {
        let termination = match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Termination::Exited(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Termination::Signaled(signal as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                // No children right now: sleep until one is spawned. Orphans can only
                // reparent to us from a child we spawned, so the timeout is a safety net.
                let table = shared.lock();
                drop(
                    shared
                        .changed
                        .wait_timeout(table, Duration::from_secs(1))
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                );
                continue;
            }
            Err(error) => {
                tracing::error!(error = %error, "waitpid failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let (pid, termination) = termination;
        tracing::debug!(pid = pid.as_raw(), ?termination, "reaped child");
        let now = Instant::now();
        let mut table = shared.lock();
        table
            .exited
            .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
        table.exited.insert(pid.as_raw(), (termination, now));
        drop(table);
        shared.changed.notify_all();
        on_exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_codes_follow_the_shell_convention() {
        assert_eq!(Termination::Exited(3).code(), 3);
        assert_eq!(Termination::Signaled(9).code(), 137);
        assert_eq!(Termination::Signaled(15).code(), 143);
    }

    // The only test in this crate that creates child processes: a second reaper in the
    // same test process would steal this one's exits.
    #[test]
    fn records_exit_codes_and_signals_of_spawned_children() {
        let reaper = Reaper::start(|| {}).unwrap();
        let exits = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .unwrap();
        let killed = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "kill -KILL $$"]))
            .unwrap();
        let slow = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "sleep 0.3; exit 4"]))
            .unwrap();
        assert_eq!(reaper.wait_timeout(slow, Duration::from_millis(20)), None);
        assert_eq!(
            reaper.wait_timeout(slow, Duration::from_secs(30)),
            Some(Termination::Exited(4))
        );
        assert_eq!(reaper.wait(exits), Termination::Exited(7));
        assert_eq!(reaper.wait(killed), Termination::Signaled(9));
        let before = Instant::now();
        let late = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "exit 0"]))
            .unwrap();
        let pid = late;
        while reaper.try_take(pid, before).is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            reaper.try_take(pid, before),
            None,
            "an exit is claimed once"
        );
    }
}
