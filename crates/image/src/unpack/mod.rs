//! Layer unpacking: `layers/<diff-id-hex>/`, one directory per distinct layer.
//!
//! How a layer gets there:
//!
//! ```text
//! blob --detect magic--> gzip | zstd | plain --hash (diff id)--> tar entries
//!        --LayerWriter--> layers/.tmp-XXXX/  --diff id == config?--> rename (no replace)
//!                                                                     to layers/<hex>/
//! ```
//!
//! - Compression is detected from the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`),
//!   never trusted from the media type alone; anything else is read as a plain tar.
//! - The diff id is the digest of the whole uncompressed stream, including the tar
//!   end-of-archive padding, so the stream is drained after the last entry.
//! - Entries are written by `writer::LayerWriter`, which converts whiteouts to the
//!   overlayfs format and refuses every entry that could land outside the layer (see
//!   [`UnpackError`]).
//! - Every decompressed byte (and every hole of a GNU sparse file) is charged to the
//!   pull's [`UnpackBudget`]; the read that would exceed it stops the unpack with
//!   [`UnpackError::TooLarge`], so a decompression bomb fills neither disk nor CPU.
//! - The finished directory is renamed into place with `RENAME_NOREPLACE`: a layer dir
//!   is either complete or absent, and when two imports of the same layer race, the
//!   first one wins and the other discards its copy. A failed unpack removes its
//!   temporary directory.
//! - A registry pull unpacks while the blob is still downloading, so it stages the
//!   layer ([`LayerStore::stage`]) and commits it only after the blob's digest checked
//!   out; a local import stages and commits at once ([`LayerStore::unpack`]).

mod budget;
mod writer;

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};

use crate::content::TEMP_PREFIX;
use crate::digest::{Digest, HashingReader};
use crate::error::ImageError;

pub use budget::{UnpackBudget, GIB, MAX_EPHEMERAL_STORAGE_GIB};

/// Why a layer could not be unpacked. Entry-level refusals name the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The stream is not a readable (optionally compressed) tar archive.
    #[error(
        "cannot read the layer's tar stream: the blob is corrupt, truncated, or not a tar \
         archive (plain, gzip or zstd)"
    )]
    Read(#[source] io::Error),

    /// The entry's path starts at `/`.
    #[error(
        "entry `{entry}` has an absolute path: layer entries must be relative to the layer root"
    )]
    AbsolutePath { entry: String },

    /// The entry's path has a `..` component.
    #[error("entry `{entry}` has a `..` component and would land outside the layer")]
    ParentComponent { entry: String },

    /// A parent of the entry is a symlink created by an earlier entry.
    #[error(
        "entry `{entry}` goes through `{component}`, a symlink in this layer: writing through \
         symlinks could land outside the layer"
    )]
    ThroughSymlink { entry: String, component: String },

    /// A non-directory entry whose path is the layer root (`.` or `./`).
    #[error("entry `{entry}` names the layer root but is not a directory")]
    RootNotDirectory { entry: String },

    /// A parent of the entry exists but is not a directory.
    #[error("entry `{entry}` goes through `{component}`, which is not a directory")]
    NotADirectory { entry: String, component: String },

    /// Device nodes (other than 0:0 whiteouts) and fifos.
    #[error("entry `{entry}` is a {kind}: device nodes and fifos are not allowed in image layers")]
    SpecialFile { entry: String, kind: &'static str },

    /// A hard link whose target is absolute, has `..` or goes through a symlink.
    #[error("hard link `{entry}` points to `{target}`, outside the layer")]
    HardLinkOutside { entry: String, target: String },

    /// A hard link to something that is not (yet) in the layer.
    #[error(
        "hard link `{entry}` points to `{target}`, which is not an earlier entry of this layer"
    )]
    HardLinkTargetMissing { entry: String, target: String },

    /// A link entry without a target.
    #[error("link entry `{entry}` has no target")]
    MissingLinkTarget { entry: String },

    /// A tar entry type layers do not use (volume labels, multi-volume continuations).
    #[error("entry `{entry}` has tar type `{kind}`, which image layers do not use")]
    UnsupportedType { entry: String, kind: char },

    /// `.wh.` with nothing, `.` or `..` after it.
    #[error("whiteout `{entry}` does not name a file it could delete")]
    InvalidWhiteout { entry: String },

    /// A filesystem operation on an entry failed.
    #[error("cannot {action} `{entry}`")]
    Io {
        action: &'static str,
        entry: String,
        #[source]
        source: io::Error,
    },

    /// Creating, cleaning or renaming the temporary layer directory failed.
    #[error("cannot {action} {path}")]
    Staging {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The uncompressed streams of the layers a pull unpacks exceed its
    /// [`UnpackBudget`]: the task's ephemeral storage.
    #[error(
        "the image's layers unpack to more than {size}, the task's ephemeral storage (or \
         {max} GiB, the most a task can have, for an image pulled or loaded outside a task): \
         raise the task definition's ephemeralStorage.sizeInGiB (up to {max}) or use a \
         smaller image; if the image is small when compressed, one of its layers is a \
         decompression bomb",
        size = budget::display_size(*.limit),
        max = MAX_EPHEMERAL_STORAGE_GIB
    )]
    TooLarge { limit: u64 },

    /// The uncompressed stream does not hash to the diff id the config lists.
    #[error(
        "the layer's uncompressed digest is {actual} but the image config says {expected}: \
         the layer blob does not belong to this image"
    )]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

impl UnpackError {
    /// The underlying I/O error if it means the disk (or quota) is full, else `self`.
    fn into_disk_full(self) -> Result<io::Error, Self> {
        match self {
            Self::Io { source, .. } | Self::Staging { source, .. }
                if crate::error::is_disk_full(&source) =>
            {
                Ok(source)
            }
            other => Err(other),
        }
    }
}

/// How a layer blob is compressed, as detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Detects the compression from the first (up to four) bytes of a stream.
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Peeks at the first bytes of `reader`, and returns the detected compression and a
/// reader of the decompressed stream.
pub fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let compression = Compression::detect(&magic[..filled]);
    let stream = io::Cursor::new(magic).take(filled as u64).chain(reader);
    let decoded: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
    };
    Ok((compression, decoded))
}

/// Whether [`LayerStore::unpack`] did the work or found the layer already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackOutcome {
    /// The layer was unpacked now.
    Unpacked,
    /// The layer directory already existed (possibly created by a concurrent import).
    AlreadyPresent,
}

/// The directory of unpacked layers, `root/layers/<diff-id-hex>/`.
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
}

impl LayerStore {
    /// Opens (creating if needed) `root/layers`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let dir = root.join("layers");
        std::fs::create_dir_all(&dir)
            .map_err(|source| ImageError::io("create layer directory", &dir, source))?;
        Ok(Self { dir })
    }

    /// The directory holding all layers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the layer with this diff id is (or would be) unpacked.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// Whether the layer is unpacked.
    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    /// Unpacks a layer blob (compressed or not) whose uncompressed digest must be
    /// `diff_id`, charging its uncompressed bytes to `budget` unless the layer is
    /// unpacked already. Nothing is left behind on failure.
    pub fn unpack(
        &self,
        diff_id: &Digest,
        blob: impl Read,
        budget: &UnpackBudget,
    ) -> Result<UnpackOutcome, ImageError> {
        if self.contains(diff_id) {
            return Ok(UnpackOutcome::AlreadyPresent);
        }
        self.stage(diff_id, blob, budget)?.commit()
    }

    /// Unpacks a layer into a temporary directory without making it visible: the caller
    /// commits it once it knows the source was good (a download is verified only at its
    /// end, after the unpacker has read everything). Dropping the result removes it.
    /// The uncompressed bytes are charged to `budget`; the read that would exceed it
    /// fails the unpack with [`UnpackError::TooLarge`].
    pub fn stage(
        &self,
        diff_id: &Digest,
        blob: impl Read,
        budget: &UnpackBudget,
    ) -> Result<StagedLayer, ImageError> {
        let exceeded = Cell::new(false);
        self.stage_inner(diff_id, blob, budget, &exceeded)
            .map_err(|source| {
                // The budget's refusal reaches here wrapped in whatever stream or entry
                // error the tar reader and the writer made of it.
                let source = if exceeded.get() {
                    UnpackError::TooLarge {
                        limit: budget.limit(),
                    }
                } else {
                    source
                };
                self.unpack_error(diff_id, source)
            })
    }

    fn unpack_error(&self, diff_id: &Digest, source: UnpackError) -> ImageError {
        match source.into_disk_full() {
            Ok(source) => ImageError::DiskFull {
                path: self.dir.clone(),
                source,
            },
            Err(source) => ImageError::Unpack {
                layer: diff_id.clone(),
                source,
            },
        }
    }

    fn stage_inner(
        &self,
        diff_id: &Digest,
        blob: impl Read,
        budget: &UnpackBudget,
        exceeded: &Cell<bool>,
    ) -> Result<StagedLayer, UnpackError> {
        let staging = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(&self.dir)
            .map_err(|source| UnpackError::Staging {
                action: "create a temporary layer directory in",
                path: self.dir.clone(),
                source,
            })?;
        let (compression, stream) = decompress(blob).map_err(UnpackError::Read)?;
        let mut hashing = HashingReader::new(budget::Metered::new(stream, budget, exceeded));
        let mut writer = writer::LayerWriter::new(staging.path())?;
        let mut entries = 0u64;
        {
            let mut archive = tar::Archive::new(&mut hashing);
            for entry in archive.entries().map_err(UnpackError::Read)? {
                let mut entry = entry.map_err(UnpackError::Read)?;
                if entry.header().entry_type().is_gnu_sparse() {
                    // The tar reader makes up the holes' zeros; they are not in the stream.
                    let holes = entry
                        .size()
                        .saturating_sub(entry.header().entry_size().unwrap_or(0));
                    if !budget.charge(holes) {
                        exceeded.set(true);
                        return Err(UnpackError::TooLarge {
                            limit: budget.limit(),
                        });
                    }
                }
                writer.apply(&mut entry)?;
                entries += 1;
            }
        }
        writer.finish()?;
        let (actual, size) = hashing.finish().map_err(UnpackError::Read)?;
        if actual != *diff_id {
            return Err(UnpackError::DiffIdMismatch {
                expected: diff_id.clone(),
                actual,
            });
        }
        Ok(StagedLayer {
            staging,
            store: self.clone(),
            diff_id: diff_id.clone(),
            compression,
            entries,
            size,
        })
    }
}

/// A fully unpacked and diff-id-verified layer in a temporary directory, not yet
/// visible. [`StagedLayer::commit`] moves it into place; dropping it deletes it.
#[derive(Debug)]
pub struct StagedLayer {
    staging: tempfile::TempDir,
    store: LayerStore,
    diff_id: Digest,
    compression: Compression,
    entries: u64,
    size: u64,
}

impl StagedLayer {
    /// Moves the layer to `layers/<diff-id-hex>/` without replacing an existing copy.
    pub fn commit(self) -> Result<UnpackOutcome, ImageError> {
        let target = self.store.path(&self.diff_id);
        match renameat2(
            None,
            self.staging.path(),
            None,
            &target,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                // The directory now lives at `target`; only stop the guard deleting it.
                let _ = self.staging.keep();
                tracing::info!(
                    layer = %self.diff_id, compression = ?self.compression,
                    entries = self.entries, size = self.size, "unpacked layer"
                );
                Ok(UnpackOutcome::Unpacked)
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                tracing::debug!(layer = %self.diff_id, "layer was unpacked concurrently; keeping the existing copy");
                Ok(UnpackOutcome::AlreadyPresent)
            }
            Err(errno) => {
                let source = UnpackError::Staging {
                    action: "move the unpacked layer to",
                    path: target,
                    source: errno.into(),
                };
                Err(self.store.unpack_error(&self.diff_id, source))
            }
        }
    }
}

#[cfg(test)]
mod tests;
