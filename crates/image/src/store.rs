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
//! Importing an image (from an archive now, from a registry later) is: blobs into the
//! content store, then [`ImageStore::import_manifest`], which unpacks missing layers,
//! writes the image record and points the names at it. Records and the name index are
//! replaced atomically (temporary file, fsync, rename), so readers never see a partial
//! file and need no lock; writers of the name index serialize on a mutex. Temporary
//! files left by a crash are removed on open, which is safe because the lock file
//! guarantees no other process is using the store.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::archive;
use crate::content::{ContentStore, TEMP_PREFIX};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, ImageConfig};
use crate::reference::Reference;
use crate::unpack::LayerStore;

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
    /// Serializes read-modify-write of `refs.json`.
    refs_lock: Mutex<()>,
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
                refs_lock: Mutex::new(()),
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
    /// failing one stay loaded.
    pub fn load_archive(&self, reader: impl Read) -> Result<Vec<Image>, ImageError> {
        let found = archive::read_archive(&self.inner.content, reader)?;
        found
            .iter()
            .map(|image| self.import_manifest(&image.manifest, &image.names))
            .collect()
    }

    /// Makes the image whose manifest (and config and layer blobs) are in the content
    /// store available: unpacks missing layers, records it, and points `names`
    /// (normalized references) at it.
    pub fn import_manifest(
        &self,
        manifest_digest: &Digest,
        names: &[String],
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
                self.inner
                    .layers
                    .unpack(diff_id, BufReader::with_capacity(256 * 1024, file))?;
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
        };
        self.write_record(&record)?;
        let names = self.point_names(names, manifest_digest)?;
        tracing::info!(image = %manifest_digest, ?names, layers = layers.len(), "image imported");
        Ok(record.into_image(names))
    }

    /// Finds an image by `sha256:<hex>`, `name@sha256:<hex>` or a name in any of its
    /// short forms (`busybox`, `busybox:latest`, `docker.io/library/busybox:latest`).
    /// A digest identifies the image on its own: the name before `@` is validated but
    /// not required to be one of the image's names.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let reference = reference.trim();
        let not_found = || ImageError::NotFound {
            reference: reference.to_owned(),
        };
        let digest = if reference.starts_with("sha256:") {
            Digest::parse(reference)?
        } else {
            let parsed = Reference::parse(reference)?;
            match parsed.digest() {
                Some(digest) => digest.clone(),
                None => self
                    .read_names()?
                    .refs
                    .remove(&parsed.to_string())
                    .ok_or_else(not_found)?,
            }
        };
        let record = self.read_record(&digest)?.ok_or_else(not_found)?;
        let names = self.names_of(&self.read_names()?, &digest);
        Ok(record.into_image(names))
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

    /// Points `names` at `digest` and returns all names of `digest`.
    fn point_names(&self, names: &[String], digest: &Digest) -> Result<Vec<String>, ImageError> {
        let _guard = self
            .inner
            .refs_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut index = self.read_names()?;
        let mut changed = false;
        for name in names {
            let previous = index.refs.insert(name.clone(), digest.clone());
            if previous.as_ref() != Some(digest) {
                changed = true;
                if let Some(previous) = previous {
                    tracing::info!(name = %name, from = %previous, to = %digest, "image name moved to a new image");
                }
            }
        }
        if changed {
            let bytes =
                serde_json::to_vec_pretty(&index).expect("the name index always serializes");
            write_atomically(&self.inner.root, &self.inner.refs_path, &bytes)?;
        }
        Ok(self.names_of(&index, digest))
    }
}

/// Writes `bytes` to `path` through a flushed temporary file in `dir` and a rename.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|source| ImageError::io("create a temporary file in", dir, source))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_data())
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

#[cfg(test)]
mod tests;
