//! The crate's error type.
//!
//! Messages say what went wrong and what to do; they never repeat their `#[source]`,
//! which the binary prints as a chain. Refusals of individual layer entries live in
//! [`UnpackError`](crate::unpack::UnpackError) and arrive wrapped in
//! [`ImageError::Unpack`], which names the layer.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::unpack::UnpackError;

/// Errors of the image store, the archive importer and root filesystem assembly.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("invalid digest `{digest}`: {reason}")]
    InvalidDigest {
        digest: String,
        reason: &'static str,
    },

    /// An image reference does not follow the `[registry/]repository[:tag][@digest]` grammar.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },

    /// No loaded image matches the reference.
    #[error(
        "image {reference} is not loaded: load it with `skiff image load FILE` or check the \
         name with `skiff image ls`"
    )]
    NotFound { reference: String },

    /// Another process holds the store's lock.
    #[error(
        "image store {root} is in use by another process: stop the other skiff agent or give \
         this one its own state directory"
    )]
    StoreLocked { root: PathBuf },

    /// A filesystem operation in the store failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A blob's content does not hash to the digest it was announced with.
    #[error(
        "blob {expected} failed verification: its content hashes to {actual}, so the source is \
         corrupt or was tampered with; nothing was stored"
    )]
    DigestMismatch { expected: Digest, actual: Digest },

    /// A blob's length differs from its descriptor's size.
    #[error(
        "blob {digest} is {actual} bytes but its descriptor says {expected}: the source is \
         corrupt or truncated"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    /// The source of a blob (an archive, a download) failed while being read.
    #[error(
        "cannot read blob content from its source: the archive or download is corrupt or truncated"
    )]
    SourceRead(#[source] io::Error),

    /// A manifest, index or config is larger than any sane JSON document.
    #[error("{what} {digest} is {size} bytes, over the {limit}-byte limit for JSON documents")]
    DocumentTooLarge {
        what: &'static str,
        digest: Digest,
        size: u64,
        limit: u64,
    },

    /// The archive stream could not be read (truncated, not a tar, bad compression).
    #[error(
        "cannot read the image archive: it must be a `docker save` or OCI image-layout \
         tarball, optionally gzip- or zstd-compressed"
    )]
    ArchiveRead(#[source] io::Error),

    /// The archive is a tarball but neither of the supported layouts.
    #[error(
        "the archive is neither an OCI image layout (no index.json) nor a `docker save` \
         tarball (no manifest.json): create it with `docker save` or `skopeo copy ... oci-archive:`"
    )]
    UnrecognizedArchive,

    /// A metadata file of the archive is too large to be what it claims.
    #[error("`{file}` in the image archive is over the {limit}-byte limit for metadata files")]
    ArchiveMetadataTooLarge { file: String, limit: u64 },

    /// A metadata file of the archive is not valid JSON of the expected shape.
    #[error("cannot parse `{file}` in the image archive")]
    ArchiveMetadata {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The archive's `oci-layout` names a version this reader does not know.
    #[error("the archive has OCI image layout version {version}; only 1.0.0 is supported")]
    UnsupportedLayoutVersion { version: String },

    /// `manifest.json` names a file the archive does not contain.
    #[error("the archive's manifest.json references `{path}`, which the archive does not contain")]
    MissingArchiveFile { path: String },

    /// A descriptor points at a blob that is neither in the archive nor already stored.
    #[error("{what} blob {digest} is missing from the archive: the archive is incomplete")]
    MissingBlob { what: &'static str, digest: Digest },

    /// An image index has no manifest for this host's platform.
    #[error("image index {index} has no image for {wanted}; it has: {available}")]
    NoMatchingPlatform {
        index: Digest,
        wanted: String,
        available: String,
    },

    /// The archive holds no image.
    #[error("the archive contains no images")]
    EmptyArchive,

    /// A blob announced as a manifest or index does not parse as one.
    #[error("blob {digest} is not a valid {what}")]
    InvalidDocument {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },

    /// A manifest whose config is not a container image config (an artifact, a signature).
    #[error("manifest {manifest} describes a {media_type}, not a container image")]
    NotAnImage {
        manifest: Digest,
        media_type: String,
    },

    /// The manifest and the config disagree on the number of layers.
    #[error("image {manifest} lists {layers} layers but its config lists {diff_ids} diff ids")]
    LayerCountMismatch {
        manifest: Digest,
        layers: usize,
        diff_ids: usize,
    },

    /// A layer could not be unpacked; the source says which entry and why.
    #[error("cannot unpack layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },

    /// A metadata file of the store does not parse.
    #[error("{path} is corrupt: delete it and load the affected images again")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `mount_rootfs` was given no layers.
    #[error("cannot assemble a root filesystem from an image without layers")]
    NoLayers,

    /// An overlay mount option path contains a character the option syntax reserves.
    #[error("{path} cannot be used in an overlay mount: it contains `{character}`")]
    UnsupportedMountPath { path: PathBuf, character: char },

    /// The overlay mount options do not fit in one page even with relative layer paths.
    #[error(
        "overlay mount options for {layers} layers need {length} bytes, over the \
         {limit}-byte kernel limit even with relative layer paths: squash the image into \
         fewer layers"
    )]
    MountOptionsTooLong {
        layers: usize,
        length: usize,
        limit: usize,
    },

    /// The overlay mount failed.
    #[error("cannot mount the overlay root filesystem on {target} (the kernel log has overlayfs's reason)")]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },

    /// The filesystem holding the store ran out of space (or quota) while writing.
    #[error(
        "the filesystem holding {path} is full: free space with `skiff image rm` and \
         `skiff image prune`, or give the agent's state directory a larger disk"
    )]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The registry has no such repository, tag or digest.
    #[error(
        "image {reference} was not found in its registry (the registry says: {message}): \
         check the repository name and the tag or digest"
    )]
    RegistryNotFound { reference: String, message: String },

    /// The registry lacks a blob that the image's manifest lists.
    #[error(
        "registry {registry} does not have blob {digest} of image {reference} (the registry \
         says: {message}): the image in the registry is incomplete; push it again"
    )]
    RegistryBlobMissing {
        registry: String,
        reference: String,
        digest: Digest,
        message: String,
    },

    /// The registry refused the credentials (or their absence).
    #[error(
        "registry {registry} refused access to {reference} (the registry says: {message}): run \
         `skiff registry login {registry}` with an account allowed to pull it"
    )]
    RegistryUnauthorized {
        registry: String,
        reference: String,
        message: String,
    },

    /// The registry answered 401 to the credentials stored for it: they are wrong.
    #[error(
        "registry {registry} refused the credentials of {username} for {reference} (the \
         registry says: {message}): the password or token is wrong or has expired; store \
         the right one with `skiff registry login {registry} -u {username} --password-stdin`"
    )]
    RegistryCredentialsRefused {
        registry: String,
        reference: String,
        username: String,
        message: String,
    },

    /// The registry could not be reached: connection refused, DNS failure, timeout.
    #[error(
        "cannot reach registry {registry} after {attempts} attempts: check the registry \
         address and that it is running and reachable from this host"
    )]
    RegistryUnreachable {
        registry: String,
        attempts: u32,
        #[source]
        source: BoxedError,
    },

    /// The TLS handshake failed: an untrusted certificate, or a plain-HTTP registry.
    #[error(
        "TLS connection to registry {registry} failed: if it serves plain HTTP, start the \
         server with `--insecure-registry {registry}`; if its certificate comes from a \
         private CA, add `--registry-ca FILE`"
    )]
    RegistryTls {
        registry: String,
        #[source]
        source: BoxedError,
    },

    /// The registry kept failing with a server error or rate limit.
    #[error(
        "registry {registry} failed with HTTP {status} after {attempts} attempts (the \
         registry says: {message}): try again later"
    )]
    RegistryServer {
        registry: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    /// The registry refused the request for another reason than access or absence.
    #[error(
        "registry {registry} refused the request for {reference} (the registry says: {message})"
    )]
    RegistryRejected {
        registry: String,
        reference: String,
        message: String,
    },

    /// The registry's answer is not what the distribution protocol specifies.
    #[error(
        "registry {registry} sent an invalid answer for {reference}: it does not follow the \
         OCI distribution protocol"
    )]
    RegistryProtocol {
        registry: String,
        reference: String,
        #[source]
        source: BoxedError,
    },

    /// `--registry-ca` names a file that is not a readable PEM CA bundle.
    #[error(
        "cannot use {path} as a registry CA: it must be a readable PEM file of CA certificates"
    )]
    RegistryCa {
        path: PathBuf,
        #[source]
        source: BoxedError,
    },

    /// The HTTP client for registries could not be created.
    #[error("cannot set up the registry HTTP client (the system trust store may be unreadable)")]
    RegistryClient(#[source] BoxedError),

    /// A layer's download stopped because another layer of the same pull failed
    /// (only that other error is reported to the caller).
    #[error("the download of blob {digest} stopped because another layer of the same pull failed")]
    PullAborted { digest: Digest },

    /// Image indexes nested deeper than any real image does.
    #[error(
        "image index {index} nests other indexes more than {limit} deep: refusing to follow it"
    )]
    IndexTooDeep { index: Digest, limit: usize },

    /// Unmounting failed even with a lazy detach.
    #[error("cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// A source error of any type (reqwest's, rustls', io), kept for the error chain.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl ImageError {
    /// A filesystem error, or [`ImageError::DiskFull`] when the disk or quota is full.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        if is_disk_full(&source) {
            return Self::DiskFull {
                path: path.into(),
                source,
            };
        }
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Whether an I/O error means "no space left" (`ENOSPC`) or "quota exceeded" (`EDQUOT`).
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}
