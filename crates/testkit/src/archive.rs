//! Image configs and the two archive formats `skiff image load` accepts.
//!
//! OCI image layout (what `skopeo copy oci-archive:` and buildkit write):
//!
//! ```text
//! oci-layout                      {"imageLayoutVersion":"1.0.0"}
//! blobs/sha256/<hex>              layers, configs, manifests (each once)
//! index.json                      one descriptor per image, with name annotations
//! ```
//!
//! `docker save` (the classic layout, before docker 25):
//!
//! ```text
//! <v1-id>/layer.tar               the layer blob; a symlink to the first copy when the
//!                                 same layer appears under another chain id
//! <v1-id>/VERSION, <v1-id>/json   legacy metadata
//! <config-hex>.json               the image config
//! manifest.json                   [{"Config", "RepoTags", "Layers"}], written last
//! repositories                    {"repo": {"tag": "<top v1-id>"}}
//! ```
//!
//! The v1 id of a layer is derived from the chain of diff ids below and including it,
//! like docker's, so a layer shared at the same depth is written once and the same layer
//! at another depth becomes a symlink, which exercises the reader's symlink handling.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use tar::{EntryType, Header};

use crate::layer::{Compression, Layer, DEFAULT_MTIME};
use crate::{sha256_digest, TestkitError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// An image: layers (lowest first), runtime config and names.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: BTreeSet<String>,
    labels: BTreeMap<String, String>,
    architecture: String,
    os: String,
    created: String,
    annotations: BTreeMap<String, String>,
    repo_tags: Vec<String>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The `GOARCH` name of the architecture this code runs on.
fn host_architecture() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
    .to_owned()
}

impl ImageBuilder {
    /// An image with no layers for the host's architecture and no names.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            exposed_ports: BTreeSet::new(),
            labels: BTreeMap::new(),
            architecture: host_architecture(),
            os: "linux".to_owned(),
            created: "2024-01-01T00:00:00Z".to_owned(),
            annotations: BTreeMap::new(),
            repo_tags: Vec::new(),
        }
    }

    /// Adds a layer on top of the previous ones.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `Cmd`.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds `NAME=value` to `Env`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push(format!("{name}={value}"));
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_owned());
        self
    }

    /// Sets `User` (`name`, `uid`, `uid:gid`, ...).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Adds an `ExposedPorts` key such as `8080/tcp`.
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.insert(port.to_owned());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the architecture (a `GOARCH` name); the host's by default.
    pub fn architecture(mut self, architecture: &str) -> Self {
        self.architecture = architecture.to_owned();
        self
    }

    /// Sets the `org.opencontainers.image.ref.name` annotation of the OCI index entry.
    pub fn ref_name(self, name: &str) -> Self {
        self.annotation(crate::ANNOTATION_REF_NAME, name)
    }

    /// Sets an annotation on the image's descriptor in the OCI `index.json`.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a `RepoTags` entry for the docker-save format (`busybox:latest`).
    pub fn repo_tag(mut self, tag: &str) -> Self {
        self.repo_tags.push(tag.to_owned());
        self
    }

    /// The image config JSON.
    pub fn config_json(&self) -> Result<Vec<u8>, TestkitError> {
        let mut config = serde_json::Map::new();
        if let Some(entrypoint) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            config.insert("Cmd".into(), json!(cmd));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(dir) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(dir));
        }
        if let Some(user) = &self.user {
            config.insert("User".into(), json!(user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: BTreeMap<&String, Value> =
                self.exposed_ports.iter().map(|p| (p, json!({}))).collect();
            config.insert("ExposedPorts".into(), json!(ports));
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), json!(self.labels));
        }
        let diff_ids = self
            .layers
            .iter()
            .map(Layer::diff_id)
            .collect::<Result<Vec<_>, _>>()?;
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|_| json!({"created": self.created, "created_by": "testkit"}))
            .collect();
        let document = json!({
            "architecture": self.architecture,
            "os": self.os,
            "created": self.created,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        Ok(serde_json::to_vec(&document).expect("a JSON value always serializes"))
    }

    /// The OCI manifest JSON for the layer blobs and config.
    fn oci_manifest(&self, config: &[u8], blobs: &[Vec<u8>]) -> Vec<u8> {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .zip(blobs)
            .map(|(layer, blob)| {
                json!({
                    "mediaType": layer.compression_kind().oci_media_type(),
                    "digest": sha256_digest(blob),
                    "size": blob.len(),
                })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": config.len()},
            "layers": layers,
        });
        serde_json::to_vec(&manifest).expect("a JSON value always serializes")
    }

    /// Digest of the manifest this image gets in an OCI archive.
    pub fn manifest_digest(&self) -> Result<String, TestkitError> {
        let blobs = self.layer_blobs()?;
        Ok(sha256_digest(
            &self.oci_manifest(&self.config_json()?, &blobs),
        ))
    }

    fn layer_blobs(&self) -> Result<Vec<Vec<u8>>, TestkitError> {
        self.layers.iter().map(Layer::blob).collect()
    }

    /// This image alone as an OCI image-layout tarball.
    pub fn oci_archive(&self) -> Result<Vec<u8>, TestkitError> {
        Archive::oci().image(self.clone()).to_bytes()
    }

    /// This image alone as a `docker save` tarball.
    pub fn docker_archive(&self) -> Result<Vec<u8>, TestkitError> {
        Archive::docker().image(self.clone()).to_bytes()
    }
}

/// Which tarball layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).
    Oci,
    /// Classic `docker save` (`manifest.json`, `<id>/layer.tar`).
    Docker,
}

/// One or more images in one tarball.
#[derive(Debug, Clone)]
pub struct Archive {
    format: ArchiveFormat,
    images: Vec<ImageBuilder>,
    compression: Compression,
}

impl Archive {
    /// An empty OCI image-layout archive, not compressed as a whole.
    pub fn oci() -> Self {
        Self {
            format: ArchiveFormat::Oci,
            images: Vec::new(),
            compression: Compression::None,
        }
    }

    /// An empty `docker save` archive, not compressed as a whole.
    pub fn docker() -> Self {
        Self {
            format: ArchiveFormat::Docker,
            ..Self::oci()
        }
    }

    /// Adds an image.
    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// Compresses the whole tarball (like `docker save | gzip`).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The archive bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TestkitError> {
        let mut writer = ArchiveWriter::default();
        match self.format {
            ArchiveFormat::Oci => self.write_oci(&mut writer)?,
            ArchiveFormat::Docker => self.write_docker(&mut writer)?,
        }
        let tar = writer.builder.into_inner().map_err(TestkitError::Stream)?;
        self.compression.compress(&tar)
    }

    /// Writes the archive into `out`.
    pub fn write_to(&self, mut out: impl Write) -> Result<(), TestkitError> {
        out.write_all(&self.to_bytes()?)
            .map_err(TestkitError::Stream)
    }

    /// Writes the archive to a file.
    pub fn write_file(&self, path: &Path) -> Result<(), TestkitError> {
        std::fs::write(path, self.to_bytes()?).map_err(|source| TestkitError::Write {
            path: path.to_owned(),
            source,
        })
    }

    fn write_oci(&self, writer: &mut ArchiveWriter) -> Result<(), TestkitError> {
        writer.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut descriptors = Vec::new();
        for image in &self.images {
            let blobs = image.layer_blobs()?;
            let config = image.config_json()?;
            let manifest = image.oci_manifest(&config, &blobs);
            for blob in blobs.iter().chain([&config, &manifest]) {
                writer.blob(blob)?;
            }
            let mut descriptor = json!({
                "mediaType": OCI_MANIFEST,
                "digest": sha256_digest(&manifest),
                "size": manifest.len(),
            });
            if !image.annotations.is_empty() {
                descriptor["annotations"] = json!(image.annotations);
            }
            descriptors.push(descriptor);
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors});
        writer.file(
            "index.json",
            &serde_json::to_vec(&index).expect("JSON value"),
        )
    }

    fn write_docker(&self, writer: &mut ArchiveWriter) -> Result<(), TestkitError> {
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // Where each layer blob was first written, to symlink later copies to it.
        let mut first_copy: BTreeMap<String, String> = BTreeMap::new();
        for image in &self.images {
            let config = image.config_json()?;
            let config_name = format!("{}.json", &sha256_digest(&config)["sha256:".len()..]);
            let mut layer_paths = Vec::new();
            let mut chain = String::new();
            for layer in &image.layers {
                let blob = layer.blob()?;
                chain = sha256_digest(format!("{chain} {}", layer.diff_id()?).as_bytes());
                let v1_id = chain["sha256:".len()..].to_owned();
                let path = format!("{v1_id}/layer.tar");
                if writer.written.insert(path.clone()) {
                    writer.dir(&v1_id)?;
                    writer.file(&format!("{v1_id}/VERSION"), b"1.0")?;
                    writer.file(
                        &format!("{v1_id}/json"),
                        format!(r#"{{"id":"{v1_id}"}}"#).as_bytes(),
                    )?;
                    match first_copy.get(&sha256_digest(&blob)) {
                        Some(first) => writer.symlink(&path, &format!("../{first}"))?,
                        None => {
                            writer.file(&path, &blob)?;
                            first_copy.insert(sha256_digest(&blob), path.clone());
                        }
                    }
                }
                layer_paths.push(path);
            }
            if writer.written.insert(config_name.clone()) {
                writer.file(&config_name, &config)?;
            }
            for tag in &image.repo_tags {
                if let (Some((repo, tag)), Some(top)) = (tag.rsplit_once(':'), layer_paths.last()) {
                    let top_id = top.trim_end_matches("/layer.tar").to_owned();
                    repositories
                        .entry(repo.to_owned())
                        .or_default()
                        .insert(tag.to_owned(), top_id);
                }
            }
            manifest.push(json!({
                "Config": config_name,
                "RepoTags": if image.repo_tags.is_empty() { Value::Null } else { json!(image.repo_tags) },
                "Layers": layer_paths,
            }));
        }
        writer.file(
            "manifest.json",
            &serde_json::to_vec(&manifest).expect("JSON value"),
        )?;
        writer.file(
            "repositories",
            &serde_json::to_vec(&repositories).expect("JSON value"),
        )
    }
}

/// A tar builder that remembers which blobs it already wrote.
struct ArchiveWriter {
    builder: tar::Builder<Vec<u8>>,
    written: BTreeSet<String>,
}

impl Default for ArchiveWriter {
    fn default() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            written: BTreeSet::new(),
        }
    }
}

impl ArchiveWriter {
    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(DEFAULT_MTIME);
        header
    }

    fn file(&mut self, path: &str, data: &[u8]) -> Result<(), TestkitError> {
        let mut header = Self::header(EntryType::Regular, 0o644, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .map_err(|source| TestkitError::TarEntry {
                path: path.to_owned(),
                source,
            })
    }

    fn dir(&mut self, path: &str) -> Result<(), TestkitError> {
        let mut header = Self::header(EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut header, format!("{path}/"), std::io::empty())
            .map_err(|source| TestkitError::TarEntry {
                path: path.to_owned(),
                source,
            })
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), TestkitError> {
        let mut header = Self::header(EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut header, path, target)
            .map_err(|source| TestkitError::TarEntry {
                path: path.to_owned(),
                source,
            })
    }

    /// Writes `blobs/sha256/<hex>` unless an earlier image already did.
    fn blob(&mut self, data: &[u8]) -> Result<(), TestkitError> {
        let digest = sha256_digest(data);
        let path = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        if self.written.insert(path.clone()) {
            self.file(&path, data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Read;

    use super::*;

    fn files(tar: &[u8]) -> HashMap<String, (EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        let mut files = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            if kind == EntryType::Symlink {
                data = entry.link_name_bytes().unwrap().into_owned();
            } else {
                entry.read_to_end(&mut data).unwrap();
            }
            files.insert(path, (kind, data));
        }
        files
    }

    fn image() -> ImageBuilder {
        ImageBuilder::new()
            .layer(Layer::new().file("a", "a"))
            .entrypoint(["/bin/sh", "-c"])
            .cmd(["echo hi"])
            .env("PATH", "/bin")
            .working_dir("/srv")
            .user("65534")
            .expose("8080/tcp")
            .ref_name("example.com/app:1")
            .repo_tag("example.com/app:1")
    }

    #[test]
    fn oci_archive_has_layout_index_and_verified_blobs() {
        let image = image();
        let tar = image.oci_archive().unwrap();
        let files = files(&tar);
        assert!(files.contains_key("oci-layout"));
        for (path, (_, data)) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_digest(data), format!("sha256:{hex}"));
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        let descriptor = &index["manifests"][0];
        assert_eq!(
            descriptor["digest"],
            json!(image.manifest_digest().unwrap())
        );
        assert_eq!(
            descriptor["annotations"][crate::ANNOTATION_REF_NAME],
            json!("example.com/app:1")
        );
        let config: Value = serde_json::from_slice(&image.config_json().unwrap()).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(config["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            json!(Layer::new().file("a", "a").diff_id().unwrap())
        );
    }

    #[test]
    fn docker_archive_symlinks_a_layer_reused_at_another_depth() {
        let shared = Layer::new().file("shared", "s");
        let first = ImageBuilder::new()
            .layer(shared.clone())
            .repo_tag("one:latest");
        let second = ImageBuilder::new()
            .layer(Layer::new().file("base", "b"))
            .layer(shared)
            .repo_tag("two:latest");
        let tar = Archive::docker()
            .image(first)
            .image(second)
            .to_bytes()
            .unwrap();
        let files = files(&tar);
        let manifest: Value = serde_json::from_slice(&files["manifest.json"].1).unwrap();
        assert_eq!(manifest[1]["RepoTags"], json!(["two:latest"]));
        let second_top = manifest[1]["Layers"][1].as_str().unwrap();
        let (kind, target) = &files[second_top];
        assert_eq!(*kind, EntryType::Symlink);
        let first_layer = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(target, format!("../{first_layer}").as_bytes());
        let repositories: Value = serde_json::from_slice(&files["repositories"].1).unwrap();
        assert!(repositories["one"]["latest"].is_string());
    }

    #[test]
    fn whole_archive_compression() {
        let bytes = Archive::oci()
            .image(image())
            .compression(Compression::Gzip)
            .to_bytes()
            .unwrap();
        assert_eq!(&bytes[..2], [0x1f, 0x8b]);
    }
}
