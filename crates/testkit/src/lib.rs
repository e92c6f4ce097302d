//! Test images for Skiff's tests and benchmarks.
//!
//! Everything here is built in memory from a description in code, so tests never need a
//! network or a docker daemon:
//!
//! - [`Layer`] describes one filesystem layer entry by entry (files with content, mode,
//!   owner, mtime and xattrs; directories; symlinks; hard links; whiteouts; opaque
//!   markers) and packs it into a tar stream, compressed with gzip, zstd or not at all.
//!   [`Layer::raw`] writes an entry verbatim, without any of the tar crate's path checks,
//!   so tests can build the hostile layers an unpacker must refuse.
//! - [`ImageBuilder`] adds the image configuration (entrypoint, cmd, env, working dir,
//!   user, ports, labels) and the names, and [`Archive`] writes one or more images as an
//!   OCI image-layout tarball or as a `docker save` tarball, optionally gzip-compressed
//!   as a whole.
//! - [`busybox_layer`] and [`busybox_image`] pack the host's static busybox into a
//!   runnable image.
//!
//! Output is deterministic (fixed mtimes, sorted maps), so the same description always
//! yields the same digests.

mod archive;
mod busybox;
mod layer;

use std::path::PathBuf;

pub use archive::{Archive, ArchiveFormat, ImageBuilder};
pub use busybox::{busybox_image, busybox_layer, BUSYBOX_APPLETS, BUSYBOX_PATH};
pub use layer::{Compression, EntryKind, Layer};

/// Annotation that names an image inside an OCI image layout (a tag or a full reference).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and docker use for the full image name in an OCI image layout.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Errors from building test images.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `/bin/busybox` is not there.
    #[error("{path} not found: install it with `apt-get install busybox-static`")]
    BusyboxMissing { path: PathBuf },
    /// `/bin/busybox` exists but needs a dynamic loader that test images do not have.
    #[error(
        "{path} is dynamically linked (Debian's `busybox` package) and cannot run in a \
         test image: install it with `apt-get install busybox-static`"
    )]
    BusyboxNotStatic { path: PathBuf },
    /// Reading a host file failed.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the output file failed.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tar crate refused an entry (a path that does not fit or is not allowed).
    #[error(
        "cannot add `{path}` to the tar stream: use `Layer::raw` for paths the tar crate refuses"
    )]
    TarEntry {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A raw entry's path or link target does not fit in the 100-byte header field.
    #[error("raw entry `{value}` is longer than 100 bytes: raw entries are written into the header verbatim")]
    RawFieldTooLong { value: String },
    /// Writing into an in-memory or caller-supplied stream failed.
    #[error("cannot write the archive stream")]
    Stream(#[source] std::io::Error),
    /// A modifier such as [`Layer::mode`] was called before any entry was added.
    #[error("`{modifier}` applies to the last entry, but the layer has no entries yet: add an entry first")]
    NoEntry { modifier: &'static str },
}

/// Digest (`sha256:<hex>`) of a byte string, as used in manifests and configs.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
