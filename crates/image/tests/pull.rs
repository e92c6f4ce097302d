//! Pulls from a real registry (Debian's `docker-registry`) on loopback.

mod support;

use std::collections::HashSet;
use std::error::Error as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use image::{
    Credentials, ImageError, ImageStore, LayerState, Platform, PullOptions, PullProgress, Registry,
    RegistryConfig,
};
use support::{ImageParts, Options, TestRegistry, DOCKER_MANIFEST_LIST, OCI_INDEX};
use testkit::{Compression, ImageBuilder, Layer};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

/// Three layers: hard links, a whiteout, an opaque directory, mixed compression.
fn app_image(version: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(
            Layer::new()
                .file("bin/tool", "tool")
                .hardlink("bin/alias", "bin/tool")
                .file("etc/old.conf", "old")
                .file("var/cache/a", "a"),
        )
        .layer(
            Layer::new()
                .whiteout("etc/old.conf")
                .opaque("var/cache")
                .compression(Compression::Zstd),
        )
        .layer(Layer::new().file("app", version).mode(0o755))
        .entrypoint(["/app"])
}

fn registry_for(config: RegistryConfig) -> Registry {
    Registry::new(config).unwrap()
}

fn no_progress(_: PullProgress) {}

/// Entries of a store directory starting with `.tmp-` (none may be left).
fn temporaries(store: &ImageStore) -> Vec<String> {
    [store.content().dir(), store.layers().dir(), store.root()]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_digest_and_a_second_pull_only_checks_the_tag() {
    let registry = TestRegistry::start(Options::default());
    let parts = ImageParts::of(&app_image("v1"));
    registry.push("team/app", "1", &parts).await;
    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());
    let reference = format!("{}/team/app:1", registry.host);

    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let image = store
        .pull(&client, &reference, PullOptions::default(), move |event| {
            seen.lock().unwrap().push(event)
        })
        .await
        .unwrap();
    assert_eq!(image.digest, parts.digest());
    let by_digest = format!("{}/team/app@{}", registry.host, parts.digest());
    assert_eq!(image.names, [reference.clone(), by_digest.clone()]);
    assert_eq!(image.config.entrypoint, ["/app"]);
    assert_eq!(image.diff_ids.len(), 3);

    // Every layer reached Done with all its bytes.
    let events = std::mem::take(&mut *events.lock().unwrap());
    for digest in parts.layer_digests() {
        let last = events.iter().rfind(|e| e.layer.as_str() == digest).unwrap();
        assert_eq!(last.state, LayerState::Done);
        assert_eq!(last.done, last.total);
        assert_eq!(last.layers, 3);
    }

    // The layers are unpacked: hard link, whiteout, opaque directory.
    let dirs = store.layer_dirs(&image);
    let tool = std::fs::metadata(dirs[0].join("bin/tool")).unwrap();
    assert_eq!(
        tool.ino(),
        std::fs::metadata(dirs[0].join("bin/alias")).unwrap().ino()
    );
    assert!(std::fs::symlink_metadata(dirs[1].join("etc/old.conf"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(std::fs::read_to_string(dirs[2].join("app")).unwrap(), "v1");

    // Each blob was downloaded once.
    let mut gets = registry.blob_gets();
    gets.sort();
    let mut expected = parts.layer_digests();
    expected.push(parts.config_digest());
    expected.sort();
    assert_eq!(gets, expected);

    // A second pull by tag asks only for the manifest's digest.
    let before = registry.requests().len();
    let again = store
        .pull(&client, &reference, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert_eq!(again, image);
    let new: Vec<_> = registry.requests().split_off(before);
    assert!(
        new.iter()
            .all(|r| r.path.contains("/manifests/") || r.path == "/v2/"),
        "{new:?}"
    );
    assert!(new.iter().all(|r| !r.path.contains("/blobs/")), "{new:?}");

    // By digest, a stored image needs no request at all.
    let before = registry.requests().len();
    assert_eq!(
        store
            .pull(&client, &by_digest, PullOptions::default(), no_progress)
            .await
            .unwrap()
            .digest,
        image.digest
    );
    assert_eq!(
        store
            .resolve_digest(&client, &by_digest)
            .await
            .unwrap()
            .as_str(),
        parts.digest()
    );
    assert_eq!(registry.requests().len(), before);
    assert_eq!(
        store
            .resolve_digest(&client, &reference)
            .await
            .unwrap()
            .as_str(),
        parts.digest()
    );
    assert_eq!(store.resolve(&reference).unwrap().digest, image.digest);
    assert_eq!(store.resolve(&by_digest).unwrap().digest, image.digest);
    assert!(temporaries(&store).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platforms_are_selected_from_oci_indexes_and_docker_manifest_lists() {
    let registry = TestRegistry::start(Options::default());
    let amd64 = ImageParts::of(&app_image("amd64").architecture("amd64"));
    let arm64 = ImageParts::of(&app_image("arm64").architecture("arm64"));
    let index = registry
        .push_index(
            "multi",
            "oci",
            &[(&amd64, "linux", "amd64"), (&arm64, "linux", "arm64")],
            OCI_INDEX,
        )
        .await;
    let docker_amd64 = amd64.clone().docker();
    let docker_arm64 = arm64.clone().docker();
    registry
        .push_index(
            "multi",
            "docker",
            &[
                (&docker_amd64, "linux", "amd64"),
                (&docker_arm64, "linux", "arm64"),
            ],
            DOCKER_MANIFEST_LIST,
        )
        .await;
    let (_dir, store) = store();
    let for_platform = |os: &str, architecture: &str| {
        registry_for(RegistryConfig {
            platform: Platform::new(os, architecture),
            ..registry.pull_config()
        })
    };

    let default = registry_for(registry.pull_config());
    let oci = format!("{}/multi:oci", registry.host);
    let image = store
        .pull(&default, &oci, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert_eq!(image.digest, amd64.digest());
    assert_eq!(image.architecture, "amd64");
    let arm = for_platform("linux", "arm64");
    let image = store
        .pull(&arm, &oci, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert_eq!(image.digest, arm64.digest());
    assert_eq!(
        std::fs::read_to_string(store.layer_dirs(&image)[2].join("app")).unwrap(),
        "arm64"
    );
    // The index digest names the selected image too.
    let by_index = format!("{}/multi@{index}", registry.host);
    assert_eq!(
        store
            .pull(&arm, &by_index, PullOptions::default(), no_progress)
            .await
            .unwrap()
            .digest,
        arm64.digest()
    );
    assert_eq!(store.resolve(&by_index).unwrap().digest, arm64.digest());

    let docker = format!("{}/multi:docker", registry.host);
    let image = store
        .pull(&arm, &docker, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert_eq!(image.digest, docker_arm64.digest());
    // Same layers as the OCI arm64 image: nothing more to unpack.
    assert_eq!(count(store.layers().dir()), 3 + 1);

    let err = store
        .pull(
            &for_platform("linux", "s390x"),
            &oci,
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap_err();
    match &err {
        ImageError::NoMatchingPlatform {
            wanted, available, ..
        } => {
            assert_eq!(wanted, "linux/s390x");
            assert_eq!(available, "linux/amd64, linux/arm64");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_used_and_refusals_say_how_to_log_in() {
    let registry = TestRegistry::start(Options {
        auth: Some(("alice", "s3cret")),
        tls: false,
    });
    let parts = ImageParts::of(&app_image("private"));
    registry.push("private/app", "1", &parts).await;
    let (_dir, store) = store();
    let reference = format!("{}/private/app:1", registry.host);

    let image = store
        .pull(
            &registry_for(registry.pull_config()),
            &reference,
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap();
    assert_eq!(image.digest, parts.digest());

    let wrong = registry_for(RegistryConfig {
        credentials: Arc::new(|_: &str| {
            Some(Credentials {
                username: "alice".to_owned(),
                password: "wrong".to_owned(),
            })
        }),
        ..registry.pull_config()
    });
    let anonymous = registry_for(RegistryConfig {
        credentials: Arc::new(|_: &str| None),
        ..registry.pull_config()
    });
    for (client, credentials_sent) in [(wrong, true), (anonymous, false)] {
        let (_dir, store) = self::store();
        let err = store
            .pull(&client, &reference, PullOptions::default(), no_progress)
            .await
            .unwrap_err();
        if credentials_sent {
            assert!(
                matches!(&err, ImageError::RegistryCredentialsRefused { registry: r, username, .. }
                    if *r == registry.host && username == "alice"),
                "{err:?}"
            );
        } else {
            assert!(
                matches!(&err, ImageError::RegistryUnauthorized { registry: r, .. } if *r == registry.host),
                "{err:?}"
            );
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("skiff registry login {}", registry.host)),
            "{message}"
        );
        assert!(store.list().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registries_need_their_ca_and_plain_http_needs_to_be_allowed() {
    let secure = TestRegistry::start(Options {
        auth: None,
        tls: true,
    });
    let parts = ImageParts::of(&app_image("tls"));
    secure.push("app", "1", &parts).await;
    let (_dir, store) = store();
    let reference = format!("{}/app:1", secure.host);
    let image = store
        .pull(
            &registry_for(secure.pull_config()),
            &reference,
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap();
    assert_eq!(image.digest, parts.digest());

    let (_dir, store) = self::store();
    let without_ca = registry_for(RegistryConfig {
        extra_ca: None,
        ..secure.pull_config()
    });
    let err = store
        .pull(&without_ca, &reference, PullOptions::default(), no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::RegistryTls { .. }), "{err:?}");
    assert!(err.to_string().contains("--registry-ca FILE"), "{err}");

    let plain = TestRegistry::start(Options::default());
    plain.push("app", "1", &parts).await;
    let not_allowed = registry_for(RegistryConfig {
        insecure: Vec::new(),
        ..plain.pull_config()
    });
    let err = store
        .pull(
            &not_allowed,
            &format!("{}/app:1", plain.host),
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::RegistryTls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("--insecure-registry {}", plain.host)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_wrong_bytes_is_refused_and_nothing_stays() {
    let registry = TestRegistry::start(Options::default());
    let parts = ImageParts::of(&app_image("corrupt"));
    registry.push("app", "1", &parts).await;
    let layer = parts.layer_digests()[2].clone();
    let file = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());
    let err = store
        .pull(
            &client,
            &format!("{}/app:1", registry.host),
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if expected.as_str() == layer),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer), "{err}");
    assert!(!store.content().dir().join(&layer[7..]).exists());
    let diff_id = testkit::Layer::new()
        .file("app", "corrupt")
        .mode(0o755)
        .diff_id()
        .unwrap();
    assert!(!store.layers().dir().join(&diff_id[7..]).exists());
    assert!(store.list().unwrap().is_empty());
    assert!(temporaries(&store).is_empty(), "{:?}", temporaries(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_unreachable_registries_are_reported() {
    let registry = TestRegistry::start(Options::default());
    registry
        .push("app", "1", &ImageParts::of(&app_image("v1")))
        .await;
    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());
    for (reference, registry_says) in [
        ("app:2", "manifest unknown"),
        ("nothing/here:1", "manifest unknown"),
    ] {
        let reference = format!("{}/{reference}", registry.host);
        let err = store
            .pull(&client, &reference, PullOptions::default(), no_progress)
            .await
            .unwrap_err();
        match &err {
            ImageError::RegistryNotFound {
                reference: r,
                message,
            } => {
                assert_eq!(*r, reference);
                assert_eq!(message, registry_says);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("check the repository name"),
            "{err}"
        );
    }

    // Nothing listens on a port freshly taken and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let client = registry_for(RegistryConfig {
        insecure: vec![host.clone()],
        retry: support::quick_retries(),
        ..RegistryConfig::default()
    });
    let err = store
        .pull(
            &client,
            &format!("{host}/app:1"),
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::RegistryUnreachable { registry, attempts: 3, .. } if *registry == host),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    let registry = TestRegistry::start(Options::default());
    let base = Layer::new().file("base", vec![7u8; 256 * 1024]);
    let one = ImageParts::of(
        &ImageBuilder::new()
            .layer(base.clone())
            .layer(Layer::new().file("one", "1")),
    );
    let two = ImageParts::of(
        &ImageBuilder::new()
            .layer(base)
            .layer(Layer::new().file("two", "2")),
    );
    registry.push("one", "1", &one).await;
    registry.push("two", "1", &two).await;
    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());

    let pulls = (0..6).map(|i| {
        let (store, client) = (store.clone(), client.clone());
        let reference = format!(
            "{}/{}:1",
            registry.host,
            if i % 2 == 0 { "one" } else { "two" }
        );
        tokio::spawn(async move {
            store
                .pull(&client, &reference, PullOptions::default(), no_progress)
                .await
        })
    });
    let images: Vec<_> = futures::future::join_all(pulls)
        .await
        .into_iter()
        .map(|result| result.unwrap().unwrap())
        .collect();
    assert!(images.iter().step_by(2).all(|i| i.digest == one.digest()));
    assert!(images
        .iter()
        .skip(1)
        .step_by(2)
        .all(|i| i.digest == two.digest()));

    let gets = registry.blob_gets();
    let unique: HashSet<_> = gets.iter().collect();
    assert_eq!(
        gets.len(),
        unique.len(),
        "a blob was downloaded twice: {gets:?}"
    );
    // Shared base, two top layers, two configs.
    assert_eq!(unique.len(), 5);
    assert_eq!(count(store.layers().dir()), 3);
    assert!(temporaries(&store).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_eviction_keep_images_in_use() {
    let registry = TestRegistry::start(Options::default());
    let old = ImageParts::of(&app_image("old"));
    let new = ImageParts::of(&app_image("new"));
    registry.push("app", "old", &old).await;
    registry.push("app", "new", &new).await;
    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());
    let old_ref = format!("{}/app:old", registry.host);
    let new_ref = format!("{}/app:new", registry.host);
    store
        .pull(&client, &old_ref, PullOptions::default(), no_progress)
        .await
        .unwrap();
    store
        .pull(&client, &new_ref, PullOptions::default(), no_progress)
        .await
        .unwrap();
    // `old` is used again (later than the last-use resolution of 1 s), so `new` is
    // now the least recently used.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store.resolve(&old_ref).unwrap();
    let full = store.usage().unwrap();

    let nothing: HashSet<String> = HashSet::new();
    let report = store.evict_to(full, &nothing).unwrap();
    assert!(report.images_removed.is_empty(), "{report:?}");
    let report = store.evict_to(full - 1, &nothing).unwrap();
    assert_eq!(report.images_removed, [new.digest()]);
    assert_eq!(report.blobs_removed, 3, "{report:?}");
    assert_eq!(report.layers_removed, 1, "{report:?}");
    assert!(report.bytes_freed > 0);
    assert_eq!(store.usage().unwrap(), full - report.bytes_freed);
    assert!(matches!(
        store.resolve(&new_ref),
        Err(ImageError::NotFound { .. })
    ));

    // A running task's image survives eviction to zero, even after `rm`.
    let in_use: HashSet<String> = [old.digest()].into();
    assert!(store
        .evict_to(0, &in_use)
        .unwrap()
        .images_removed
        .is_empty());
    let removed = store.remove(&old_ref).unwrap();
    assert_eq!(removed.deleted, Some(old.digest()));
    let report = store.prune(&in_use).unwrap();
    assert_eq!(
        report.blobs_removed + report.layers_removed,
        0,
        "{report:?}"
    );
    let dirs: Vec<_> = (0..3)
        .map(|i| store.layers().dir().join(&old_layer_diff_id(i)[7..]))
        .collect();
    assert!(dirs.iter().all(|dir| dir.is_dir()));

    // A hold from the pull protects an image not (yet) in use, until dropped.
    let (held, hold) = store
        .pull_held(&client, &new_ref, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert!(store
        .evict_to(0, &in_use)
        .unwrap()
        .images_removed
        .is_empty());
    assert!(store.prune(&in_use).unwrap().images_removed.is_empty());
    assert_eq!(store.resolve(&new_ref).unwrap(), held);
    drop(hold);
    let report = store.evict_to(0, &in_use).unwrap();
    assert_eq!(report.images_removed, [new.digest()]);

    // Once the task is gone, prune frees everything.
    let report = store.prune(&nothing).unwrap();
    assert_eq!(report.layers_removed, 3);
    assert_eq!(report.blobs_removed, 5);
    assert_eq!(count(store.content().dir()), 0);
    assert_eq!(count(store.layers().dir()), 0);
    // The next pull needs the registry again, and works.
    store
        .pull(&client, &old_ref, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert!(temporaries(&store).is_empty());
}

/// The diff ids of `app_image("old")`.
fn old_layer_diff_id(index: usize) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&app_image("old").config_json().unwrap()).unwrap();
    config["rootfs"]["diff_ids"][index]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap();
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_leaves_nothing_behind() {
    let registry = TestRegistry::start(Options::default());
    let parts = ImageParts::of(
        &ImageBuilder::new().layer(
            Layer::new()
                .file("big", noise(3 * 1024 * 1024))
                .compression(Compression::None),
        ),
    );
    registry.push("big", "1", &parts).await;
    let disk = SmallDisk::mount("4m");
    let store = ImageStore::open(&disk.dir.path().join("images")).unwrap();
    let client = registry_for(registry.pull_config());
    let err = store
        .pull(
            &client,
            &format!("{}/big:1", registry.host),
            PullOptions::default(),
            no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("skiff image prune"), "{err}");
    assert!(temporaries(&store).is_empty(), "{:?}", temporaries(&store));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(store.layers().dir()), 0);
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_over_the_unpack_limit_fails_the_pull_and_leaves_nothing() {
    let registry = TestRegistry::start(Options::default());
    // 8 MiB of zeros in a few KiB, beside an ordinary layer whose download is aborted
    // or finished, but never recorded.
    let bomb = Layer::new()
        .file("zeros", vec![0u8; 8 << 20])
        .compression(Compression::Zstd);
    let bomb_diff_id = bomb.diff_id().unwrap();
    let parts = ImageParts::of(
        &ImageBuilder::new()
            .layer(Layer::new().file("base", "base"))
            .layer(bomb),
    );
    assert!(parts.layers[1].len() < 64 * 1024);
    registry.push("bomb", "1", &parts).await;
    let (_dir, store) = store();
    let client = registry_for(registry.pull_config());
    let reference = format!("{}/bomb:1", registry.host);

    let options = PullOptions {
        unpack_limit: 1 << 20,
    };
    let err = store
        .pull(&client, &reference, options, no_progress)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ImageError::Unpack { layer, source: image::UnpackError::TooLarge { limit: 1_048_576 } }
                if layer.as_str() == bomb_diff_id
        ),
        "{err:?}"
    );
    assert!(err
        .source()
        .unwrap()
        .to_string()
        .contains("more than 1 MiB"));
    assert!(temporaries(&store).is_empty(), "{:?}", temporaries(&store));
    assert!(!store.layers().dir().join(&bomb_diff_id[7..]).exists());
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.resolve(&reference),
        Err(ImageError::NotFound { .. })
    ));

    // The same pull with room for the layer succeeds.
    let image = store
        .pull(&client, &reference, PullOptions::default(), no_progress)
        .await
        .unwrap();
    assert_eq!(image.digest, parts.digest());
    assert!(temporaries(&store).is_empty());
}
