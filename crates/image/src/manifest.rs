//! Manifests, indexes and configs: parsing with `oci-spec`, Docker v2 schema 2
//! compatibility, platform selection, and the runtime view of a config.
//!
//! Docker schema 2 documents have the same shape as their OCI counterparts (only the
//! media types differ), so both parse into `oci-spec` types; the media type decides
//! what a descriptor points at. A `docker save` archive has no manifest at all, so one
//! is synthesized ([`docker_manifest`]) to give the image a stable identity.

use std::collections::BTreeMap;

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ImageError;
use crate::unpack::Compression;

/// Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 schema 2 manifest list (the multi-platform index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a descriptor's media type says it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An image manifest (OCI or Docker).
    Manifest,
    /// An image index / manifest list.
    Index,
    /// Something else (an artifact, an attestation).
    Other,
}

/// Classifies a media type.
pub fn document_kind(media_type: &MediaType) -> DocumentKind {
    match media_type {
        MediaType::ImageManifest => DocumentKind::Manifest,
        MediaType::ImageIndex => DocumentKind::Index,
        MediaType::Other(other) if other == DOCKER_MANIFEST => DocumentKind::Manifest,
        MediaType::Other(other) if other == DOCKER_MANIFEST_LIST => DocumentKind::Index,
        _ => DocumentKind::Other,
    }
}

fn is_image_config(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageConfig)
        || matches!(media_type, MediaType::Other(other) if other == DOCKER_CONFIG)
}

/// Parses an image manifest and checks that it describes a container image.
pub fn parse_manifest(digest: &Digest, bytes: &[u8]) -> Result<ImageManifest, ImageError> {
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidDocument {
            what: "image manifest",
            digest: digest.clone(),
            source,
        })?;
    let config_type = manifest.config().media_type();
    if !is_image_config(config_type) {
        return Err(ImageError::NotAnImage {
            manifest: digest.clone(),
            media_type: config_type.to_string(),
        });
    }
    Ok(manifest)
}

/// Parses an image index or Docker manifest list.
pub fn parse_index(digest: &Digest, bytes: &[u8]) -> Result<ImageIndex, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidDocument {
        what: "image index",
        digest: digest.clone(),
        source,
    })
}

/// Parses an image config. Configs without `history` (valid, but required by
/// `oci-spec`'s type) get an empty one.
pub fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    let invalid = |source| ImageError::InvalidDocument {
        what: "image config",
        digest: digest.clone(),
        source,
    };
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    if let Some(object) = value.as_object_mut() {
        object
            .entry("history")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_value(value).map_err(invalid)
}

/// A descriptor's digest as a validated sha256 [`Digest`].
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest, ImageError> {
    Digest::parse(descriptor.digest().as_ref())
}

/// The host platform in OCI terms (`GOOS`/`GOARCH` names).
pub fn host_platform() -> (&'static str, &'static str) {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", architecture)
}

/// An OS and CPU architecture in OCI terms (`GOOS`/`GOARCH` names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
}

impl Platform {
    /// A platform from its OS and architecture names.
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
        }
    }

    /// The platform this code runs on.
    pub fn host() -> Self {
        let (os, architecture) = host_platform();
        Self::new(os, architecture)
    }
}

/// `linux/amd64`, Fargate's default `runtimePlatform`.
impl Default for Platform {
    fn default() -> Self {
        Self::new("linux", "amd64")
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// Tells an image index from an image manifest by its `mediaType`, or, when a
/// document omits it (allowed for OCI), by its shape: only an index has `manifests`.
pub fn classify_document(digest: &Digest, bytes: &[u8]) -> Result<DocumentKind, ImageError> {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let shape: Shape =
        serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidDocument {
            what: "manifest or index",
            digest: digest.clone(),
            source,
        })?;
    Ok(match shape.media_type {
        Some(media_type) => document_kind(&MediaType::from(media_type.as_str())),
        None if shape.manifests.is_some() => DocumentKind::Index,
        None => DocumentKind::Manifest,
    })
}

/// Picks the manifest for the host platform from an index.
pub fn select_platform(
    index_digest: &Digest,
    index: &ImageIndex,
) -> Result<Descriptor, ImageError> {
    select_platform_for(index_digest, index, &Platform::host())
}

/// Picks the manifest for `wanted` from an index; the error lists what the index has.
pub fn select_platform_for(
    index_digest: &Digest,
    index: &ImageIndex,
    wanted: &Platform,
) -> Result<Descriptor, ImageError> {
    let (os, architecture) = (wanted.os.as_str(), wanted.architecture.as_str());
    let mut available = Vec::new();
    for descriptor in index.manifests() {
        if document_kind(descriptor.media_type()) != DocumentKind::Manifest {
            continue;
        }
        match descriptor.platform() {
            Some(platform) => {
                let (p_os, p_arch) = (
                    platform.os().to_string(),
                    platform.architecture().to_string(),
                );
                if p_os == os && p_arch == architecture {
                    return Ok(descriptor.clone());
                }
                available.push(format!("{p_os}/{p_arch}"));
            }
            None => available.push("unspecified platform".to_owned()),
        }
    }
    Err(ImageError::NoMatchingPlatform {
        index: index_digest.clone(),
        wanted: format!("{os}/{architecture}"),
        available: if available.is_empty() {
            "no image manifests".to_owned()
        } else {
            available.join(", ")
        },
    })
}

/// Builds the Docker v2 schema 2 manifest for a `docker save` image: the config and
/// the layer blobs as they are stored (with their detected compression).
pub fn docker_manifest(config: (&Digest, u64), layers: &[(Digest, u64, Compression)]) -> Vec<u8> {
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|(digest, size, compression)| {
            let media_type = match compression {
                Compression::None => MediaType::Other(DOCKER_LAYER.to_owned()),
                Compression::Gzip => MediaType::Other(DOCKER_LAYER_GZIP.to_owned()),
                Compression::Zstd => MediaType::ImageLayerZstd,
            };
            Descriptor::new(media_type, *size, oci_digest(digest))
        })
        .collect();
    let config = Descriptor::new(
        MediaType::Other(DOCKER_CONFIG.to_owned()),
        config.1,
        oci_digest(config.0),
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::Other(DOCKER_MANIFEST.to_owned()))
        .config(config)
        .layers(layers)
        .build()
        .expect("all required manifest fields are set");
    serde_json::to_vec(&manifest).expect("an image manifest always serializes")
}

fn oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    digest
        .as_str()
        .parse()
        .expect("a validated sha256 digest is a valid OCI digest")
}

/// What a runtime needs from an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`; empty if unset.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`; empty if unset.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env` as `NAME=value` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`, if set and not empty.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`, ...), if set and not empty.
    #[serde(default)]
    pub user: Option<String>,
    /// `ExposedPorts` keys such as `8080/tcp`, sorted.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// `Volumes` paths, sorted.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `Labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `StopSignal` (`SIGTERM`, `15`), if set.
    #[serde(default)]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// The runtime view of a parsed config.
    pub fn from_oci(config: &ImageConfiguration) -> Self {
        let Some(config) = config.config() else {
            return Self::default();
        };
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let sorted = |values: &Option<Vec<String>>| {
            let mut values = values.clone().unwrap_or_default();
            values.sort();
            values
        };
        Self {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: non_empty(config.working_dir()),
            user: non_empty(config.user()),
            exposed_ports: sorted(config.exposed_ports()),
            volumes: sorted(config.volumes()),
            labels: config
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            stop_signal: non_empty(config.stop_signal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_with_nulls_and_no_history_parses() {
        let json = br#"{
            "architecture": "amd64", "os": "linux", "docker_version": "24.0.7",
            "config": {"Entrypoint": null, "Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "",
                       "User": "", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
                       "Labels": {"a": "b"}, "StopSignal": "SIGQUIT"},
            "container_config": {"Cmd": ["ignored"]},
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let digest = Digest::of(json);
        let config = ImageConfig::from_oci(&parse_config(&digest, json).unwrap());
        assert_eq!(config.entrypoint, Vec::<String>::new());
        assert_eq!(config.cmd, ["sh"]);
        assert_eq!(config.working_dir, None);
        assert_eq!(config.user, None);
        assert_eq!(config.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn manifests_must_describe_images() {
        let artifact = br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.example.sbom", "size": 2,
                       "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
            "layers": []}"#;
        let err = parse_manifest(&Digest::of(artifact), artifact).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage { .. }), "{err:?}");
    }

    #[test]
    fn synthesized_docker_manifest_round_trips() {
        let config = Digest::of(b"config");
        let layer = Digest::of(b"layer");
        let bytes = docker_manifest((&config, 6), &[(layer.clone(), 5, Compression::Gzip)]);
        let manifest = parse_manifest(&Digest::of(&bytes), &bytes).unwrap();
        assert_eq!(
            manifest.layers()[0].media_type().to_string(),
            DOCKER_LAYER_GZIP
        );
        assert_eq!(descriptor_digest(&manifest.layers()[0]).unwrap(), layer);
        assert_eq!(
            bytes,
            docker_manifest((&config, 6), &[(layer, 5, Compression::Gzip)])
        );
    }

    #[test]
    fn platform_selection_prefers_the_host() {
        let (_, arch) = host_platform();
        let manifest = Digest::of(b"m");
        let index = format!(
            r#"{{"schemaVersion": 2, "manifests": [
                {{"mediaType": "{DOCKER_MANIFEST}", "size": 1, "digest": "{}", "platform": {{"architecture": "s390x", "os": "linux"}}}},
                {{"mediaType": "{DOCKER_MANIFEST}", "size": 1, "digest": "{manifest}", "platform": {{"architecture": "{arch}", "os": "linux"}}}}]}}"#,
            Digest::of(b"other")
        );
        let digest = Digest::of(index.as_bytes());
        let parsed = parse_index(&digest, index.as_bytes()).unwrap();
        assert_eq!(
            descriptor_digest(&select_platform(&digest, &parsed).unwrap()).unwrap(),
            manifest
        );

        let foreign = r#"{"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 1, "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "platform": {"architecture": "s390x", "os": "linux"}}]}"#;
        let parsed = parse_index(&digest, foreign.as_bytes()).unwrap();
        let err = select_platform(&digest, &parsed).unwrap_err();
        assert!(
            matches!(&err, ImageError::NoMatchingPlatform { available, .. } if available == "linux/s390x"),
            "{err:?}"
        );
    }
}
