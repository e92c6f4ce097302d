//! The agent's images: which image a container runs, registry pulls, logins, and the
//! cache's size.
//!
//! Pull policy: a name that came from `skiff image load` is a local image with no
//! registry behind it and is used as it is. Any other reference is pulled; for a tag
//! that costs one manifest check when the image is cached (ECS's "always" behaviour
//! with Skiff's cache), and a reference by digest costs nothing once cached. Within one
//! task each distinct reference is resolved once, so every container naming it runs
//! the same digest.
//!
//! A pull for a task may unpack at most the task's ephemeral storage (a decompression
//! bomb fails the task instead of filling the disk); `skiff image pull`, for no task in
//! particular, may unpack as much as the largest task's.
//!
//! Registry logins live in `<state>/registries.json` (mode 0600) and apply to the next
//! pull without a restart.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use image::{
    Credentials, Image, ImageError, PullOptions, PullProgress, Registry, RegistryConfig,
    MAX_EPHEMERAL_STORAGE_GIB,
};
use serde::{Deserialize, Serialize};

use crate::{Agent, AgentError};

/// Where a task's image digests are kept, in its agent state directory.
const PINS_FILE: &str = "images.json";

/// How the agent reaches registries and bounds its cache.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// `HOST:PORT`s allowed over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) trusted for registries.
    pub registry_ca: Option<PathBuf>,
    /// Evict least recently used images not in use beyond this many bytes.
    pub cache_max_bytes: Option<u64>,
}

/// Stored registry logins, by registry host as written in references.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LoginFile {
    registries: HashMap<String, Login>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// Registry logins shared with the registry client.
#[derive(Debug)]
pub(crate) struct Logins {
    path: PathBuf,
    by_host: RwLock<LoginFile>,
}

impl Logins {
    pub(crate) fn open(path: PathBuf) -> Result<Arc<Self>, AgentError> {
        let by_host = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AgentError::StateDir {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LoginFile::default(),
            Err(source) => return Err(AgentError::StateDir { path, source }),
        };
        Ok(Arc::new(Logins {
            path,
            by_host: RwLock::new(by_host),
        }))
    }

    fn get(&self, host: &str) -> Option<Credentials> {
        let file = self.by_host.read().unwrap_or_else(|p| p.into_inner());
        file.registries.get(host).map(|l| Credentials {
            username: l.username.clone(),
            password: l.password.clone(),
        })
    }

    fn set(&self, host: &str, username: &str, password: &str) -> std::io::Result<()> {
        let mut file = self.by_host.write().unwrap_or_else(|p| p.into_inner());
        let mut updated = file.clone();
        updated.registries.insert(
            host.to_string(),
            Login {
                username: username.to_string(),
                password: password.to_string(),
            },
        );
        write_private(&self.path, &serde_json::to_vec_pretty(&updated)?)?;
        *file = updated;
        Ok(())
    }
}

/// Writes a file only root can read, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    fs::rename(tmp, path)
}

/// Builds the registry client; credentials are read at each pull.
pub(crate) fn registry(
    config: &ImageSettings,
    logins: Arc<Logins>,
) -> Result<Registry, AgentError> {
    let registry_config = RegistryConfig {
        insecure: config.insecure_registries.clone(),
        extra_ca: config.registry_ca.clone(),
        credentials: Arc::new(move |host: &str| logins.get(host)),
        ..RegistryConfig::default()
    };
    Ok(Registry::new(registry_config)?)
}

impl Agent {
    /// The image a container of a task runs, pulled if needed (see the module's policy)
    /// within the task's ephemeral storage. The pull's hold is released only once the
    /// image counts as the task's, so no cache trim (this one or a concurrent pull's)
    /// can evict it before it is mounted.
    pub(crate) async fn image_for(
        &self,
        task_id: &str,
        reference: &str,
        ephemeral_storage_gib: u32,
    ) -> Result<Image, ImageError> {
        let images = self.images().clone();
        let owned = reference.to_string();
        if let Some(image) = blocking(move || images.resolve_loaded(&owned)).await? {
            return Ok(image);
        }
        let (image, hold) = self
            .images()
            .pull_held(
                &self.inner.registry,
                reference,
                PullOptions::for_ephemeral_storage(ephemeral_storage_gib),
                |_| {},
            )
            .await?;
        self.lock_task_images()
            .entry(task_id.to_string())
            .or_default()
            .push(image.digest.clone());
        drop(hold);
        self.trim_cache(&image.digest).await;
        Ok(image)
    }

    /// Pulls an image (progress per layer), then keeps the cache within its size. The
    /// image may unpack to as much as the largest task's ephemeral storage, so that
    /// some task can run it.
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: impl Fn(PullProgress) + Send + Sync,
    ) -> Result<Image, ImageError> {
        let options = PullOptions::for_ephemeral_storage(MAX_EPHEMERAL_STORAGE_GIB);
        let image = self
            .images()
            .pull(&self.inner.registry, reference, options, progress)
            .await?;
        self.trim_cache(&image.digest).await;
        Ok(image)
    }

    /// Evicts least recently used images beyond `--image-cache-size`, never one a task
    /// holds nor `just_pulled` (evicting what was just asked for would defeat the pull).
    async fn trim_cache(&self, just_pulled: &str) {
        let Some(max) = self.inner.config.images.cache_max_bytes else {
            return;
        };
        let mut in_use = self.images_in_use();
        in_use.insert(just_pulled.to_string());
        let images = self.images().clone();
        match blocking(move || images.evict_to(max, &in_use)).await {
            Ok(report) if !report.images_removed.is_empty() => {
                tracing::info!(removed = ?report.images_removed, bytes = report.bytes_freed, "evicted least recently used images");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot evict images"),
        }
    }

    /// Removes every image, blob and layer that no image name or running task uses.
    pub async fn prune_images(&self) -> Result<image::PruneReport, ImageError> {
        let in_use = self.images_in_use();
        let images = self.images().clone();
        blocking(move || images.prune(&in_use)).await
    }

    /// Stores a registry login for the next pulls.
    pub fn registry_login(
        &self,
        host: &str,
        username: &str,
        password: &str,
    ) -> Result<(), AgentError> {
        self.inner
            .logins
            .set(host, username, password)
            .map_err(|source| AgentError::StateDir {
                path: self.inner.logins.path.clone(),
                source,
            })
    }

    /// Records the images a task runs, so that pruning and eviction keep them, also
    /// across an agent restart (`<task state>/images.json`).
    pub(crate) fn pin_images(&self, task_id: &str, digests: Vec<String>) {
        let path = self.task_state_dir(task_id).join(PINS_FILE);
        if let Err(e) = serde_json::to_vec(&digests)
            .map_err(std::io::Error::other)
            .and_then(|bytes| fs::write(&path, bytes))
        {
            tracing::warn!(task_id, error = %e, "cannot record the task's images");
        }
        self.lock_task_images().insert(task_id.to_string(), digests);
    }

    /// Restores the pins of a task re-adopted after a restart.
    pub(crate) fn restore_pins(&self, task_id: &str) {
        let path = self.task_state_dir(task_id).join(PINS_FILE);
        let digests: Vec<String> = fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        self.lock_task_images().insert(task_id.to_string(), digests);
    }

    pub(crate) fn unpin_images(&self, task_id: &str) {
        self.lock_task_images().remove(task_id);
    }

    fn lock_task_images(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.inner
            .task_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn images_in_use(&self) -> HashSet<String> {
        self.lock_task_images()
            .values()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Runs image-store work on the blocking pool; a panic there is re-raised here.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}
