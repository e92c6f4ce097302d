//! Reads `docker save` and OCI image-layout tarballs into the content store.
//!
//! The archive is read once, as a stream (it may be gzip- or zstd-compressed as a
//! whole, so it cannot be seeked), and nothing large is held in memory:
//!
//! - `blobs/sha256/<hex>` files go straight into the content store, verified against
//!   the digest their path announces;
//! - `index.json`, `manifest.json` and `oci-layout` are kept in memory (bounded);
//! - the legacy `<id>/json`, `<id>/VERSION` and `repositories` files are skipped;
//! - every other file (docker's `<id>/layer.tar`, `<config>.json`) is stored under the
//!   digest computed while copying it, and remembered by path;
//! - symlinks (docker writes one when a layer repeats under another chain id) are
//!   remembered and resolved when a path is looked up.
//!
//! Only after the last entry, when all metadata is known whatever its position in the
//! tarball, are the images worked out: from `index.json` if present (OCI layout, also
//! written by docker 25+), else from `manifest.json`, for which a Docker schema 2
//! manifest is synthesized. The result is a list of manifest digests with their names,
//! for the store to import exactly like a pulled image.

use std::collections::HashMap;
use std::io::Read;

use oci_spec::image::ImageIndex;
use serde::Deserialize;

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, DocumentKind};
use crate::reference::normalize_reference;
use crate::unpack::{decompress, Compression};

/// Annotation naming an image in an OCI layout: a tag, or a full reference.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and docker 25+ put on index entries with the full name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Largest `index.json` / `manifest.json` / `oci-layout` accepted.
const METADATA_LIMIT: u64 = 4 * 1024 * 1024;
/// Nested indexes followed before giving up (real ones nest once at most).
const MAX_INDEX_DEPTH: usize = 4;
/// Symlinks followed when resolving a path of the archive.
const MAX_SYMLINK_HOPS: usize = 8;

/// An image found in an archive: its manifest (now in the content store) and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Digest of the image manifest.
    pub manifest: Digest,
    /// Normalized references to register; empty if the archive gave no usable name.
    pub names: Vec<String>,
}

/// What the single pass over the archive collected.
#[derive(Default)]
struct Contents {
    index: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    layout: Option<Vec<u8>>,
    /// Stored files by archive path.
    files: HashMap<String, (Digest, u64)>,
    /// Symlinks by archive path, target already made relative to the archive root.
    symlinks: HashMap<String, String>,
}

/// Reads an archive, storing its blobs, and returns the images it holds.
pub fn read_archive(
    content: &ContentStore,
    reader: impl Read,
) -> Result<Vec<ArchiveImage>, ImageError> {
    let contents = collect(content, reader)?;
    let images = if let Some(index) = &contents.index {
        if let Some(layout) = &contents.layout {
            check_layout_version(layout)?;
        }
        oci_images(content, index)?
    } else if let Some(docker_manifest) = &contents.docker_manifest {
        docker_images(content, &contents, docker_manifest)?
    } else {
        return Err(ImageError::UnrecognizedArchive);
    };
    if images.is_empty() {
        return Err(ImageError::EmptyArchive);
    }
    Ok(images)
}

fn collect(content: &ContentStore, reader: impl Read) -> Result<Contents, ImageError> {
    let (_, stream) = decompress(reader).map_err(ImageError::ArchiveRead)?;
    let mut archive = tar::Archive::new(stream);
    let mut contents = Contents::default();
    for entry in archive.entries().map_err(ImageError::ArchiveRead)? {
        let mut entry = entry.map_err(ImageError::ArchiveRead)?;
        let path = normalize_path(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                contents
                    .symlinks
                    .insert(path.clone(), resolve_relative(&path, &target));
            }
            continue;
        }
        if !kind.is_file() && !kind.is_contiguous() {
            continue;
        }
        let size = entry.size();
        match path.as_str() {
            "index.json" => contents.index = Some(read_metadata(&mut entry, &path, size)?),
            "manifest.json" => {
                contents.docker_manifest = Some(read_metadata(&mut entry, &path, size)?)
            }
            "oci-layout" => contents.layout = Some(read_metadata(&mut entry, &path, size)?),
            "repositories" => {}
            _ if path.ends_with("/json") || path.ends_with("/VERSION") => {}
            _ => {
                let stored = match path.strip_prefix("blobs/sha256/") {
                    Some(hex) => {
                        let digest = Digest::from_hex(hex)?;
                        let size = content.write(&digest, Some(size), &mut entry)?;
                        (digest, size)
                    }
                    None => content.ingest(&mut entry)?,
                };
                tracing::debug!(path = %path, digest = %stored.0, size = stored.1, "stored archive file");
                contents.files.insert(path, stored);
            }
        }
    }
    Ok(contents)
}

fn read_metadata(entry: &mut impl Read, path: &str, size: u64) -> Result<Vec<u8>, ImageError> {
    if size > METADATA_LIMIT {
        return Err(ImageError::ArchiveMetadataTooLarge {
            file: path.to_owned(),
            limit: METADATA_LIMIT,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(METADATA_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(ImageError::ArchiveRead)?;
    Ok(bytes)
}

/// `./a//b/` -> `a/b`; `..` components are resolved lexically (paths in the archive
/// are only lookup keys, never filesystem paths).
fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// Resolves a symlink target relative to the directory of the link.
fn resolve_relative(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize_path(target);
    }
    let dir = link.rsplit_once('/').map_or("", |(dir, _)| dir);
    normalize_path(&format!("{dir}/{target}"))
}

fn check_layout_version(layout: &[u8]) -> Result<(), ImageError> {
    #[derive(Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let layout: Layout =
        serde_json::from_slice(layout).map_err(|source| ImageError::ArchiveMetadata {
            file: "oci-layout",
            source,
        })?;
    if layout.version != "1.0.0" {
        return Err(ImageError::UnsupportedLayoutVersion {
            version: layout.version,
        });
    }
    Ok(())
}

fn oci_images(content: &ContentStore, index: &[u8]) -> Result<Vec<ArchiveImage>, ImageError> {
    let index: ImageIndex =
        serde_json::from_slice(index).map_err(|source| ImageError::ArchiveMetadata {
            file: "index.json",
            source,
        })?;
    let mut images: Vec<ArchiveImage> = Vec::new();
    for descriptor in index.manifests() {
        let digest = manifest::descriptor_digest(descriptor)?;
        let manifest = match manifest::document_kind(descriptor.media_type()) {
            DocumentKind::Manifest => digest,
            DocumentKind::Index => platform_manifest(content, &digest, 0)?,
            DocumentKind::Other => {
                tracing::debug!(%digest, media_type = %descriptor.media_type(), "skipping index entry that is not an image");
                continue;
            }
        };
        let names = descriptor
            .annotations()
            .as_ref()
            .map(|annotations| oci_names(&manifest, annotations))
            .unwrap_or_default();
        if names.is_empty() {
            let ref_name = descriptor
                .annotations()
                .as_ref()
                .and_then(|annotations| annotations.get(ANNOTATION_REF_NAME));
            tracing::warn!(
                %manifest, ?ref_name,
                "the OCI layout gives this image no name with a repository (a bare tag is not \
                 enough); it is registered by digest only"
            );
        }
        match images.iter_mut().find(|image| image.manifest == manifest) {
            Some(image) => {
                for name in names {
                    if !image.names.contains(&name) {
                        image.names.push(name);
                    }
                }
            }
            None => images.push(ArchiveImage { manifest, names }),
        }
    }
    Ok(images)
}

/// Follows a (possibly nested) index to the manifest for the host platform.
fn platform_manifest(
    content: &ContentStore,
    index_digest: &Digest,
    depth: usize,
) -> Result<Digest, ImageError> {
    let bytes = content.read_document(index_digest, "image index")?;
    let index = manifest::parse_index(index_digest, &bytes)?;
    let chosen = manifest::select_platform(index_digest, &index)?;
    let digest = manifest::descriptor_digest(&chosen)?;
    match manifest::document_kind(chosen.media_type()) {
        DocumentKind::Index if depth < MAX_INDEX_DEPTH => {
            platform_manifest(content, &digest, depth + 1)
        }
        _ => Ok(digest),
    }
}

/// Names from the annotations of an OCI index entry. `ref.name` counts only when it is
/// a full reference (has a `/`, `:` or `@`); a bare tag such as `1.0` or `latest` has no
/// repository, so the containerd name is used instead, if any.
fn oci_names(manifest: &Digest, annotations: &HashMap<String, String>) -> Vec<String> {
    let ref_name = annotations.get(ANNOTATION_REF_NAME);
    let candidate = match ref_name {
        Some(name) if name.contains(['/', ':', '@']) => Some(name),
        _ => annotations.get(ANNOTATION_CONTAINERD_NAME),
    };
    let Some(candidate) = candidate else {
        return Vec::new();
    };
    match normalize_reference(candidate) {
        Ok(name) => vec![name],
        Err(err) => {
            tracing::warn!(%manifest, name = %candidate, error = %err, "ignoring an invalid image name in the archive");
            Vec::new()
        }
    }
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn docker_images(
    content: &ContentStore,
    contents: &Contents,
    manifest_json: &[u8],
) -> Result<Vec<ArchiveImage>, ImageError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(manifest_json).map_err(|source| ImageError::ArchiveMetadata {
            file: "manifest.json",
            source,
        })?;
    let mut images = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = lookup(contents, &entry.config)?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for path in &entry.layers {
            let (digest, size) = lookup(contents, path)?;
            layers.push((digest.clone(), size, stored_compression(content, &digest)?));
        }
        let manifest = manifest::docker_manifest((&config_digest, config_size), &layers);
        let (manifest_digest, _) = content.ingest(manifest.as_slice())?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            match normalize_reference(&tag) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(manifest = %manifest_digest, name = %tag, error = %err, "ignoring an invalid RepoTags entry")
                }
            }
        }
        if names.is_empty() {
            tracing::warn!(manifest = %manifest_digest, "the archive gives this image no name; it is registered by digest only");
        }
        images.push(ArchiveImage {
            manifest: manifest_digest,
            names,
        });
    }
    Ok(images)
}

/// Finds a stored file by archive path, following the archive's symlinks.
fn lookup(contents: &Contents, path: &str) -> Result<(Digest, u64), ImageError> {
    let mut current = normalize_path(path);
    for _ in 0..=MAX_SYMLINK_HOPS {
        if let Some(found) = contents.files.get(&current) {
            return Ok(found.clone());
        }
        match contents.symlinks.get(&current) {
            Some(target) => current = target.clone(),
            None => break,
        }
    }
    Err(ImageError::MissingArchiveFile {
        path: path.to_owned(),
    })
}

fn stored_compression(content: &ContentStore, digest: &Digest) -> Result<Compression, ImageError> {
    let mut magic = Vec::with_capacity(4);
    content
        .open_blob(digest, "layer")?
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|source| ImageError::io("read blob", content.path(digest), source))?;
    Ok(Compression::detect(&magic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_symlinks_resolve_lexically() {
        assert_eq!(normalize_path("./a//b/"), "a/b");
        assert_eq!(
            resolve_relative("abc/layer.tar", "../def/layer.tar"),
            "def/layer.tar"
        );
        assert_eq!(resolve_relative("top", "/x/y"), "x/y");
    }

    #[test]
    fn oci_names_follow_the_annotation_rules() {
        let digest = Digest::of(b"m");
        let names = |pairs: &[(&str, &str)]| {
            let map = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            oci_names(&digest, &map)
        };
        assert_eq!(
            names(&[(ANNOTATION_REF_NAME, "busybox:1.36")]),
            ["docker.io/library/busybox:1.36"]
        );
        assert_eq!(
            names(&[(ANNOTATION_REF_NAME, "127.0.0.1:5000/app")]),
            ["127.0.0.1:5000/app:latest"]
        );
        assert_eq!(
            names(&[
                (ANNOTATION_REF_NAME, "latest"),
                (ANNOTATION_CONTAINERD_NAME, "docker.io/team/app:2")
            ]),
            ["docker.io/team/app:2"]
        );
        assert!(names(&[(ANNOTATION_REF_NAME, "1.0")]).is_empty());
        assert!(names(&[(ANNOTATION_REF_NAME, "Bad:Name")]).is_empty());
        assert!(names(&[]).is_empty());
    }
}
