//! The distribution client: talks to OCI / Docker v2 registries through `oci-client`.
//!
//! ```text
//!  RegistryConfig ──Registry::new──> Registry (cheap to clone, shared by all pulls)
//!                                      │ one oci_client::Client per registry host,
//!                                      │ rebuilt when that host's credentials change
//!                                      v
//!  Reference ──Registry::session──> Session (client + credentials + repository)
//!                                      ├─ head_digest(tag)     HEAD /v2/<repo>/manifests/<tag>
//!                                      ├─ manifest(digest)     GET  /v2/<repo>/manifests/<digest>
//!                                      └─ blob_stream(d, off)  GET  /v2/<repo>/blobs/<digest>
//!                                                              (Range: bytes=<off>-)
//! ```
//!
//! - Transport: HTTPS with the system trust store plus [`RegistryConfig::extra_ca`];
//!   plain HTTP only for the `HOST:PORT`s listed in [`RegistryConfig::insecure`].
//! - Authentication: anonymous, HTTP basic, or the bearer-token dance (the registry's
//!   `WWW-Authenticate` challenge decides; `oci-client` performs it). Credentials come
//!   from a [`CredentialSource`] asked with the reference's registry (`docker.io`,
//!   `127.0.0.1:5000`) at every session, so a `skiff registry login` takes effect at
//!   the next pull without restarting anything.
//! - Docker Hub: `docker.io` references are served by `registry-1.docker.io`.
//! - Every request is retried with exponential backoff and jitter on transient
//!   failures (connection refused or reset, timeouts, HTTP 5xx, 429); never on 401,
//!   403 or 404, nor on TLS failures (see `classify.rs`). Blob downloads resume with a
//!   `Range` request after a broken connection (the caller drives that loop).

mod classify;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;

pub(crate) use self::classify::{stream_error, Failure, StreamFailure};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::Platform;
use crate::reference::Reference;

/// Docker Hub's name in references, and the host that actually serves its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Manifest media types asked for; anything else is refused by the registry or us.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence on an open connection before it counts as broken (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where credentials come from, asked with a registry as written in references
/// (`docker.io`, `registry.example`, `127.0.0.1:5000`). Closures implement it.
pub trait CredentialSource: Send + Sync {
    /// The credentials for `registry`, or `None` to pull anonymously.
    fn credentials(&self, registry: &str) -> Option<Credentials>;
}

impl<F> CredentialSource for F
where
    F: Fn(&str) -> Option<Credentials> + Send + Sync,
{
    fn credentials(&self, registry: &str) -> Option<Credentials> {
        self(registry)
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (after `attempt` failures, 1-based), with
    /// up to 25% random jitter so that many agents do not retry in lockstep.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        let base = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter)
    }
}

/// What the agent's flags say about registries.
#[derive(Clone)]
pub struct RegistryConfig {
    /// `HOST:PORT`s (as written in references) allowed over plain HTTP
    /// (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// A PEM file of extra CA certificates trusted beside the system store
    /// (`--registry-ca`).
    pub extra_ca: Option<PathBuf>,
    /// Credentials per registry (`skiff registry login`).
    pub credentials: Arc<dyn CredentialSource>,
    /// The platform picked from multi-platform images; linux/amd64 by default.
    pub platform: Platform,
    /// Layers downloaded at the same time by one pull (at least 1).
    pub max_concurrent_layers: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            extra_ca: None,
            credentials: Arc::new(|_: &str| None),
            platform: Platform::default(),
            max_concurrent_layers: 3,
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("extra_ca", &self.extra_ca)
            .field("platform", &self.platform)
            .field("max_concurrent_layers", &self.max_concurrent_layers)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The registry client shared by all pulls of an agent. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    extra_roots: Vec<Certificate>,
    /// API host -> the client for it and the credentials it was built with.
    clients: Mutex<HashMap<String, HostClient>>,
}

struct HostClient {
    credentials: Option<Credentials>,
    client: oci_client::Client,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Checks the configuration (the CA file must be a readable PEM bundle) and creates
    /// the client. Nothing is sent until the first pull.
    pub fn new(config: RegistryConfig) -> Result<Self, ImageError> {
        let extra_roots = match &config.extra_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ImageError::RegistryCa {
                    path: path.clone(),
                    source: source.into(),
                })?;
                vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem,
                }]
            }
            None => Vec::new(),
        };
        let registry = Self {
            inner: Arc::new(Inner {
                config,
                extra_roots,
                clients: Mutex::new(HashMap::new()),
            }),
        };
        // Build one client now so that a bad CA file fails at startup, not at a pull.
        registry
            .build_client()
            .map_err(|source| match &registry.inner.config.extra_ca {
                Some(path) => ImageError::RegistryCa {
                    path: path.clone(),
                    source: source.into(),
                },
                None => ImageError::RegistryClient(source.into()),
            })?;
        Ok(registry)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    fn build_client(&self) -> Result<oci_client::Client, oci_client::errors::OciDistributionError> {
        let config = &self.inner.config;
        let insecure = config.insecure.iter().map(|host| api_host(host)).collect();
        oci_client::Client::try_from(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            extra_root_certificates: self.inner.extra_roots.clone(),
            // Platform selection is ours (see `manifest::select_platform_for`).
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("skiff/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
    }

    /// A session for one repository, with the registry's current credentials.
    pub(crate) fn session(&self, reference: &Reference) -> Result<Session, ImageError> {
        let domain = reference.domain();
        let host = api_host(domain);
        let credentials = self.inner.config.credentials.credentials(domain);
        let client = {
            let mut clients = self
                .inner
                .clients
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match clients.get(&host) {
                Some(cached) if cached.credentials == credentials => cached.client.clone(),
                _ => {
                    let client = self
                        .build_client()
                        .map_err(|source| ImageError::RegistryClient(source.into()))?;
                    tracing::debug!(registry = %domain, authenticated = credentials.is_some(), "new registry client");
                    clients.insert(
                        host.clone(),
                        HostClient {
                            credentials: credentials.clone(),
                            client: client.clone(),
                        },
                    );
                    client
                }
            }
        };
        let auth = match credentials {
            Some(Credentials { username, password }) => RegistryAuth::Basic(username, password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Session {
            client,
            auth,
            host,
            registry: domain.to_owned(),
            repository: reference.path().to_owned(),
            reference: reference.to_string(),
            retry: self.inner.config.retry,
        })
    }
}

/// The host serving a registry's API: Docker Hub's differs from its name.
fn api_host(domain: &str) -> String {
    if domain == DOCKER_HUB {
        DOCKER_HUB_API.to_owned()
    } else {
        domain.to_owned()
    }
}

/// A stream of blob bytes, and how many leading bytes to drop because the registry
/// ignored the `Range` header and sent the blob from its start.
pub(crate) struct BlobChunks {
    pub(crate) stream: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    pub(crate) skip: u64,
}

/// Requests against one repository of one registry.
pub(crate) struct Session {
    client: oci_client::Client,
    auth: RegistryAuth,
    host: String,
    registry: String,
    repository: String,
    /// The reference being pulled, for error messages.
    reference: String,
    retry: RetryPolicy,
}

impl Session {
    fn tagged(&self, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(self.host.clone(), self.repository.clone(), tag.to_owned())
    }

    fn pinned(&self, digest: &Digest) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.host.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }

    /// Resolves a tag to the digest of what it points at (a manifest or an index).
    pub(crate) async fn head_digest(&self, tag: &str) -> Result<Digest, ImageError> {
        let reference = self.tagged(tag);
        let digest = self
            .with_retry("resolve tag", || {
                self.client.fetch_manifest_digest(&reference, &self.auth)
            })
            .await?;
        Digest::parse(&digest).map_err(|source| self.protocol_error(source))
    }

    /// Fetches a manifest or index by digest; `oci-client` checks the content against it.
    pub(crate) async fn manifest(&self, digest: &Digest) -> Result<bytes::Bytes, ImageError> {
        let reference = self.pinned(digest);
        let (bytes, _) = self
            .with_retry("fetch manifest", || {
                self.client
                    .pull_manifest_raw(&reference, &self.auth, &MANIFEST_TYPES)
            })
            .await?;
        Ok(bytes)
    }

    /// Opens a blob download at byte `offset` (one attempt: the caller's download loop
    /// retries, because it must also resume after failures in the middle of the body).
    pub(crate) async fn blob_stream(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobChunks, Failure> {
        let reference = self.pinned(digest);
        // Always ask with a range (even `bytes=0-`): a 206 answer is not re-hashed by
        // oci-client, so the content store's hashing is the only pass over the bytes.
        match self
            .client
            .pull_blob_stream_partial(&reference, digest.as_str(), offset, None)
            .await
        {
            Ok(BlobResponse::Partial(sized)) => Ok(BlobChunks {
                stream: sized.stream,
                skip: 0,
            }),
            Ok(BlobResponse::Full(sized)) => Ok(BlobChunks {
                stream: sized.stream,
                skip: offset,
            }),
            Err(error) => Err(classify::classify(error, self, Some(digest))),
        }
    }

    /// Runs `request` until it succeeds, fails for good, or runs out of attempts.
    async fn with_retry<T, F, Fut>(&self, what: &'static str, request: F) -> Result<T, ImageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match request().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let failure = classify::classify(error, self, None);
                    match self.next_attempt(failure, attempt, what).await {
                        Ok(()) => attempt += 1,
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }

    /// Waits before the next attempt if `failure` is transient and attempts are left;
    /// otherwise returns the error to report (`attempt` counts the failed ones, from 1).
    pub(crate) async fn next_attempt(
        &self,
        failure: Failure,
        attempt: u32,
        what: &'static str,
    ) -> Result<(), ImageError> {
        match failure {
            Failure::Transient(transient) if attempt < self.retry.attempts => {
                let wait = self.retry.backoff(attempt);
                tracing::warn!(
                    registry = %self.registry, reference = %self.reference, what, attempt,
                    wait_ms = wait.as_millis() as u64, error = %transient.summary(),
                    "transient registry failure; retrying"
                );
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Failure::Transient(transient) => Err(transient.into_error(self, attempt)),
            Failure::Fatal(error) => Err(error),
        }
    }

    fn protocol_error(&self, source: impl std::error::Error + Send + Sync + 'static) -> ImageError {
        ImageError::RegistryProtocol {
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_served_by_its_api_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
        let registry = Registry::new(RegistryConfig::default()).unwrap();
        let session = registry
            .session(&Reference::parse("busybox").unwrap())
            .unwrap();
        assert_eq!(session.registry, "docker.io");
        assert_eq!(session.reference, "docker.io/library/busybox:latest");
        assert_eq!(
            session.tagged("latest").resolve_registry(),
            "registry-1.docker.io"
        );
        assert_eq!(session.tagged("latest").repository(), "library/busybox");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        for (attempt, base) in [(1, 100), (2, 200), (3, 350), (8, 350)] {
            let wait = policy.backoff(attempt).as_millis() as u64;
            assert!(
                (base..=base * 5 / 4).contains(&wait),
                "attempt {attempt}: {wait} ms"
            );
        }
    }

    #[test]
    fn credentials_are_asked_per_registry_and_clients_follow_them() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let password = Arc::new(Mutex::new("one".to_owned()));
        let current = password.clone();
        let registry = Registry::new(RegistryConfig {
            credentials: Arc::new(move |registry: &str| {
                seen.lock().unwrap().push(registry.to_owned());
                Some(Credentials {
                    username: "user".to_owned(),
                    password: current.lock().unwrap().clone(),
                })
            }),
            ..RegistryConfig::default()
        })
        .unwrap();
        let reference = Reference::parse("127.0.0.1:5000/team/app:1").unwrap();
        registry.session(&reference).unwrap();
        registry.session(&reference).unwrap();
        assert_eq!(registry.inner.clients.lock().unwrap().len(), 1);
        *password.lock().unwrap() = "two".to_owned();
        registry.session(&reference).unwrap();
        let clients = registry.inner.clients.lock().unwrap();
        assert_eq!(
            clients["127.0.0.1:5000"]
                .credentials
                .as_ref()
                .unwrap()
                .password,
            "two"
        );
        assert_eq!(*calls.lock().unwrap(), ["127.0.0.1:5000"; 3]);
        assert!(!format!("{:?}", clients["127.0.0.1:5000"].credentials).contains("two"));
    }

    #[test]
    fn an_unreadable_or_invalid_ca_file_is_refused_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Registry::new(RegistryConfig {
            extra_ca: Some(missing.clone()),
            ..RegistryConfig::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, ImageError::RegistryCa { path, .. } if *path == missing),
            "{err:?}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Registry::new(RegistryConfig {
            extra_ca: Some(garbage),
            ..RegistryConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, ImageError::RegistryCa { .. }), "{err:?}");
    }
}
