//! Cache management: untagging, garbage collection, LRU eviction, disk usage.
//!
//! ```text
//!  remove(ref)          untag; an image left without a tag loses its record
//!  prune(in_use)        drop nameless images, then collect garbage
//!  evict_to(max, in_use) collect garbage, then drop least recently used images one by
//!                       one, collecting after each, until the store fits in `max`;
//!                       images named by `skiff image load` are never dropped: they
//!                       have no registry to be pulled again from
//!
//!  collect garbage = mark:  roots are every image record and every in-use manifest;
//!                           each marks its manifest, config, indexes, layer blobs and
//!                           diff ids (read from the stored manifest and config)
//!                    sweep: blobs and layer dirs neither marked nor pinned are renamed
//!                           to `.tmp-gc-*`, then deleted outside the locks
//! ```
//!
//! Races with pulls are closed by pins: a pull pins each digest before it looks for
//! it in the store and until its image is recorded, and mark and sweep run under the
//! pins lock, so a blob is either pinned, or reachable from a record written before
//! the sweep looked. Archive loads hold the `loads` lock shared, collection holds it
//! exclusively. An in-use image stays whole even if its record was removed meanwhile,
//! because its manifest is a root. A crash in the middle leaves `.tmp-*` entries,
//! which the next open removes.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{ImageRecord, ImageStore};
use crate::content::TEMP_PREFIX;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest;
use crate::reference::Reference;

/// What [`ImageStore::prune`] and [`ImageStore::evict_to`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Manifest digests of the images whose records were removed.
    pub images_removed: Vec<String>,
    /// Blobs (manifests, configs, indexes, layer blobs) deleted.
    pub blobs_removed: usize,
    /// Unpacked layer directories deleted.
    pub layers_removed: usize,
    /// Disk space given back, in bytes.
    pub bytes_freed: u64,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// Names removed, sorted.
    pub untagged: Vec<String>,
    /// The image whose record was removed, if no tag was left on it. Its blobs and
    /// layers are freed by the next [`ImageStore::prune`].
    pub deleted: Option<String>,
}

/// Digests a pull in progress needs; released on drop.
pub(super) struct Pins {
    store: ImageStore,
    digests: Vec<Digest>,
}

impl Pins {
    /// Pins `digest` until this is dropped.
    pub(super) fn add(&mut self, digest: &Digest) {
        *self.store.lock_pins().entry(digest.clone()).or_default() += 1;
        self.digests.push(digest.clone());
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut pins = self.store.lock_pins();
        for digest in &self.digests {
            if let Some(count) = pins.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(digest);
                }
            }
        }
    }
}

/// Everything reachable from the roots.
#[derive(Default)]
struct Marked {
    blobs: HashSet<Digest>,
    layers: HashSet<Digest>,
}

impl ImageStore {
    pub(super) fn pin(&self) -> Pins {
        Pins {
            store: self.clone(),
            digests: Vec::new(),
        }
    }

    fn lock_pins(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a name. A tag (`app:1`) is untagged, and if the image has no tag left,
    /// its digest names go too and its record is removed. A digest (`sha256:<hex>`,
    /// `app@sha256:<hex>`) removes the image and every name of it. Disk space is
    /// freed by the next [`ImageStore::prune`], which keeps images of running tasks.
    pub fn remove(&self, reference: &str) -> Result<RemoveOutcome, ImageError> {
        let reference = reference.trim();
        let not_found = || ImageError::NotFound {
            reference: reference.to_owned(),
        };
        let _guard = self.lock_metadata();
        let mut index = self.read_names()?;
        let (digest, whole_image, name) = if reference.starts_with("sha256:") {
            (Digest::parse(reference)?, true, None)
        } else {
            let parsed = Reference::parse(reference)?;
            let name = parsed.to_string();
            match (index.refs.get(&name), parsed.digest()) {
                (Some(digest), pinned) => (digest.clone(), pinned.is_some(), Some(name)),
                (None, Some(digest)) => (digest.clone(), true, None),
                (None, None) => return Err(not_found()),
            }
        };
        let has_record = self.read_record(&digest)?.is_some();
        let mut untagged = Vec::new();
        if let Some(name) = name {
            index.refs.remove(&name);
            index.loaded.remove(&name);
            untagged.push(name);
        } else if !has_record {
            return Err(not_found());
        }
        let remaining = self.names_of(&index, &digest);
        let delete = whole_image || !remaining.iter().any(|name| !name.contains('@'));
        if delete {
            for name in remaining {
                index.refs.remove(&name);
                index.loaded.remove(&name);
                untagged.push(name);
            }
        }
        self.write_names(&index)?;
        let deleted = if delete && has_record {
            self.delete_record(&digest)?;
            Some(digest.to_string())
        } else {
            None
        };
        untagged.sort();
        tracing::info!(reference, ?untagged, ?deleted, "removed image name");
        Ok(RemoveOutcome { untagged, deleted })
    }

    /// Removes images without names (superseded by a newer image under the same tag,
    /// or loaded without one) and every blob and unpacked layer no image references.
    /// Images in `in_use` (manifest digests of running tasks' images) and everything
    /// they need are kept, recorded or not.
    pub fn prune(&self, in_use: &HashSet<String>) -> Result<PruneReport, ImageError> {
        let _exclusive = self
            .inner
            .loads
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_use = parse_digests(in_use)?;
        let mut report = PruneReport::default();
        {
            let _guard = self.lock_metadata();
            let names = self.read_names()?;
            let pins = self.lock_pins();
            for record in self.records()? {
                let digest = &record.digest;
                if self.names_of(&names, digest).is_empty()
                    && !in_use.contains(digest)
                    && !pins.contains_key(digest)
                {
                    self.delete_record(digest)?;
                    report.images_removed.push(digest.to_string());
                }
            }
        }
        self.collect(&in_use, &mut report)?;
        tracing::info!(
            images = report.images_removed.len(),
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            "pruned image store"
        );
        Ok(report)
    }

    /// Shrinks the store to at most `max_bytes` ([`ImageStore::usage`]): collects
    /// garbage, then removes images not in `in_use`, least recently pulled or resolved
    /// first, until it fits. In-use images are never removed, nor images with a name
    /// that came from an archive load ([`ImageStore::resolve_loaded`]): with no
    /// registry behind them, removing them would fail every later task naming them
    /// (`skiff image rm` still removes them). The store may stay above `max_bytes` if
    /// those alone exceed it.
    pub fn evict_to(
        &self,
        max_bytes: u64,
        in_use: &HashSet<String>,
    ) -> Result<PruneReport, ImageError> {
        let _exclusive = self
            .inner
            .loads
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_use = parse_digests(in_use)?;
        let mut report = PruneReport::default();
        self.collect(&in_use, &mut report)?;
        let mut usage = self.usage()?;
        let mut candidates: Vec<ImageRecord> = self
            .records()?
            .into_iter()
            .filter(|record| !in_use.contains(&record.digest))
            .collect();
        candidates.sort_by(|a, b| {
            (a.last_used.unwrap_or(0), &a.digest).cmp(&(b.last_used.unwrap_or(0), &b.digest))
        });
        for record in candidates {
            if usage <= max_bytes {
                break;
            }
            {
                let _guard = self.lock_metadata();
                if self.lock_pins().contains_key(&record.digest) {
                    continue;
                }
                let mut names = self.read_names()?;
                let loaded = names
                    .refs
                    .iter()
                    .any(|(name, digest)| *digest == record.digest && names.loaded.contains(name));
                if loaded {
                    tracing::debug!(image = %record.digest, "not evicting an image loaded from an archive");
                    continue;
                }
                names.refs.retain(|_, digest| *digest != record.digest);
                self.write_names(&names)?;
                self.delete_record(&record.digest)?;
            }
            tracing::info!(image = %record.digest, last_used = ?record.last_used, "evicting least recently used image");
            report.images_removed.push(record.digest.to_string());
            let before = report.bytes_freed;
            self.collect(&in_use, &mut report)?;
            usage = usage.saturating_sub(report.bytes_freed - before);
        }
        if usage > max_bytes {
            tracing::warn!(
                usage,
                max_bytes,
                "image store is over its size limit with only in-use, pulling or archive-loaded \
                 images left"
            );
        }
        Ok(report)
    }

    /// Disk space used by blobs and unpacked layers, in bytes (allocated blocks, each
    /// hard-linked file counted once).
    pub fn usage(&self) -> Result<u64, ImageError> {
        Ok(disk_usage(self.content().dir())? + disk_usage(self.layers().dir())?)
    }

    /// All image records.
    fn records(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = &self.inner.images_dir;
        let mut records = Vec::new();
        for hex in hex_entries(dir)? {
            if let Some(record) = self.read_record(&hex)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn delete_record(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.record_path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImageError::io("remove image record", path, source)),
        }
    }

    /// Mark and sweep; see the module header.
    fn collect(
        &self,
        in_use: &HashSet<Digest>,
        report: &mut PruneReport,
    ) -> Result<(), ImageError> {
        let trash = {
            let pins = self.lock_pins();
            let marked = self.mark(in_use)?;
            let mut trash = Vec::new();
            for (dir, keep, is_layer) in [
                (self.content().dir(), &marked.blobs, false),
                (self.layers().dir(), &marked.layers, true),
            ] {
                for digest in hex_entries(dir)? {
                    if keep.contains(&digest) || pins.contains_key(&digest) {
                        continue;
                    }
                    let from = dir.join(digest.hex());
                    let to = dir.join(format!("{TEMP_PREFIX}gc-{}", digest.hex()));
                    std::fs::rename(&from, &to)
                        .map_err(|source| ImageError::io("move aside unused", &from, source))?;
                    trash.push((to, digest, is_layer));
                }
            }
            trash
        };
        for (path, digest, is_layer) in trash {
            let bytes = disk_usage(&path)?;
            let removed = if is_layer {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|source| ImageError::io("delete unused", &path, source))?;
            tracing::debug!(%digest, is_layer, bytes, "deleted unused image data");
            report.bytes_freed += bytes;
            if is_layer {
                report.layers_removed += 1;
            } else {
                report.blobs_removed += 1;
            }
        }
        Ok(())
    }

    fn mark(&self, in_use: &HashSet<Digest>) -> Result<Marked, ImageError> {
        let mut marked = Marked::default();
        let records = self.records()?;
        for record in &records {
            marked.blobs.insert(record.config_digest.clone());
            marked.blobs.extend(record.indexes.iter().cloned());
            marked.layers.extend(record.diff_ids.iter().cloned());
            self.mark_manifest(&record.digest, &mut marked);
        }
        let recorded: HashSet<&Digest> = records.iter().map(|record| &record.digest).collect();
        for digest in in_use.iter().filter(|digest| !recorded.contains(digest)) {
            self.mark_manifest(digest, &mut marked);
        }
        Ok(marked)
    }

    /// Marks a manifest and what it lists. An unreadable one marks what can be read;
    /// the rest would be garbage anyway.
    fn mark_manifest(&self, digest: &Digest, marked: &mut Marked) {
        marked.blobs.insert(digest.clone());
        let content = self.content();
        let Ok(bytes) = content.read_document(digest, "manifest") else {
            tracing::warn!(manifest = %digest, "cannot read a manifest the store references; its blobs may be collected");
            return;
        };
        let Ok(image_manifest) = manifest::parse_manifest(digest, &bytes) else {
            return;
        };
        for descriptor in image_manifest.layers() {
            if let Ok(layer) = manifest::descriptor_digest(descriptor) {
                marked.blobs.insert(layer);
            }
        }
        let Ok(config_digest) = manifest::descriptor_digest(image_manifest.config()) else {
            return;
        };
        marked.blobs.insert(config_digest.clone());
        let config = content
            .read_document(&config_digest, "config")
            .ok()
            .and_then(|bytes| manifest::parse_config(&config_digest, &bytes).ok());
        if let Some(config) = config {
            marked.layers.extend(
                config
                    .rootfs()
                    .diff_ids()
                    .iter()
                    .filter_map(|diff_id| Digest::parse(diff_id).ok()),
            );
        }
    }
}

fn parse_digests(digests: &HashSet<String>) -> Result<HashSet<Digest>, ImageError> {
    digests.iter().map(|digest| Digest::parse(digest)).collect()
}

/// Entries of `dir` named `<64 hex digits>` (or `<hex>.json`), as digests.
fn hex_entries(dir: &Path) -> Result<Vec<Digest>, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ImageError::io("list", dir, source))?;
    let mut digests = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ImageError::io("list", dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Ok(digest) = Digest::from_hex(name.strip_suffix(".json").unwrap_or(name)) {
            digests.push(digest);
        }
    }
    Ok(digests)
}

/// Allocated bytes under `path` (which may be a file), not following symlinks and
/// counting each hard-linked inode once.
fn disk_usage(path: &Path) -> Result<u64, ImageError> {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![path.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            // Removed concurrently (a temporary of an import in progress).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ImageError::io("inspect", path, source)),
        };
        if metadata.nlink() > 1
            && !metadata.is_dir()
            && !seen.insert((metadata.dev(), metadata.ino()))
        {
            continue;
        }
        total += metadata.blocks() * 512;
        if metadata.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ImageError::io("list", path, source)),
            };
            for entry in entries {
                let entry = entry.map_err(|source| ImageError::io("list", &path, source))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
