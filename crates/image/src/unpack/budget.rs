//! The unpack budget: how many uncompressed bytes one pull (or one archive image) may
//! unpack, so that a decompression bomb cannot fill the host's disk.
//!
//! ```text
//!  UnpackBudget { limit, used: Arc<AtomicU64> }   one per pull, cloned into each layer
//!     ▲ charge(n)                  ▲ charge(holes)
//!  Metered reader                GNU sparse entry
//!  (every decompressed byte)     (zeros the tar reader makes up for holes)
//! ```
//!
//! Every byte of a layer's decompressed stream is charged as it is read, so a stream
//! is stopped by the read that would cross the limit, one buffer past the last byte
//! allowed; the holes of GNU sparse files, which the tar reader expands into zeros that
//! are not in the stream, are charged when their entry starts. The limit is shared by
//! all the layers a pull unpacks; layers already unpacked are not unpacked again and
//! cost nothing. The agent sets the limit to the task's ephemeral storage, which is
//! where Fargate keeps a task's image too.

use std::cell::Cell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The largest ephemeral storage a Fargate task can have, in GiB: the unpack limit of
/// pulls and loads made for no task in particular (`skiff image pull`, `skiff image
/// load`), so that any image they store can run in some task.
pub use model::validate::MAX_EPHEMERAL_GIB as MAX_EPHEMERAL_STORAGE_GIB;

/// Bytes in a GiB (the unit of `ephemeralStorage.sizeInGiB`).
pub const GIB: u64 = 1 << 30;

/// The uncompressed bytes a pull may still unpack, shared by its layers. Cheap to
/// clone; clones share the count.
#[derive(Debug, Clone)]
pub struct UnpackBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

impl UnpackBudget {
    /// A budget of `limit` bytes, none used yet.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The budget of an image a task with `gib` GiB of ephemeral storage runs.
    pub fn ephemeral_storage(gib: u32) -> Self {
        Self::new(u64::from(gib) * GIB)
    }

    /// The budget of the largest task ([`MAX_EPHEMERAL_STORAGE_GIB`]).
    pub fn largest_task() -> Self {
        Self::ephemeral_storage(MAX_EPHEMERAL_STORAGE_GIB)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, unless that would take the total over the limit: then nothing
    /// is charged and the answer is `false`.
    pub(super) fn charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }
}

/// Charges every byte read through it to a budget; a read that would exceed the budget
/// fails and sets `exceeded`, so that the unpacker can tell this failure from the
/// stream errors the tar reader wraps it in.
pub(super) struct Metered<'a, R> {
    inner: R,
    budget: &'a UnpackBudget,
    exceeded: &'a Cell<bool>,
}

impl<'a, R: Read> Metered<'a, R> {
    pub(super) fn new(inner: R, budget: &'a UnpackBudget, exceeded: &'a Cell<bool>) -> Self {
        Self {
            inner,
            budget,
            exceeded,
        }
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.budget.charge(n as u64) {
            self.exceeded.set(true);
            return Err(io::Error::other(format!(
                "the uncompressed layers exceed the unpack limit of {} bytes",
                self.budget.limit
            )));
        }
        Ok(n)
    }
}

/// `bytes` in the largest binary unit that divides it (`20 GiB`, `1 MiB`, `1000 bytes`).
pub(super) fn display_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    match bytes {
        0 => "0 bytes".to_owned(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b => format!("{b} bytes"),
    }
}
