//! A real registry for pull tests: Debian's `docker-registry` on a free loopback port
//! with its storage in a temporary directory, optionally behind htpasswd auth and TLS
//! (a CA and a server certificate generated here), and a small push client.
//!
//! [`TestRegistry`] kills the registry and deletes its directory when dropped. Its
//! access log (the registry's stderr) is parsed by [`TestRegistry::requests`] so that
//! tests can count what a pull asked for.

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use image::{Credentials, RegistryConfig, RetryPolicy};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::{json, Value};
use testkit::ImageBuilder;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How to start the registry.
#[derive(Default)]
pub struct Options {
    /// htpasswd user and password.
    pub auth: Option<(&'static str, &'static str)>,
    /// Serve HTTPS with a certificate from a test CA.
    pub tls: bool,
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A running registry; stopped and deleted on drop.
pub struct TestRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The CA that signed the server certificate, if TLS is on.
    pub ca: Option<PathBuf>,
    auth: Option<(&'static str, &'static str)>,
    dir: tempfile::TempDir,
    child: Child,
}

/// The blobs and manifest of one image, as pushed.
#[derive(Debug, Clone)]
pub struct ImageParts {
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl ImageParts {
    /// The parts of an image built by testkit, from its OCI archive.
    pub fn of(builder: &ImageBuilder) -> Self {
        let archive = builder.oci_archive().unwrap();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tar = tar::Archive::new(archive.as_slice());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
        let blob = |digest: &str| files[&format!("blobs/sha256/{}", &digest[7..])].clone();
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
        let parsed: Value = serde_json::from_slice(&manifest).unwrap();
        let layers = parsed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| blob(layer["digest"].as_str().unwrap()))
            .collect();
        Self {
            config: blob(parsed["config"]["digest"].as_str().unwrap()),
            manifest,
            media_type: OCI_MANIFEST,
            layers,
        }
    }

    /// The same image with a Docker v2 schema 2 manifest (gzip layers only).
    pub fn docker(mut self) -> Self {
        let mut manifest: Value = serde_json::from_slice(&self.manifest).unwrap();
        manifest["mediaType"] = json!(DOCKER_MANIFEST);
        manifest["config"]["mediaType"] = json!(DOCKER_CONFIG);
        for layer in manifest["layers"].as_array_mut().unwrap() {
            layer["mediaType"] = json!(DOCKER_LAYER_GZIP);
        }
        self.manifest = serde_json::to_vec(&manifest).unwrap();
        self.media_type = DOCKER_MANIFEST;
        self
    }

    pub fn digest(&self) -> String {
        testkit::sha256_digest(&self.manifest)
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|layer| testkit::sha256_digest(layer))
            .collect()
    }

    pub fn config_digest(&self) -> String {
        testkit::sha256_digest(&self.config)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    /// Starts a registry and waits until it accepts connections.
    pub fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        if let Some((user, password)) = options.auth {
            let hash = bcrypt::hash_with_result(password, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                path.display()
            ));
        }
        let mut ca = None;
        let mut tls = String::new();
        if options.tls {
            let (ca_pem, cert_pem, key_pem) = certificates();
            let (ca_path, cert, key) = (
                dir.path().join("ca.pem"),
                dir.path().join("cert.pem"),
                dir.path().join("key.pem"),
            );
            std::fs::write(&ca_path, ca_pem).unwrap();
            std::fs::write(&cert, cert_pem).unwrap();
            std::fs::write(&key, key_pem).unwrap();
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            ca = Some(ca_path);
        }
        for _ in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{extra}http:\n  addr: {host}\n{tls}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry runs (apt-get install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("registry on {host} exited with {status}; trying another port");
                    break;
                }
                if TcpStream::connect(&host).is_ok() {
                    return Self {
                        host,
                        ca,
                        auth: options.auth,
                        dir,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// Requests logged so far (the log is written as requests complete).
    pub fn requests(&self) -> Vec<Request> {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap();
        log.lines()
            .filter_map(|line| {
                let (_, request) = line.split_once("] \"")?;
                let (request, rest) = request.split_once("\" ")?;
                let mut parts = request.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                let status = rest.split(' ').next()?.parse().ok()?;
                Some(Request {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    status,
                })
            })
            .collect()
    }

    /// Successful `GET`s of blobs (any repository).
    pub fn blob_gets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:") && r.status < 300)
            .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
            .collect()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A pull configuration for this registry: insecure or with its CA, with its
    /// credentials, and quick retries.
    pub fn pull_config(&self) -> RegistryConfig {
        let credentials = self.auth.map(|(username, password)| Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        });
        RegistryConfig {
            insecure: if self.ca.is_some() {
                Vec::new()
            } else {
                vec![self.host.clone()]
            },
            extra_ca: self.ca.clone(),
            credentials: Arc::new(move |_: &str| credentials.clone()),
            retry: quick_retries(),
            ..RegistryConfig::default()
        }
    }

    fn client(&self) -> (oci_client::Client, RegistryAuth) {
        let mut config = ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: true,
            ..ClientConfig::default()
        };
        if let Some(ca) = &self.ca {
            config.protocol = ClientProtocol::Https;
            config.extra_root_certificates = vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(ca).unwrap(),
            }];
        }
        let auth = match self.auth {
            Some((user, password)) => RegistryAuth::Basic(user.to_owned(), password.to_owned()),
            None => RegistryAuth::Anonymous,
        };
        (oci_client::Client::try_from(config).unwrap(), auth)
    }

    fn reference(&self, repository: &str, reference: &str) -> oci_client::Reference {
        if reference.starts_with("sha256:") {
            oci_client::Reference::with_digest(
                self.host.clone(),
                repository.to_owned(),
                reference.to_owned(),
            )
        } else {
            oci_client::Reference::with_tag(
                self.host.clone(),
                repository.to_owned(),
                reference.to_owned(),
            )
        }
    }

    /// Pushes a blob with the monolithic upload API.
    pub async fn push_blob(&self, repository: &str, data: &[u8]) {
        let (client, auth) = self.client();
        let reference = self.reference(repository, "latest");
        client
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        client
            .push_blob(&reference, data.to_vec(), &testkit::sha256_digest(data))
            .await
            .unwrap();
    }

    /// Pushes a manifest or index under a tag or its digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        body: &[u8],
        media_type: &str,
    ) {
        let (client, auth) = self.client();
        let reference = self.reference(repository, reference);
        client
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &reference,
                body.to_vec(),
                HeaderValue::from_str(media_type).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Pushes an image's blobs and its manifest under `tag`.
    pub async fn push(&self, repository: &str, tag: &str, parts: &ImageParts) {
        for blob in parts.layers.iter().chain([&parts.config]) {
            self.push_blob(repository, blob).await;
        }
        self.push_manifest(repository, tag, &parts.manifest, parts.media_type)
            .await;
    }

    /// Pushes images by digest and an index of them (OCI or Docker) under `tag`;
    /// returns the index's digest.
    pub async fn push_index(
        &self,
        repository: &str,
        tag: &str,
        images: &[(&ImageParts, &str, &str)],
        media_type: &str,
    ) -> String {
        let mut manifests = Vec::new();
        for (parts, os, architecture) in images {
            for blob in parts.layers.iter().chain([&parts.config]) {
                self.push_blob(repository, blob).await;
            }
            self.push_manifest(
                repository,
                &parts.digest(),
                &parts.manifest,
                parts.media_type,
            )
            .await;
            manifests.push(json!({
                "mediaType": parts.media_type,
                "digest": parts.digest(),
                "size": parts.manifest.len(),
                "platform": {"os": os, "architecture": architecture},
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": manifests,
        }))
        .unwrap();
        self.push_manifest(repository, tag, &index, media_type)
            .await;
        testkit::sha256_digest(&index)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries fast enough for tests.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

/// A CA certificate, and a server certificate and key for 127.0.0.1 signed by it.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "skiff test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
