//! Registry pulls into the store.
//!
//! ```text
//! pull(reference)
//!  ├─ resolve: tag ──HEAD──> digest ──stored? read : GET + store──> index? ──platform──┐
//!  │           (a digest reference skips the HEAD)            manifest digest <───────┘
//!  ├─ image recorded already? ──> name it, touch it, done: no blob request at all
//!  ├─ pin manifest, config, layer blobs and diff ids (garbage collection skips them)
//!  ├─ config blob ──> content store
//!  ├─ layers, `max_concurrent_layers` at a time, each coalesced with other pulls,
//!  │  all unpacking within one UnpackBudget (PullOptions::unpack_limit):
//!  │     registry ─chunks─> download loop ─mpsc─> [blocking] ContentStore::write
//!  │     (retries, resumes     (async)               hashes into a temp file │ tee
//!  │      with Range)                                                       v
//!  │                                                 [blocking] LayerStore::stage
//!  │     blob verified and stored ──> commit the staged layer; else it is dropped
//!  └─ import_manifest: record + names (the reference, and repository@digest)
//! ```
//!
//! Nothing is buffered beyond a few chunks, and each layer is unpacked while it
//! downloads, so pull and unpack overlap within and across layers. A blob already in
//! the store is not requested; a layer already unpacked is not unpacked again. A
//! download is one leader's work: concurrent pulls of the same blob wait for it
//! ([`InFlight`](crate::inflight::InFlight)) and then find it stored. When a layer
//! fails, the pull's other downloads are told to stop ([`Abort`]) and awaited, so the
//! pull returns only once their temporary files and directories are gone. That includes
//! a layer whose uncompressed stream would take the pull over its unpack limit (the
//! task's ephemeral storage): its unpack stops at the read that would cross it, while
//! its (compressed, verified) blob is still stored, so that a retry with more room
//! does not download it again; it is garbage for the next collection otherwise.
//!
//! The pins end with the pull, unless it is [`ImageStore::pull_held`]: then they become
//! the caller's [`ImageHold`], so that no eviction can remove the image between the
//! pull's return and the caller recording it as in use.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::feed::{ChunkReader, QueueReader};
use super::gc::Pins;
use super::{Image, ImageStore};
use crate::content::MAX_DOCUMENT_SIZE;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::inflight::Turn;
use crate::manifest::{self, DocumentKind, Platform};
use crate::reference::Reference;
use crate::registry::{stream_error, Registry, Session, StreamFailure};
use crate::unpack::{UnpackBudget, GIB, MAX_EPHEMERAL_STORAGE_GIB};

/// Indexes nested in indexes followed before giving up (real ones nest once at most).
const MAX_INDEX_DEPTH: usize = 4;
/// Chunks queued between the download, the blob writer and the unpacker.
const CHUNK_QUEUE: usize = 32;
/// Progress is reported at least every this many bytes of a layer.
const PROGRESS_STEP: u64 = 1024 * 1024;

/// What a pull may use of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    /// The most bytes the layers the pull unpacks may decompress to, all together
    /// (layers already unpacked on this host cost nothing): the ephemeral storage of
    /// the task the image is for.
    pub unpack_limit: u64,
}

impl PullOptions {
    /// For a task with `gib` GiB of ephemeral storage.
    pub fn for_ephemeral_storage(gib: u32) -> Self {
        Self {
            unpack_limit: u64::from(gib) * GIB,
        }
    }
}

impl Default for PullOptions {
    /// For no task in particular: the largest ephemeral storage a task can have
    /// ([`MAX_EPHEMERAL_STORAGE_GIB`]), so that the image can run in some task.
    fn default() -> Self {
        Self::for_ephemeral_storage(MAX_EPHEMERAL_STORAGE_GIB)
    }
}

/// Where one layer of a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Blob and unpacked layer were already in the store.
    Cached,
    /// Another pull is downloading this blob; this one waits for it.
    Waiting,
    /// Bytes are arriving (and being unpacked as they do).
    Downloading,
    /// All bytes are in and verified; the unpacker is finishing.
    Unpacking,
    /// Stored, verified and unpacked.
    Done,
}

/// A progress report for one layer of a pull, for a progress bar per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// The layer blob's digest.
    pub layer: Digest,
    /// Position of the layer in the image, 0 for the lowest.
    pub index: usize,
    /// Number of layers in the image.
    pub layers: usize,
    /// Bytes of the (compressed) blob received so far.
    pub done: u64,
    /// Size of the (compressed) blob.
    pub total: u64,
    /// What is happening to the layer.
    pub state: LayerState,
}

/// Keeps a pulled image (its record, blobs and layers) from [`ImageStore::evict_to`]
/// and [`ImageStore::prune`] until dropped. A pull's own protection ends when it
/// returns; the hold bridges the gap until the image's user is in the `in_use` set
/// those take, so that a concurrent eviction cannot remove the image in between.
pub struct ImageHold {
    _pins: Pins,
}

impl std::fmt::Debug for ImageHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageHold").finish_non_exhaustive()
    }
}

/// A blob to fetch, and for a layer, the diff id to unpack it as.
struct BlobJob {
    digest: Digest,
    size: u64,
    diff_id: Option<Digest>,
}

/// Tells the downloads of a pull to stop because one of its layers failed.
#[derive(Clone)]
struct Abort(watch::Receiver<bool>);

impl Abort {
    /// Resolves once the pull is aborted; never, if it is not.
    async fn wait(&self) {
        let mut receiver = self.0.clone();
        if receiver.wait_for(|aborted| *aborted).await.is_err() {
            // The pull is gone, and with it every download it could abort.
            std::future::pending::<()>().await;
        }
    }
}

/// What a reference resolved to.
struct Resolved {
    manifest: Digest,
    /// Indexes passed through on the way, outermost first.
    indexes: Vec<Digest>,
}

impl ImageStore {
    /// Resolves a reference to the digest of the image manifest this host would run
    /// (through image indexes, for `registry.config().platform`). A tag is looked up
    /// with one `HEAD` request; documents already in the store are not fetched again.
    /// Resolve a tag once per task and pull `repository@digest` for every container,
    /// so that all of them run the same image.
    pub async fn resolve_digest(
        &self,
        registry: &Registry,
        reference: &str,
    ) -> Result<Digest, ImageError> {
        let parsed = Reference::parse(reference.trim())?;
        let session = registry.session(&parsed)?;
        let mut pins = self.pin();
        let resolved = self
            .resolve_remote(&session, &parsed, &registry.config().platform, &mut pins)
            .await?;
        Ok(resolved.manifest)
    }

    /// Pulls an image from its registry (unless it is stored already), verifies every
    /// blob against its digest, unpacks its layers, and records it under the reference
    /// and under `repository@<manifest digest>`. `progress` is called from the pulling
    /// task for each layer's state changes and about every MiB received. Unpacking more
    /// than `options.unpack_limit` bytes fails with
    /// [`UnpackError::TooLarge`](crate::UnpackError::TooLarge).
    pub async fn pull<F>(
        &self,
        registry: &Registry,
        reference: &str,
        options: PullOptions,
        progress: F,
    ) -> Result<Image, ImageError>
    where
        F: Fn(PullProgress) + Send + Sync,
    {
        let (image, _hold) = self
            .pull_held(registry, reference, options, progress)
            .await?;
        Ok(image)
    }

    /// [`ImageStore::pull`], also returning an [`ImageHold`] that keeps the image from
    /// eviction and garbage collection until the caller has recorded its use.
    pub async fn pull_held<F>(
        &self,
        registry: &Registry,
        reference: &str,
        options: PullOptions,
        progress: F,
    ) -> Result<(Image, ImageHold), ImageError>
    where
        F: Fn(PullProgress) + Send + Sync,
    {
        let started = Instant::now();
        let parsed = Reference::parse(reference.trim())?;
        let session = registry.session(&parsed)?;
        let config = registry.config();
        let mut pins = self.pin();
        let Resolved { manifest, indexes } = self
            .resolve_remote(&session, &parsed, &config.platform, &mut pins)
            .await?;
        let mut names = vec![parsed.to_string()];
        let by_digest = format!("{}@{manifest}", parsed.repository());
        if !names.contains(&by_digest) {
            names.push(by_digest);
        }

        let existing = {
            let (manifest, names) = (manifest.clone(), names.clone());
            self.blocking(move |store| store.name_existing(&manifest, &names))
                .await?
        };
        if let Some(image) = existing {
            tracing::info!(reference = %parsed, image = %manifest, "image already stored; nothing to pull");
            return Ok((image, ImageHold { _pins: pins }));
        }

        let manifest_bytes = self.document(&session, &manifest).await?;
        let image_manifest = manifest::parse_manifest(&manifest, &manifest_bytes)?;
        let config_job = BlobJob {
            digest: manifest::descriptor_digest(image_manifest.config())?,
            size: image_manifest.config().size(),
            diff_id: None,
        };
        if config_job.size > MAX_DOCUMENT_SIZE {
            return Err(ImageError::DocumentTooLarge {
                what: "config",
                digest: config_job.digest,
                size: config_job.size,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        pins.add(&config_job.digest);
        let (abort_pull, aborted) = watch::channel(false);
        let abort = Abort(aborted);
        let budget = UnpackBudget::new(options.unpack_limit);
        self.fetch_blob(&session, &config_job, &budget, &|_, _| {}, &abort)
            .await?;
        let config_digest = config_job.digest;
        let config_bytes = {
            let digest = config_digest.clone();
            self.blocking(move |store| store.content().read_document(&digest, "config"))
                .await?
        };
        let image_config = manifest::parse_config(&config_digest, &config_bytes)?;
        let diff_ids = image_config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let descriptors = image_manifest.layers();
        if descriptors.len() != diff_ids.len() {
            return Err(ImageError::LayerCountMismatch {
                manifest,
                layers: descriptors.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut jobs = Vec::with_capacity(descriptors.len());
        for (descriptor, diff_id) in descriptors.iter().zip(diff_ids) {
            let digest = manifest::descriptor_digest(descriptor)?;
            pins.add(&digest);
            pins.add(&diff_id);
            jobs.push(BlobJob {
                digest,
                size: descriptor.size(),
                diff_id: Some(diff_id),
            });
        }

        let layers = jobs.len();
        let bytes: u64 = jobs.iter().map(|job| job.size).sum();
        let (progress, session, budget, abort, abort_pull) =
            (&progress, &session, &budget, &abort, &abort_pull);
        // Owned jobs: a stream over borrowed ones makes the future not `Send` (its
        // closure would have to be general over the borrow's lifetime).
        futures::stream::iter(jobs.into_iter().enumerate())
            .map(|(index, job)| async move {
                let job = &job;
                let report = move |state, done| {
                    progress(PullProgress {
                        layer: job.digest.clone(),
                        index,
                        layers,
                        done,
                        total: job.size,
                        state,
                    })
                };
                let result = self.fetch_blob(session, job, budget, &report, abort).await;
                if result.is_err() {
                    abort_pull.send_replace(true);
                }
                result
            })
            .buffer_unordered(config.max_concurrent_layers.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            // The first real error, not the aborts it caused.
            .filter_map(Result::err)
            .reduce(|first, next| match first {
                ImageError::PullAborted { .. } => next,
                first => first,
            })
            .map_or(Ok(()), Err)?;

        let image = {
            let manifest = manifest.clone();
            let budget = budget.clone();
            self.blocking(move |store| {
                store.import(&manifest, &names, indexes, super::Origin::Registry, &budget)
            })
            .await?
        };
        tracing::info!(
            reference = %parsed, image = %manifest, layers, bytes, unpacked = budget.used(),
            elapsed_ms = started.elapsed().as_millis() as u64, "pulled image"
        );
        Ok((image, ImageHold { _pins: pins }))
    }

    /// Follows a reference to an image manifest, storing the documents on the way.
    async fn resolve_remote(
        &self,
        session: &Session,
        reference: &Reference,
        platform: &Platform,
        pins: &mut Pins,
    ) -> Result<Resolved, ImageError> {
        let mut digest = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.clone(),
            (None, Some(tag)) => session.head_digest(tag).await?,
            (None, None) => unreachable!("a parsed reference has a tag or a digest"),
        };
        let mut indexes = Vec::new();
        loop {
            pins.add(&digest);
            let bytes = self.document(session, &digest).await?;
            if manifest::classify_document(&digest, &bytes)? != DocumentKind::Index {
                return Ok(Resolved {
                    manifest: digest,
                    indexes,
                });
            }
            if indexes.len() == MAX_INDEX_DEPTH {
                return Err(ImageError::IndexTooDeep {
                    index: indexes.swap_remove(0),
                    limit: MAX_INDEX_DEPTH,
                });
            }
            let index = manifest::parse_index(&digest, &bytes)?;
            let chosen = manifest::select_platform_for(&digest, &index, platform)?;
            tracing::debug!(index = %digest, %platform, manifest = %chosen.digest(), "selected platform from index");
            indexes.push(digest);
            digest = manifest::descriptor_digest(&chosen)?;
        }
    }

    /// A manifest or index: from the store, or fetched by digest, verified and stored.
    async fn document(&self, session: &Session, digest: &Digest) -> Result<Bytes, ImageError> {
        let stored = {
            let digest = digest.clone();
            self.blocking(move |store| match store.content().stored_size(&digest)? {
                Some(_) => store.content().read_document(&digest, "manifest").map(Some),
                None => Ok(None),
            })
            .await?
        };
        if let Some(bytes) = stored {
            return Ok(Bytes::from(bytes));
        }
        let bytes = session.manifest(digest).await?;
        let size = bytes.len() as u64;
        if size > MAX_DOCUMENT_SIZE {
            return Err(ImageError::DocumentTooLarge {
                what: "manifest",
                digest: digest.clone(),
                size,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        let (digest, copy) = (digest.clone(), bytes.clone());
        self.blocking(move |store| store.content().write(&digest, Some(size), copy.as_ref()))
            .await?;
        Ok(bytes)
    }

    /// Makes a blob (and, for a layer, its unpacked directory) present, downloading it
    /// unless another pull already is, in which case this waits for that one.
    async fn fetch_blob(
        &self,
        session: &Session,
        job: &BlobJob,
        budget: &UnpackBudget,
        report: &(dyn Fn(LayerState, u64) + Send + Sync),
        abort: &Abort,
    ) -> Result<(), ImageError> {
        loop {
            match self.inner.downloads.turn(&job.digest) {
                Turn::Lead(_download) => {
                    return self
                        .fetch_blob_now(session, job, budget, report, abort)
                        .await
                }
                Turn::Wait(signal) => {
                    report(LayerState::Waiting, 0);
                    tokio::select! {
                        () = signal.done() => {}
                        () = abort.wait() => {
                            return Err(ImageError::PullAborted { digest: job.digest.clone() });
                        }
                    }
                    let unpacked = job
                        .diff_id
                        .as_ref()
                        .is_none_or(|diff_id| self.layers().contains(diff_id));
                    if unpacked && self.content().stored_size(&job.digest)? == Some(job.size) {
                        report(LayerState::Done, job.size);
                        return Ok(());
                    }
                    // The other download failed or was cancelled: take over.
                }
            }
        }
    }

    async fn fetch_blob_now(
        &self,
        session: &Session,
        job: &BlobJob,
        budget: &UnpackBudget,
        report: &(dyn Fn(LayerState, u64) + Send + Sync),
        abort: &Abort,
    ) -> Result<(), ImageError> {
        let unpack = job
            .diff_id
            .clone()
            .filter(|diff_id| !self.layers().contains(diff_id));
        match self.content().stored_size(&job.digest)? {
            Some(size) if size != job.size => Err(ImageError::SizeMismatch {
                digest: job.digest.clone(),
                expected: job.size,
                actual: size,
            }),
            Some(_) => {
                if let Some(diff_id) = unpack {
                    report(LayerState::Unpacking, job.size);
                    let (blob, budget) = (job.digest.clone(), budget.clone());
                    self.blocking(move |store| {
                        let file = store.content().open_blob(&blob, "layer")?;
                        store.layers().unpack(
                            &diff_id,
                            std::io::BufReader::with_capacity(256 * 1024, file),
                            &budget,
                        )
                    })
                    .await?;
                    report(LayerState::Done, job.size);
                } else {
                    report(LayerState::Cached, job.size);
                }
                Ok(())
            }
            None => {
                self.download(session, job, unpack, budget, report, abort)
                    .await?;
                report(LayerState::Done, job.size);
                Ok(())
            }
        }
    }

    /// Streams a blob into the content store and, if `unpack` is given, into a staged
    /// layer (within `budget`) at the same time; the layer is committed only if the blob
    /// verified. Returns only once the writer and the unpacker are done, so no temporary
    /// outlives it.
    async fn download(
        &self,
        session: &Session,
        job: &BlobJob,
        unpack: Option<Digest>,
        budget: &UnpackBudget,
        report: &(dyn Fn(LayerState, u64) + Send + Sync),
        abort: &Abort,
    ) -> Result<(), ImageError> {
        let (chunks, chunk_queue) = tokio::sync::mpsc::channel::<Bytes>(CHUNK_QUEUE);
        let (tee, unpacker) = match unpack {
            Some(diff_id) => {
                let (tee, tee_queue) = std::sync::mpsc::sync_channel::<Bytes>(CHUNK_QUEUE);
                let (verdict, verdict_queue) = std::sync::mpsc::channel::<bool>();
                let (layers, budget) = (self.layers().clone(), budget.clone());
                let handle = tokio::task::spawn_blocking(move || {
                    let staged = layers.stage(&diff_id, QueueReader::new(tee_queue), &budget)?;
                    // Commit only once the blob is known good; no verdict means no.
                    match verdict_queue.recv() {
                        Ok(true) => staged.commit().map(drop),
                        _ => Ok(()),
                    }
                });
                (Some(tee), Some((handle, verdict)))
            }
            None => (None, None),
        };
        let content = self.content().clone();
        let (digest, size) = (job.digest.clone(), job.size);
        let writer = tokio::task::spawn_blocking(move || {
            content.write(&digest, Some(size), ChunkReader::new(chunk_queue, tee))
        });

        // Dropping the transfer on abort closes `chunks`: the writer then fails on the
        // short blob and the unpacker on the truncated stream, both cleaning up.
        let downloaded = tokio::select! {
            result = self.transfer(session, job, chunks, report) => result,
            () = abort.wait() => Err(ImageError::PullAborted { digest: job.digest.clone() }),
        };
        let written = join(writer).await;
        let Some((handle, verdict)) = unpacker else {
            downloaded?;
            return written.map(drop);
        };
        let good = downloaded.is_ok() && written.is_ok();
        if good {
            report(LayerState::Unpacking, job.size);
        }
        // The unpacker may have failed already and be gone: its error is below.
        let _ = verdict.send(good);
        let unpacked = join(handle).await;
        // The download's error explains the writer's and the unpacker's, if any.
        downloaded?;
        written?;
        unpacked
    }

    /// Feeds the blob's bytes into `chunks`, retrying and resuming after transient
    /// failures. Returns early (successfully) when the writer stops reading: the
    /// writer's own error then says what was wrong with the bytes.
    async fn transfer(
        &self,
        session: &Session,
        job: &BlobJob,
        chunks: tokio::sync::mpsc::Sender<Bytes>,
        report: &(dyn Fn(LayerState, u64) + Send + Sync),
    ) -> Result<(), ImageError> {
        let mut received = 0u64;
        let mut reported = 0u64;
        let mut failures = 0u32;
        report(LayerState::Downloading, 0);
        loop {
            let failure = match session.blob_stream(&job.digest, received).await {
                Err(failure) => failure,
                Ok(mut body) => {
                    let before = received;
                    let mut broken = None;
                    while let Some(item) = body.stream.next().await {
                        let mut bytes = match item {
                            Ok(bytes) => bytes,
                            Err(error) => match stream_error(error, session) {
                                StreamFailure::VerificationFailed => return Ok(()),
                                StreamFailure::Failed(failure) => {
                                    broken = Some(failure);
                                    break;
                                }
                            },
                        };
                        if body.skip > 0 {
                            let skipped = body.skip.min(bytes.len() as u64);
                            bytes = bytes.slice(skipped as usize..);
                            body.skip -= skipped;
                        }
                        if bytes.is_empty() {
                            continue;
                        }
                        received += bytes.len() as u64;
                        if chunks.send(bytes).await.is_err() {
                            return Ok(());
                        }
                        if received - reported >= PROGRESS_STEP {
                            report(LayerState::Downloading, received.min(job.size));
                            reported = received;
                        }
                    }
                    match broken {
                        None => {
                            report(LayerState::Downloading, received.min(job.size));
                            return Ok(());
                        }
                        // The connection broke after the last byte: nothing to resume.
                        Some(_) if received >= job.size => return Ok(()),
                        Some(failure) => {
                            if received > before {
                                failures = 0;
                            }
                            failure
                        }
                    }
                }
            };
            failures += 1;
            session
                .next_attempt(failure, failures, "download blob")
                .await?;
            tracing::debug!(blob = %job.digest, offset = received, "resuming blob download");
        }
    }

    /// Points `names` at an already recorded image and marks it used.
    fn name_existing(
        &self,
        manifest: &Digest,
        names: &[String],
    ) -> Result<Option<Image>, ImageError> {
        let _guard = self.lock_metadata();
        let Some(mut record) = self.read_record(manifest)? else {
            return Ok(None);
        };
        self.touch_locked(&mut record)?;
        let names = self.point_names(names, manifest, super::Origin::Registry)?;
        Ok(Some(record.into_image(names)))
    }

    /// Runs store work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(ImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, ImageError> {
        let store = self.clone();
        join(tokio::task::spawn_blocking(move || work(store))).await
    }
}

/// Awaits a blocking task, re-raising its panic.
async fn join<T>(handle: tokio::task::JoinHandle<Result<T, ImageError>>) -> Result<T, ImageError> {
    match handle.await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}
