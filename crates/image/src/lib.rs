//! The agent's local image cache and root filesystems.
//!
//! ```text
//!  skiff image load FILE ──> archive ──> content (blobs/sha256/<hex>, verified)
//!                                  │
//!                                  └──> ImageStore::import_manifest
//!                                         ├─ unpack: layers/<diff-id>/ (overlay format)
//!                                         ├─ images/<manifest>.json
//!                                         └─ refs.json (normalized names)
//!  task start ──> ImageStore::resolve ──> layer_dirs ──> rootfs::mount_rootfs
//! ```
//!
//! - [`content`]: the content-addressed blob store; every write is verified.
//! - [`unpack`]: safe, shared, atomic layer unpacking with whiteout conversion.
//! - [`archive`]: the `docker save` / OCI image-layout tarball reader. A registry
//!   client will feed the same content store and [`ImageStore::import_manifest`].
//! - [`manifest`]: OCI and Docker schema 2 documents via `oci-spec`.
//! - [`reference`]: docker-style reference normalization.
//! - [`store`]: the [`ImageStore`] tying them together.
//! - [`rootfs`]: overlayfs mounting of an image's layers.

pub mod archive;
pub mod content;
mod digest;
mod error;
pub mod manifest;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use content::ContentStore;
pub use digest::{Digest, HashingReader};
pub use error::ImageError;
pub use manifest::ImageConfig;
pub use reference::{normalize_reference, Reference};
pub use rootfs::{mount_rootfs, unmount_rootfs};
pub use store::{Image, ImageStore};
pub use unpack::{Compression, LayerStore, UnpackError, UnpackOutcome};
