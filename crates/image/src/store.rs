//! The image store: one directory per agent holding everything about local images.
//!
//! ```text
//! <root>/lock                          flock held while the store is open
//! <root>/blobs/sha256/<hex>            manifests, configs, layer blobs (ContentStore)
//! <root>/layers/<diff-id-hex>/         unpacked layers, shared by images (LayerStore)
//! <root>/images/<manifest-hex>.json    one record per image (ImageRecord)
//! <root>/refs.json                     normalized name -> manifest digest
//! ```
//!
//! Importing an image (from an archive, or from a registry by [`ImageStore::pull`]) is:
//! blobs into the content store, then [`ImageStore::import_manifest`], which unpacks
//! missing layers, writes the image record and points the names at it. Records and the
//! name index are replaced atomically (temporary file, fsync, rename), so readers never
//! see a partial file and need no lock; writers of names and records serialize on a
//! mutex. Temporary files left by a crash are removed on open, which is safe because
//! the lock file guarantees no other process is using the store.
//!
//! - `store/pull.rs`: registry pulls (coalesced per blob, streamed, unpacked while
//!   downloading), [`ImageStore::pull`] and [`ImageStore::resolve_digest`].
//! - `store/gc.rs`: untagging, pruning, LRU eviction and disk usage; records carry the
//!   time each image was last pulled or resolved.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::archive;
use crate::content::{ContentStore, TEMP_PREFIX};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::inflight::InFlight;
use crate::manifest::{self, ImageConfig};
use crate::reference::{normalize_reference, Reference};
use crate::unpack::{LayerStore, UnpackBudget};

/// A loaded image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image manifest: the image's identity.
    pub digest: String,
    /// Normalized references pointing at this image, sorted.
    pub names: Vec<String>,
    /// `sha256:<hex>` of the image config (what docker calls the image id).
    pub config_digest: String,
    /// The runtime part of the config.
    pub config: ImageConfig,
    /// Uncompressed layer digests, lowest layer first.
    pub diff_ids: Vec<String>,
    /// Compressed size of the layers, in bytes.
    pub size: u64,
    /// Creation time from the config (RFC 3339), if recorded.
    pub created: Option<String>,
    /// `GOARCH` name, such as `amd64`.
    pub architecture: String,
    /// `GOOS` name, such as `linux`.
    pub os: String,
}

/// What `images/<hex>.json` holds: an [`Image`] without its names, which live in the
/// name index because they move between images.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    digest: Digest,
    config_digest: Digest,
    config: ImageConfig,
    diff_ids: Vec<Digest>,
    size: u64,
    created: Option<String>,
    architecture: String,
    os: String,
    /// Image indexes this image was selected from by a pull, kept with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    indexes: Vec<Digest>,
    /// When the image was last imported, pulled or resolved (ms since the epoch).
    #[serde(default)]
    last_used: Option<u64>,
}

impl ImageRecord {
    fn into_image(self, names: Vec<String>) -> Image {
        Image {
            digest: self.digest.to_string(),
            names,
            config_digest: self.config_digest.to_string(),
            config: self.config,
            diff_ids: self.diff_ids.iter().map(ToString::to_string).collect(),
            size: self.size,
            created: self.created,
            architecture: self.architecture,
            os: self.os,
        }
    }
}

/// `refs.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NameIndex {
    refs: BTreeMap<String, Digest>,
    /// Names last pointed by an archive load rather than a pull: local images with no
    /// registry behind them, which the agent uses as they are.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    loaded: BTreeSet<String>,
}

/// Where a name's image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Archive,
    Registry,
}

/// The local image store. Cheap to clone; clones share one open store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    content: ContentStore,
    layers: LayerStore,
    images_dir: PathBuf,
    refs_path: PathBuf,
    /// Serializes read-modify-write of `refs.json` and of image records.
    metadata_lock: Mutex<()>,
    /// Blob downloads in progress, for coalescing.
    downloads: InFlight<Digest>,
    /// Blobs and layers that pulls in progress need, with a count per pull; garbage
    /// collection decides and deletes while holding this lock.
    pins: Mutex<HashMap<Digest, usize>>,
    /// Held shared by archive loads and exclusively by garbage collection: an archive's
    /// blobs are unreferenced until the load records its images.
    loads: RwLock<()>,
    _lock: Flock<File>,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`, which must not be in use by
    /// another process.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root)
            .map_err(|source| ImageError::io("create image store", root, source))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| ImageError::io("restrict the permissions of", root, source))?;
        let lock_path = root.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| ImageError::io("open lock file", &lock_path, source))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                match errno {
                    Errno::EWOULDBLOCK => ImageError::StoreLocked {
                        root: root.to_owned(),
                    },
                    errno => ImageError::io("lock", &lock_path, errno.into()),
                }
            })?;
        let content = ContentStore::open(root)?;
        let layers = LayerStore::open(root)?;
        let images_dir = root.join("images");
        std::fs::create_dir_all(&images_dir).map_err(|source| {
            ImageError::io("create image record directory", &images_dir, source)
        })?;
        for dir in [root, content.dir(), layers.dir(), &images_dir] {
            remove_temporaries(dir)?;
        }
        tracing::debug!(root = %root.display(), "opened image store");
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                content,
                layers,
                images_dir,
                refs_path: root.join("refs.json"),
                metadata_lock: Mutex::new(()),
                downloads: InFlight::default(),
                pins: Mutex::new(HashMap::new()),
                loads: RwLock::new(()),
                _lock: lock,
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The blob store (for importers such as a registry client).
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// The unpacked layers.
    pub fn layers(&self) -> &LayerStore {
        &self.inner.layers
    }

    /// Imports every image of a `docker save` or OCI image-layout tarball (optionally
    /// gzip- or zstd-compressed as a whole), streaming it without holding layers in
    /// memory. Images are imported in archive order; on error, those before the
    /// failing one stay loaded. Each image may unpack to at most the largest task's
    /// ephemeral storage ([`UnpackBudget::largest_task`]).
    pub fn load_archive(&self, reader: impl Read) -> Result<Vec<Image>, ImageError> {
        let _loading = self
            .inner
            .loads
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = archive::read_archive(&self.inner.content, reader)?;
        found
            .iter()
            .map(|image| {
                let budget = UnpackBudget::largest_task();
                self.import(
                    &image.manifest,
                    &image.names,
                    Vec::new(),
                    Origin::Archive,
                    &budget,
                )
            })
            .collect()
    }

    /// Makes the image whose manifest (and config and layer blobs) are in the content
    /// store available: unpacks missing layers (within `budget`), records it, and
    /// points `names` (normalized references) at it.
    pub fn import_manifest(
        &self,
        manifest_digest: &Digest,
        names: &[String],
        budget: &UnpackBudget,
    ) -> Result<Image, ImageError> {
        self.import(manifest_digest, names, Vec::new(), Origin::Registry, budget)
    }

    /// [`ImageStore::import_manifest`], remembering the indexes the manifest was
    /// selected from.
    pub(crate) fn import(
        &self,
        manifest_digest: &Digest,
        names: &[String],
        indexes: Vec<Digest>,
        origin: Origin,
        budget: &UnpackBudget,
    ) -> Result<Image, ImageError> {
        let content = &self.inner.content;
        let manifest_bytes = content.read_document(manifest_digest, "manifest")?;
        let image_manifest = manifest::parse_manifest(manifest_digest, &manifest_bytes)?;
        let config_digest = manifest::descriptor_digest(image_manifest.config())?;
        let config_bytes = content.read_document(&config_digest, "config")?;
        let config = manifest::parse_config(&config_digest, &config_bytes)?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let layers = image_manifest.layers();
        if layers.len() != diff_ids.len() {
            return Err(ImageError::LayerCountMismatch {
                manifest: manifest_digest.clone(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut size = 0;
        for (descriptor, diff_id) in layers.iter().zip(&diff_ids) {
            let blob = manifest::descriptor_digest(descriptor)?;
            let stored = content
                .stored_size(&blob)?
                .ok_or_else(|| ImageError::MissingBlob {
                    what: "layer",
                    digest: blob.clone(),
                })?;
            if stored != descriptor.size() {
                return Err(ImageError::SizeMismatch {
                    digest: blob,
                    expected: descriptor.size(),
                    actual: stored,
                });
            }
            size += stored;
            if !self.inner.layers.contains(diff_id) {
                let file = content.open_blob(&blob, "layer")?;
                self.inner.layers.unpack(
                    diff_id,
                    BufReader::with_capacity(256 * 1024, file),
                    budget,
                )?;
            }
        }
        let (os, architecture) = (config.os().to_string(), config.architecture().to_string());
        if (os.as_str(), architecture.as_str()) != manifest::host_platform() {
            tracing::warn!(manifest = %manifest_digest, %os, %architecture, "image is for another platform than this host");
        }
        let record = ImageRecord {
            digest: manifest_digest.clone(),
            config_digest,
            config: ImageConfig::from_oci(&config),
            diff_ids,
            size,
            created: config.created().clone(),
            architecture,
            os,
            indexes,
            last_used: Some(now_millis()),
        };
        let names = {
            let _guard = self.lock_metadata();
            self.write_record(&record)?;
            self.point_names(names, manifest_digest, origin)?
        };
        tracing::info!(image = %manifest_digest, ?names, layers = layers.len(), "image imported");
        Ok(record.into_image(names))
    }

    /// Finds an image by `sha256:<hex>`, `name@sha256:<hex>` or a name in any of its
    /// short forms (`busybox`, `busybox:latest`, `docker.io/library/busybox:latest`).
    /// A digest identifies the image on its own: the name before `@` is validated but
    /// not required to be one of the image's names; a pulled `name@<index digest>` is
    /// found through its name. Records the time of use for LRU eviction.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let reference = reference.trim();
        let digest = self.find(reference)?;
        let not_found = || ImageError::NotFound {
            reference: reference.to_owned(),
        };
        let record = self.touch(&digest)?.ok_or_else(not_found)?;
        let names = self.names_of(&self.read_names()?, &digest);
        Ok(record.into_image(names))
    }

    /// The manifest digest a reference designates (the image may not be stored).
    fn find(&self, reference: &str) -> Result<Digest, ImageError> {
        if reference.starts_with("sha256:") {
            return Digest::parse(reference);
        }
        let parsed = Reference::parse(reference)?;
        let named = self.read_names()?.refs.remove(&parsed.to_string());
        match (named, parsed.digest()) {
            (Some(digest), _) => Ok(digest),
            (None, Some(digest)) => Ok(digest.clone()),
            (None, None) => Err(ImageError::NotFound {
                reference: reference.to_owned(),
            }),
        }
    }

    /// Sets an image's last-used time to now and returns its record, if it exists.
    fn touch(&self, digest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        let _guard = self.lock_metadata();
        let Some(mut record) = self.read_record(digest)? else {
            return Ok(None);
        };
        self.touch_locked(&mut record)?;
        Ok(Some(record))
    }

    /// [`ImageStore::touch`] of a record already read; the caller holds the metadata
    /// lock. The record is replaced atomically but not synced to disk: the last-used
    /// time only orders evictions, and every task start sets it, so losing the latest
    /// one in a crash is harmless while an fsync per task start is not.
    fn touch_locked(&self, record: &mut ImageRecord) -> Result<(), ImageError> {
        record.last_used = Some(now_millis());
        let bytes = serde_json::to_vec_pretty(&*record).expect("an image record always serializes");
        write_atomically(
            &self.inner.images_dir,
            &self.record_path(&record.digest),
            &bytes,
            Durability::Unsynced,
        )
    }

    fn lock_metadata(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .metadata_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The image `reference` names if that name came from an archive load (`skiff image
    /// load`): such an image has no registry to check its tag against.
    pub fn resolve_loaded(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let Ok(name) = normalize_reference(reference.trim()) else {
            return Ok(None);
        };
        if !self.read_names()?.loaded.contains(&name) {
            return Ok(None);
        }
        self.resolve(&name).map(Some)
    }

    /// All loaded images, sorted by digest.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let dir = &self.inner.images_dir;
        let entries =
            std::fs::read_dir(dir).map_err(|source| ImageError::io("list", dir, source))?;
        let names = self.read_names()?;
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::io("list", dir, source))?;
            let file_name = entry.file_name();
            let Some(hex) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(digest) = Digest::from_hex(hex) else {
                continue;
            };
            if let Some(record) = self.read_record(&digest)? {
                images.push(record.into_image(self.names_of(&names, &digest)));
            }
        }
        images.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(images)
    }

    /// The unpacked layer directories of an image, lowest layer first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .diff_ids
            .iter()
            .map(|diff_id| {
                let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
                self.inner.layers.dir().join(hex)
            })
            .collect()
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.inner.images_dir.join(format!("{}.json", digest.hex()))
    }

    fn read_record(&self, digest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        let path = self.record_path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImageError::io("read image record", path, source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ImageError::CorruptRecord { path, source })
    }

    fn write_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(record).expect("an image record always serializes");
        write_atomically(
            &self.inner.images_dir,
            &self.record_path(&record.digest),
            &bytes,
            Durability::Synced,
        )
    }

    fn read_names(&self) -> Result<NameIndex, ImageError> {
        let path = &self.inner.refs_path;
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImageError::CorruptRecord {
                    path: path.clone(),
                    source,
                })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(NameIndex::default()),
            Err(source) => Err(ImageError::io("read the image name index", path, source)),
        }
    }

    fn names_of(&self, index: &NameIndex, digest: &Digest) -> Vec<String> {
        index
            .refs
            .iter()
            .filter(|(_, target)| *target == digest)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Points `names` at `digest` and returns all names of `digest`. The caller holds
    /// the metadata lock.
    fn point_names(
        &self,
        names: &[String],
        digest: &Digest,
        origin: Origin,
    ) -> Result<Vec<String>, ImageError> {
        let mut index = self.read_names()?;
        let mut changed = false;
        for name in names {
            changed |= match origin {
                Origin::Archive => index.loaded.insert(name.clone()),
                Origin::Registry => index.loaded.remove(name),
            };
            let previous = index.refs.insert(name.clone(), digest.clone());
            if previous.as_ref() != Some(digest) {
                changed = true;
                if let Some(previous) = previous {
                    tracing::info!(name = %name, from = %previous, to = %digest, "image name moved to a new image");
                }
            }
        }
        if changed {
            self.write_names(&index)?;
        }
        Ok(self.names_of(&index, digest))
    }

    /// Replaces `refs.json`. The caller holds the metadata lock.
    fn write_names(&self, index: &NameIndex) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(index).expect("the name index always serializes");
        write_atomically(
            &self.inner.root,
            &self.inner.refs_path,
            &bytes,
            Durability::Synced,
        )
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Whether [`write_atomically`] syncs the new contents before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Unsynced,
}

/// Writes `bytes` to `path` through a temporary file in `dir` and a rename: readers see
/// the old contents or the new, never a mix.
fn write_atomically(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), ImageError> {
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|source| ImageError::io("create a temporary file in", dir, source))?;
    temp.write_all(bytes)
        .and_then(|()| match durability {
            Durability::Synced => temp.as_file().sync_data(),
            Durability::Unsynced => Ok(()),
        })
        .map_err(|source| ImageError::io("write", temp.path().to_owned(), source))?;
    temp.persist(path)
        .map_err(|err| ImageError::io("replace", path, err.error))?;
    Ok(())
}

/// Removes `.tmp-*` files and directories a crashed writer left in `dir`.
fn remove_temporaries(dir: &Path) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ImageError::io("list", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| ImageError::io("list", dir, source))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| ImageError::io("remove leftover temporary", &path, source))?;
        tracing::warn!(path = %path.display(), "removed a temporary left by an interrupted import");
    }
    Ok(())
}

mod feed;
mod gc;
mod pull;
#[cfg(test)]
mod tests;

pub use gc::{PruneReport, RemoveOutcome};
pub use pull::{ImageHold, LayerState, PullOptions, PullProgress};
