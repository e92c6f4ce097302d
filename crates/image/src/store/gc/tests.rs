//! Cache management tests on images loaded from testkit archives.

use std::collections::HashSet;
use std::time::Duration;

use testkit::{Archive, ImageBuilder, Layer};

use super::*;

fn open() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

/// A shared base layer and a layer of its own.
fn app(content: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(Layer::new().file("base", "shared base"))
        .layer(Layer::new().file("app", content))
}

fn load(store: &ImageStore, builder: ImageBuilder, names: &[&str]) -> String {
    let builder = names.iter().fold(builder, |b, name| b.repo_tag(name));
    let archive = Archive::docker().image(builder).to_bytes().unwrap();
    store.load_archive(archive.as_slice()).unwrap()[0]
        .digest
        .clone()
}

/// [`load`], then names the image as a pull would have: an image eviction may remove.
fn pulled(store: &ImageStore, builder: ImageBuilder, names: &[&str]) -> String {
    let digest = load(store, builder, names);
    let names: Vec<String> = names
        .iter()
        .map(|name| crate::reference::normalize_reference(name).unwrap())
        .collect();
    let _guard = store.lock_metadata();
    store
        .point_names(
            &names,
            &Digest::parse(&digest).unwrap(),
            crate::store::Origin::Registry,
        )
        .unwrap();
    digest
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn none() -> HashSet<String> {
    HashSet::new()
}

#[test]
fn removing_the_last_tag_removes_the_record_and_digests_remove_everything() {
    let (_dir, store) = open();
    let digest = load(&store, app("v1"), &["app:1", "app:latest"]);
    let removed = store.remove("app:1").unwrap();
    assert_eq!(removed.untagged, ["docker.io/library/app:1"]);
    assert_eq!(removed.deleted, None);
    assert_eq!(store.resolve("app").unwrap().digest, digest);

    // A digest name does not keep an image whose last tag goes.
    let hex = &digest[7..];
    {
        let _guard = store.lock_metadata();
        let names = [format!("docker.io/library/app@sha256:{hex}")];
        store
            .point_names(
                &names,
                &Digest::parse(&digest).unwrap(),
                crate::store::Origin::Registry,
            )
            .unwrap();
    }
    let removed = store.remove("app:latest").unwrap();
    assert_eq!(
        removed.untagged,
        [
            "docker.io/library/app:latest".to_owned(),
            format!("docker.io/library/app@sha256:{hex}"),
        ]
    );
    assert_eq!(removed.deleted.as_deref(), Some(digest.as_str()));
    assert!(matches!(
        store.resolve(&digest),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.remove("app:1"),
        Err(ImageError::NotFound { .. })
    ));

    let other = load(&store, app("v2"), &["other:1", "other:2"]);
    let removed = store.remove(&other).unwrap();
    assert_eq!(removed.untagged.len(), 2);
    assert_eq!(removed.deleted.as_deref(), Some(other.as_str()));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn prune_removes_superseded_images_and_their_data_but_not_in_use_ones() {
    let (_dir, store) = open();
    let old = load(&store, app("v1"), &["app:1"]);
    let new = load(&store, app("v2"), &["app:1"]);
    assert_eq!(entries(store.layers().dir()), 3);
    let blobs = entries(store.content().dir());

    // The superseded image is nameless, but a running task still uses it.
    let in_use: HashSet<String> = [old.clone()].into();
    let report = store.prune(&in_use).unwrap();
    assert_eq!(report, PruneReport::default());

    let report = store.prune(&none()).unwrap();
    assert_eq!(report.images_removed, std::slice::from_ref(&old));
    // Its manifest, config and own layer blob; its own unpacked layer.
    assert_eq!(report.blobs_removed, 3);
    assert_eq!(report.layers_removed, 1);
    assert!(report.bytes_freed > 0);
    assert_eq!(entries(store.content().dir()), blobs - 3);
    assert_eq!(store.resolve("app:1").unwrap().digest, new);
    let image = store.resolve(&new).unwrap();
    assert!(store.layer_dirs(&image).iter().all(|dir| dir.is_dir()));

    // Nothing left to collect.
    assert_eq!(store.prune(&none()).unwrap(), PruneReport::default());
    assert!(matches!(
        store.prune(&["not a digest".to_owned()].into()),
        Err(ImageError::InvalidDigest { .. })
    ));
}

#[test]
fn pinned_data_survives_collection_until_released() {
    let (_dir, store) = open();
    let digest = Digest::of(b"downloaded, not yet recorded");
    store
        .content()
        .write(&digest, None, &b"downloaded, not yet recorded"[..])
        .unwrap();
    let mut pins = store.pin();
    pins.add(&digest);
    pins.add(&digest);
    assert_eq!(store.prune(&none()).unwrap().blobs_removed, 0);
    drop(pins);
    assert!(store.lock_pins().is_empty());
    let report = store.prune(&none()).unwrap();
    assert_eq!(report.blobs_removed, 1);
    assert!(!store.content().path(&digest).exists());
}

#[test]
fn eviction_removes_least_recently_used_images_first() {
    let (_dir, store) = open();
    let first = pulled(&store, app("first"), &["first:1"]);
    let second = pulled(&store, app("second"), &["second:1"]);
    let third = pulled(&store, app("third"), &["third:1"]);
    // Age the records as if they were loaded a minute apart.
    for (age, digest) in [(3, &first), (2, &second), (1, &third)] {
        let digest = Digest::parse(digest).unwrap();
        let mut record = store.read_record(&digest).unwrap().unwrap();
        record.last_used = Some(super::super::now_millis() - age * 60_000);
        store.write_record(&record).unwrap();
    }
    store.resolve("first:1").unwrap();
    // Every use moves the time forward, however soon after the last one.
    let used = |digest: &str| {
        let digest = Digest::parse(digest).unwrap();
        store.read_record(&digest).unwrap().unwrap().last_used
    };
    let recorded = used(&first);
    std::thread::sleep(Duration::from_millis(5));
    store.resolve("first:1").unwrap();
    assert!(used(&first) > recorded);

    let usage = store.usage().unwrap();
    assert_eq!(
        store.evict_to(usage, &none()).unwrap(),
        PruneReport::default()
    );
    let report = store.evict_to(usage - 1, &none()).unwrap();
    assert_eq!(report.images_removed, [second]);
    assert_eq!(store.usage().unwrap(), usage - report.bytes_freed);

    // `third` is in use, so only `first` can go; the store stays over the limit.
    let in_use: HashSet<String> = [third.clone()].into();
    let report = store.evict_to(0, &in_use).unwrap();
    assert_eq!(report.images_removed, [first]);
    assert_eq!(store.list().unwrap()[0].digest, third);
    assert!(store.usage().unwrap() > 0);
}

#[test]
fn eviction_keeps_images_loaded_from_archives() {
    let (_dir, store) = open();
    let local = load(&store, app("local"), &["local:1"]);
    let remote = pulled(&store, app("remote"), &["remote:1"]);
    // Pulled under a registry name too, the loaded name still has no registry.
    let both = load(&store, app("both"), &["both:1"]);
    pulled(&store, app("both"), &["registry.example/both:1"]);
    // Superseded by a newer load under the same tag: nameless, so evictable.
    let superseded = load(&store, app("old"), &["app:1"]);
    let current = load(&store, app("new"), &["app:1"]);
    assert!(store.resolve_loaded("local:1").unwrap().is_some());

    let report = store.evict_to(0, &none()).unwrap();
    let mut removed = report.images_removed;
    removed.sort();
    let mut expected = vec![remote, superseded];
    expected.sort();
    assert_eq!(removed, expected);
    let mut kept: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    kept.sort();
    let mut expected = vec![local.clone(), both, current];
    expected.sort();
    assert_eq!(kept, expected);
    let image = store.resolve_loaded("local:1").unwrap().unwrap();
    assert!(store.layer_dirs(&image).iter().all(|dir| dir.is_dir()));

    // `skiff image rm` still removes a loaded image, and prune then frees its data.
    assert_eq!(store.remove("local:1").unwrap().deleted, Some(local));
    assert!(store.prune(&none()).unwrap().layers_removed > 0);
    // The removed name is no longer a local one: a later task pulls it from a registry.
    assert!(store.resolve_loaded("local:1").unwrap().is_none());
    pulled(&store, app("local"), &["local:1"]);
    assert!(store.resolve_loaded("local:1").unwrap().is_none());
}

#[test]
fn disk_usage_counts_hard_links_once_and_ignores_symlink_targets() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let file = tree.join("file");
    std::fs::write(&file, vec![1u8; 64 * 1024]).unwrap();
    let single = disk_usage(&tree).unwrap();
    std::fs::hard_link(&file, tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/usr", tree.join("symlink")).unwrap();
    let file_blocks = std::fs::metadata(&file).unwrap().blocks() * 512;
    assert!(file_blocks >= 64 * 1024);
    let with_links = disk_usage(&tree).unwrap();
    // The symlink may take a block of its own (or none, if inline); never /usr.
    assert!(
        with_links >= single && with_links <= single + 4096,
        "{single} {with_links}"
    );
    assert_eq!(disk_usage(&file).unwrap(), file_blocks);
    assert_eq!(disk_usage(&dir.path().join("missing")).unwrap(), 0);
}
