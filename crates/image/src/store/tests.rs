//! Store tests: archives are built with testkit, loaded, resolved and listed.

use std::io::Read;

use testkit::{
    busybox_image, Archive, Compression as LayerCompression, EntryKind, ImageBuilder, Layer,
    ANNOTATION_CONTAINERD_NAME,
};

use super::*;
use crate::unpack::UnpackError;

fn open() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

fn app(name: &str, content: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(Layer::new().file("etc/base", "base"))
        .layer(Layer::new().file("app", content).mode(0o755))
        .entrypoint(["/app"])
        .cmd(["--serve"])
        .env("MODE", "test")
        .working_dir("/srv")
        .user("65534:65534")
        .expose("8080/tcp")
        .ref_name(name)
        .repo_tag(name)
}

/// Rewrites an archive: `edit` returns the new content of each file, or `None` to drop it.
fn rewrite(archive: &[u8], mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut input = tar::Archive::new(archive);
    let mut output = tar::Builder::new(Vec::new());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&path, data) {
            header.set_size(data.len() as u64);
            header.set_cksum();
            output.append(&header, data.as_slice()).unwrap();
        }
    }
    output.into_inner().unwrap()
}

/// Names of entries in `dir` (no temporaries expected anywhere).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_no_temporaries(store: &ImageStore) {
    for dir in [
        store.root(),
        store.content().dir(),
        store.layers().dir(),
        &store.root().join("images"),
    ] {
        let temps: Vec<_> = entries(dir)
            .into_iter()
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        assert!(
            temps.is_empty(),
            "temporaries left in {}: {temps:?}",
            dir.display()
        );
    }
}

#[test]
fn oci_archive_loads_and_resolves_by_every_form() {
    let (_dir, store) = open();
    let builder = app("busybox:latest", "v1");
    let images = store
        .load_archive(builder.oci_archive().unwrap().as_slice())
        .unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.digest, builder.manifest_digest().unwrap());
    assert_eq!(image.names, ["docker.io/library/busybox:latest"]);
    assert_eq!(image.config.entrypoint, ["/app"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.env, ["MODE=test"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.user.as_deref(), Some("65534:65534"));
    assert_eq!(image.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(image.os, "linux");
    assert_eq!(image.created.as_deref(), Some("2024-01-01T00:00:00Z"));
    assert!(image.size > 0);

    let hex = image.digest.strip_prefix("sha256:").unwrap();
    for reference in [
        "busybox".to_owned(),
        "busybox:latest".to_owned(),
        "docker.io/library/busybox:latest".to_owned(),
        format!("sha256:{hex}"),
        format!("busybox@sha256:{hex}"),
    ] {
        assert_eq!(&store.resolve(&reference).unwrap(), image, "{reference}");
    }

    let dirs = store.layer_dirs(image);
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("etc/base")).unwrap(),
        "base"
    );
    assert_eq!(std::fs::read_to_string(dirs[1].join("app")).unwrap(), "v1");
    assert_eq!(store.list().unwrap(), images);
    assert_no_temporaries(&store);
}

#[test]
fn docker_save_archive_with_shared_layers_stores_each_layer_once() {
    let (_dir, store) = open();
    let shared = Layer::new().file("shared", "s");
    let first = ImageBuilder::new()
        .layer(shared.clone())
        .repo_tag("team/one:1");
    // The shared layer sits at another depth here, so docker save symlinks it.
    let second = ImageBuilder::new()
        .layer(
            Layer::new()
                .file("base", "b")
                .compression(LayerCompression::None),
        )
        .layer(shared)
        .repo_tag("127.0.0.1:5000/two")
        .repo_tag("two:latest");
    let archive = Archive::docker()
        .image(first)
        .image(second)
        .compression(LayerCompression::Gzip)
        .to_bytes()
        .unwrap();
    let images = store.load_archive(archive.as_slice()).unwrap();
    assert_eq!(images[0].names, ["docker.io/team/one:1"]);
    assert_eq!(
        images[1].names,
        ["127.0.0.1:5000/two:latest", "docker.io/library/two:latest"]
    );
    assert_eq!(images[0].diff_ids[0], images[1].diff_ids[1]);
    assert_eq!(entries(store.layers().dir()).len(), 2);
    assert_eq!(store.resolve("two").unwrap().digest, images[1].digest);
    assert_eq!(
        store.resolve("127.0.0.1:5000/two:latest").unwrap().digest,
        images[1].digest
    );
    // Loading the same archive again yields the same identities.
    let again = store.load_archive(archive.as_slice()).unwrap();
    assert_eq!(again, images);
    assert_no_temporaries(&store);
}

#[test]
fn layers_of_every_compression_with_whiteouts_and_hard_links() {
    let (_dir, store) = open();
    let builder = ImageBuilder::new()
        .layer(
            Layer::new()
                .file("bin/tool", "t")
                .hardlink("bin/alias", "bin/tool")
                .file("old", "o")
                .compression(LayerCompression::None),
        )
        .layer(
            Layer::new()
                .whiteout("old")
                .compression(LayerCompression::Zstd),
        )
        .layer(
            Layer::new()
                .opaque("bin")
                .compression(LayerCompression::Gzip),
        )
        .ref_name("registry.local/mixed:1");
    let image = &store
        .load_archive(builder.oci_archive().unwrap().as_slice())
        .unwrap()[0];
    let dirs = store.layer_dirs(image);
    let tool = std::fs::metadata(dirs[0].join("bin/tool")).unwrap();
    let alias = std::fs::metadata(dirs[0].join("bin/alias")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&tool),
        std::os::unix::fs::MetadataExt::ino(&alias)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(dirs[1].join("old"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(dirs[2].join("bin").is_dir());
}

#[test]
fn oci_names_come_from_annotations() {
    let (_dir, store) = open();
    let tagged = ImageBuilder::new()
        .layer(Layer::new().file("a", "1"))
        .ref_name("latest")
        .annotation(ANNOTATION_CONTAINERD_NAME, "docker.io/team/app:2");
    let bare = ImageBuilder::new()
        .layer(Layer::new().file("a", "2"))
        .ref_name("1.0");
    let archive = Archive::oci()
        .image(tagged)
        .image(bare.clone())
        .to_bytes()
        .unwrap();
    let images = store.load_archive(archive.as_slice()).unwrap();
    assert_eq!(images[0].names, ["docker.io/team/app:2"]);
    assert!(images[1].names.is_empty());
    let digest = bare.manifest_digest().unwrap();
    assert_eq!(store.resolve(&digest).unwrap().digest, digest);
    let err = store.resolve("1.0").unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
}

#[test]
fn a_reloaded_name_moves_to_the_new_image() {
    let (_dir, store) = open();
    let old = &store
        .load_archive(app("app:1", "v1").oci_archive().unwrap().as_slice())
        .unwrap()[0];
    let new = &store
        .load_archive(app("app:1", "v2").oci_archive().unwrap().as_slice())
        .unwrap()[0];
    assert_ne!(old.digest, new.digest);
    assert_eq!(store.resolve("app:1").unwrap().digest, new.digest);
    assert!(store.resolve(&old.digest).unwrap().names.is_empty());
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn corrupted_blob_is_refused_and_leaves_nothing() {
    let (_dir, store) = open();
    let builder = app("app:1", "v1");
    let layer_blob = Layer::new().file("app", "v1").mode(0o755).blob().unwrap();
    let layer_path = format!("blobs/sha256/{}", &testkit::sha256_digest(&layer_blob)[7..]);
    let archive = rewrite(&builder.oci_archive().unwrap(), |path, mut data| {
        if path == layer_path {
            let last = data.len() - 1;
            data[last] ^= 0xff;
        }
        Some(data)
    });
    let err = store.load_archive(archive.as_slice()).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if expected.as_str() == format!("sha256:{}", &layer_path[13..])),
        "{err:?}"
    );
    assert!(!store.content().dir().join(&layer_path[13..]).exists());
    assert!(entries(store.layers().dir()).is_empty());
    assert!(store.list().unwrap().is_empty());
    assert_no_temporaries(&store);
}

#[test]
fn malicious_layer_in_an_archive_leaves_no_layer() {
    let (_dir, store) = open();
    let builder = ImageBuilder::new()
        .layer(Layer::new().file("ok", "fine"))
        .layer(
            Layer::new()
                .file("x", "x")
                .raw("../../escape", EntryKind::File(b"x".to_vec())),
        )
        .ref_name("evil:1");
    let err = store
        .load_archive(builder.oci_archive().unwrap().as_slice())
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::Unpack { source: UnpackError::ParentComponent { entry }, .. } if entry == "../../escape"),
        "{err:?}"
    );
    // The good lower layer stays (it is valid and shareable); the bad one left nothing.
    assert_eq!(entries(store.layers().dir()).len(), 1);
    assert!(matches!(
        store.resolve("evil:1"),
        Err(ImageError::NotFound { .. })
    ));
    assert_no_temporaries(&store);
}

#[test]
fn incomplete_and_foreign_archives_are_refused() {
    let (_dir, store) = open();
    let builder = app("app:1", "v1");
    let config_hex = testkit::sha256_digest(&builder.config_json().unwrap())[7..].to_owned();
    let without_config = rewrite(&builder.oci_archive().unwrap(), |path, data| {
        (!path.ends_with(&config_hex)).then_some(data)
    });
    let err = store.load_archive(without_config.as_slice()).unwrap_err();
    assert!(
        matches!(err, ImageError::MissingBlob { what: "config", .. }),
        "{err:?}"
    );

    let docker_without_layer = rewrite(&builder.docker_archive().unwrap(), |path, data| {
        (!path.ends_with("layer.tar")).then_some(data)
    });
    let err = store
        .load_archive(docker_without_layer.as_slice())
        .unwrap_err();
    assert!(
        matches!(err, ImageError::MissingArchiveFile { .. }),
        "{err:?}"
    );

    let mut plain = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_cksum();
    plain
        .append_data(&mut header, "README", &b"hi"[..])
        .unwrap();
    let plain = plain.into_inner().unwrap();
    assert!(matches!(
        store.load_archive(plain.as_slice()),
        Err(ImageError::UnrecognizedArchive)
    ));
    let garbage = vec![0x42u8; 4096];
    assert!(matches!(
        store.load_archive(garbage.as_slice()),
        Err(ImageError::ArchiveRead(_))
    ));
    assert_no_temporaries(&store);
}

#[test]
fn not_found_and_invalid_references_explain_themselves() {
    let (_dir, store) = open();
    let err = store.resolve("nginx").unwrap_err();
    assert!(err.to_string().contains("skiff image load FILE"), "{err}");
    assert!(matches!(
        store.resolve("Bad/Name"),
        Err(ImageError::InvalidReference { .. })
    ));
    assert!(matches!(
        store.resolve("sha256:nothex"),
        Err(ImageError::InvalidDigest { .. })
    ));
}

#[test]
fn the_store_is_exclusive_persistent_and_cleans_up_after_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    assert!(matches!(
        ImageStore::open(&root),
        Err(ImageError::StoreLocked { .. })
    ));
    let loaded = store
        .load_archive(app("app:1", "v1").oci_archive().unwrap().as_slice())
        .unwrap();
    drop(store);

    // Simulate a crash in the middle of an import.
    std::fs::create_dir(root.join("layers/.tmp-crashed")).unwrap();
    std::fs::write(root.join("layers/.tmp-crashed/file"), "partial").unwrap();
    std::fs::write(root.join("blobs/sha256/.tmp-partial"), "partial").unwrap();
    let store = ImageStore::open(&root).unwrap();
    assert_no_temporaries(&store);
    assert_eq!(store.list().unwrap(), loaded);
    assert_eq!(store.resolve("app:1").unwrap(), loaded[0]);
}

#[test]
fn concurrent_loads_share_layers() {
    let (_dir, store) = open();
    let archives: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            app(&format!("app:{i}"), &format!("v{i}"))
                .oci_archive()
                .unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        for archive in &archives {
            let store = store.clone();
            scope.spawn(move || store.load_archive(archive.as_slice()).unwrap());
        }
    });
    // One shared base layer plus one app layer per image.
    assert_eq!(entries(store.layers().dir()).len(), 5);
    for i in 0..4 {
        assert_eq!(
            store.resolve(&format!("app:{i}")).unwrap().names,
            [format!("docker.io/library/app:{i}")]
        );
    }
    assert_no_temporaries(&store);
}

#[test]
fn busybox_image_loads_from_both_formats() {
    let (_dir, store) = open();
    let builder = busybox_image("busybox").unwrap();
    let from_oci = &store
        .load_archive(builder.oci_archive().unwrap().as_slice())
        .unwrap()[0];
    assert_eq!(from_oci.names, ["docker.io/library/busybox:latest"]);
    let from_docker = &store
        .load_archive(builder.docker_archive().unwrap().as_slice())
        .unwrap()[0];
    assert_eq!(from_docker.diff_ids, from_oci.diff_ids);
    let layer = &store.layer_dirs(from_docker)[0];
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        store.resolve("busybox:latest").unwrap().digest,
        from_docker.digest
    );
}

#[test]
fn archive_names_are_marked_loaded_and_pulls_unmark_them() {
    let (_dir, store) = open();
    let builder = app("busybox:latest", "v1");
    let loaded = store
        .load_archive(builder.oci_archive().unwrap().as_slice())
        .unwrap();
    let found = store.resolve_loaded("busybox").unwrap().unwrap();
    assert_eq!(found.digest, loaded[0].digest);
    assert!(store.resolve_loaded("other:1").unwrap().is_none());
    assert!(store.resolve_loaded("not a reference").unwrap().is_none());

    // A registry import of the same name makes it a pulled name again.
    let digest = Digest::parse(&loaded[0].digest).unwrap();
    store
        .import(
            &digest,
            &["docker.io/library/busybox:latest".to_owned()],
            Vec::new(),
            Origin::Registry,
            &crate::UnpackBudget::largest_task(),
        )
        .unwrap();
    assert!(store.resolve_loaded("busybox").unwrap().is_none());
}
