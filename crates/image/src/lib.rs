//! The agent's local image cache and root filesystems.
//!
//! ```text
//!  skiff image load FILE ──> archive ──┐
//!  ImageStore::pull ──> registry ──────┴─> content (blobs/sha256/<hex>, verified)
//!                                  │
//!                                  └──> ImageStore::import_manifest
//!                                         ├─ unpack: layers/<diff-id>/ (overlay format)
//!                                         ├─ images/<manifest>.json
//!                                         └─ refs.json (normalized names)
//!  task start ──> ImageStore::resolve ──> layer_dirs ──> rootfs::mount_rootfs
//!  cache size ──> ImageStore::{remove, prune, evict_to, usage}
//! ```
//!
//! - [`registry`]: the distribution client (`oci-client`): TLS, auth, retries.
//! - [`content`]: the content-addressed blob store; every write is verified.
//! - [`unpack`]: safe, shared, atomic layer unpacking with whiteout conversion, within
//!   an [`UnpackBudget`] (the task's ephemeral storage) against decompression bombs.
//! - [`archive`]: the `docker save` / OCI image-layout tarball reader, feeding the
//!   same content store and [`ImageStore::import_manifest`] as a pull.
//! - [`manifest`]: OCI and Docker schema 2 documents via `oci-spec`.
//! - [`reference`](mod@reference): docker-style reference normalization.
//! - [`store`]: the [`ImageStore`] tying them together.
//! - [`rootfs`]: overlayfs mounting of an image's layers.

pub mod archive;
pub mod content;
mod digest;
mod error;
mod inflight;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use content::ContentStore;
pub use digest::{Digest, HashingReader};
pub use error::{BoxedError, ImageError};
pub use manifest::{ImageConfig, Platform};
pub use reference::{normalize_reference, Reference};
pub use registry::{CredentialSource, Credentials, Registry, RegistryConfig, RetryPolicy};
pub use rootfs::{mount_rootfs, unmount_rootfs};
pub use store::{
    Image, ImageHold, ImageStore, LayerState, PruneReport, PullOptions, PullProgress, RemoveOutcome,
};
pub use unpack::{
    Compression, LayerStore, StagedLayer, UnpackBudget, UnpackError, UnpackOutcome,
    MAX_EPHEMERAL_STORAGE_GIB,
};
