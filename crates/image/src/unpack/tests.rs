//! Unpacker tests. They need root (chown, mknod, trusted.* xattrs), as Skiff's agent does.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use testkit::{Compression as LayerCompression, EntryKind, Layer};

use super::*;

fn store() -> (tempfile::TempDir, LayerStore) {
    let root = tempfile::tempdir().unwrap();
    let layers = LayerStore::open(root.path()).unwrap();
    (root, layers)
}

/// A budget no test layer comes near.
fn unlimited() -> UnpackBudget {
    UnpackBudget::largest_task()
}

fn unpack(layers: &LayerStore, layer: &Layer) -> Result<(Digest, UnpackOutcome), ImageError> {
    let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
    let blob = layer.blob().unwrap();
    layers
        .unpack(&diff_id, blob.as_slice(), &unlimited())
        .map(|outcome| (diff_id, outcome))
}

/// Unpacks a layer that must be refused, checks that nothing was left in the layer
/// directory, and returns the entry-level error.
fn refused(layer: Layer) -> UnpackError {
    let (_root, layers) = store();
    let err = unpack(&layers, &layer).unwrap_err();
    let leftovers: Vec<_> = std::fs::read_dir(layers.dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    match err {
        ImageError::Unpack { source, .. } => source,
        other => panic!("expected an unpack error, got {other:?}"),
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buffer = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer pointer/length pair
    // describes a live, writable allocation.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    (n >= 0).then(|| buffer[..n as usize].to_vec())
}

#[test]
fn unpacks_files_links_and_metadata() {
    let layer = Layer::new()
        .dir("etc")
        .mtime(1_600_000_000)
        .file("etc/motd", "hi")
        .mode(0o4750)
        .owner(1000, 1001)
        .mtime(1_500_000_000)
        .xattr("user.origin", "test")
        .symlink("etc/link", "/etc/motd")
        .owner(7, 8)
        .hardlink("etc/hard", "etc/motd")
        .file("deep/implicit/parent", "p")
        .dir("./")
        .mode(0o750);
    let (_root, layers) = store();
    let (diff_id, outcome) = unpack(&layers, &layer).unwrap();
    assert_eq!(outcome, UnpackOutcome::Unpacked);
    let dir = layers.path(&diff_id);

    let motd = std::fs::symlink_metadata(dir.join("etc/motd")).unwrap();
    assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"hi");
    assert_eq!(motd.permissions().mode() & 0o7777, 0o4750);
    assert_eq!((motd.uid(), motd.gid()), (1000, 1001));
    assert_eq!(motd.mtime(), 1_500_000_000);
    assert_eq!(
        xattr(&dir.join("etc/motd"), "user.origin").as_deref(),
        Some(&b"test"[..])
    );

    let link = std::fs::symlink_metadata(dir.join("etc/link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(dir.join("etc/link")).unwrap(),
        Path::new("/etc/motd")
    );
    assert_eq!((link.uid(), link.gid()), (7, 8));

    let hard = std::fs::symlink_metadata(dir.join("etc/hard")).unwrap();
    assert_eq!(hard.ino(), motd.ino());

    // Directory mtimes survive the creation of their children.
    let etc = std::fs::symlink_metadata(dir.join("etc")).unwrap();
    assert_eq!(etc.mtime(), 1_600_000_000);
    let implicit = std::fs::symlink_metadata(dir.join("deep/implicit")).unwrap();
    assert_eq!(implicit.permissions().mode() & 0o7777, 0o755);
    let root = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o750);
}

#[test]
fn all_compressions_give_the_same_layer() {
    let base = Layer::new().file("a", vec![b'a'; 100_000]).dir("d");
    let (_root, layers) = store();
    let (first, outcome) =
        unpack(&layers, &base.clone().compression(LayerCompression::Gzip)).unwrap();
    assert_eq!(outcome, UnpackOutcome::Unpacked);
    for compression in [LayerCompression::Zstd, LayerCompression::None] {
        let (diff_id, outcome) = unpack(&layers, &base.clone().compression(compression)).unwrap();
        assert_eq!(diff_id, first);
        assert_eq!(outcome, UnpackOutcome::AlreadyPresent);
    }
    // Each compression also unpacks on its own.
    for compression in [LayerCompression::Zstd, LayerCompression::None] {
        let (_root, fresh) = store();
        let (diff_id, outcome) = unpack(&fresh, &base.clone().compression(compression)).unwrap();
        assert_eq!(outcome, UnpackOutcome::Unpacked);
        assert_eq!(
            std::fs::read(fresh.path(&diff_id).join("a")).unwrap().len(),
            100_000
        );
    }
}

#[test]
fn detects_compression_from_magic_bytes() {
    assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(
        Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
        Compression::Zstd
    );
    assert_eq!(Compression::detect(b"etc/"), Compression::None);
    assert_eq!(Compression::detect(&[0x1f]), Compression::None);
    let (compression, mut stream) = decompress(&b"ab"[..]).unwrap();
    assert_eq!(compression, Compression::None);
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"ab");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let layer = Layer::new()
        .whiteout("etc/removed")
        .opaque("var/cache")
        .file("etc/shadowed", "x")
        .whiteout("etc/shadowed")
        .file("usr/.wh..wh.plnk", "");
    let (_root, layers) = store();
    let (diff_id, _) = unpack(&layers, &layer).unwrap();
    let dir = layers.path(&diff_id);
    for name in ["etc/removed", "etc/shadowed"] {
        let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_char_device(), "{name}");
        assert_eq!(meta.rdev(), 0, "{name}");
    }
    assert!(!dir.join("etc/.wh.removed").exists());
    assert_eq!(
        xattr(&dir.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("var/cache/.wh..wh..opq").exists());
    assert!(!dir.join("usr/.wh..wh.plnk").exists());
}

#[test]
fn a_zero_zero_char_device_is_kept_as_a_whiteout() {
    let layer = Layer::new().raw("gone", EntryKind::CharDevice { major: 0, minor: 0 });
    let (_root, layers) = store();
    let (diff_id, _) = unpack(&layers, &layer).unwrap();
    let meta = std::fs::symlink_metadata(layers.path(&diff_id).join("gone")).unwrap();
    assert!(meta.file_type().is_char_device());
}

#[test]
fn later_entries_replace_earlier_ones_without_following_links() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "untouched").unwrap();
    let target = outside.path().to_str().unwrap();
    let layer = Layer::new()
        .symlink("link", target)
        .file("link", "replaced")
        .dir("d")
        .file("d/child", "c")
        .file("d", "now a file");
    let (_root, layers) = store();
    let (diff_id, _) = unpack(&layers, &layer).unwrap();
    let dir = layers.path(&diff_id);
    assert_eq!(
        std::fs::read_to_string(outside.path()).unwrap(),
        "untouched"
    );
    assert!(std::fs::symlink_metadata(dir.join("link"))
        .unwrap()
        .is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("d")).unwrap(),
        "now a file"
    );
}

#[test]
fn overlay_xattrs_from_the_archive_are_dropped() {
    let layer = Layer::new()
        .dir("d")
        .xattr("trusted.overlay.redirect", "/elsewhere")
        .xattr("user.kept", "1");
    let (_root, layers) = store();
    let (diff_id, _) = unpack(&layers, &layer).unwrap();
    let dir = layers.path(&diff_id).join("d");
    assert_eq!(xattr(&dir, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&dir, "user.kept").as_deref(), Some(&b"1"[..]));
}

#[test]
fn refuses_absolute_paths() {
    let err = refused(Layer::new().raw("/etc/passwd", EntryKind::File(b"x".to_vec())));
    assert!(
        matches!(&err, UnpackError::AbsolutePath { entry } if entry == "/etc/passwd"),
        "{err:?}"
    );
}

#[test]
fn refuses_parent_components() {
    let err = refused(
        Layer::new()
            .file("ok", "")
            .raw("a/../../escape", EntryKind::File(b"x".to_vec())),
    );
    assert!(
        matches!(&err, UnpackError::ParentComponent { entry } if entry == "a/../../escape"),
        "{err:?}"
    );
}

#[test]
fn refuses_writing_through_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let err = refused(
        Layer::new()
            .symlink("evil", target)
            .file("evil/passwd", "owned"),
    );
    assert!(
        matches!(&err, UnpackError::ThroughSymlink { entry, component } if entry == "evil/passwd" && component == "evil"),
        "{err:?}"
    );
    assert!(!outside.path().join("passwd").exists());
    // Directories and symlinks are refused the same way.
    let err = refused(Layer::new().symlink("evil", target).dir("evil/sub"));
    assert!(matches!(err, UnpackError::ThroughSymlink { .. }), "{err:?}");
    assert!(!outside.path().join("sub").exists());
}

#[test]
fn refuses_device_nodes_and_fifos() {
    let err = refused(Layer::new().raw("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }));
    assert!(
        matches!(&err, UnpackError::SpecialFile { entry, kind: "character device" } if entry == "dev/null"),
        "{err:?}"
    );
    let err = refused(Layer::new().raw("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }));
    assert!(
        matches!(
            err,
            UnpackError::SpecialFile {
                kind: "block device",
                ..
            }
        ),
        "{err:?}"
    );
    let err = refused(Layer::new().raw("pipe", EntryKind::Fifo));
    assert!(
        matches!(err, UnpackError::SpecialFile { kind: "fifo", .. }),
        "{err:?}"
    );
}

#[test]
fn refuses_hard_links_out_of_the_layer() {
    for target in ["../../etc/passwd", "/etc/passwd", "a/../../x"] {
        let err = refused(Layer::new().hardlink("passwd", target));
        assert!(
            matches!(&err, UnpackError::HardLinkOutside { entry, target: t } if entry == "passwd" && t == target),
            "{target}: {err:?}"
        );
    }
    let err = refused(
        Layer::new()
            .symlink("etc", "/etc")
            .hardlink("passwd", "etc/passwd"),
    );
    assert!(
        matches!(err, UnpackError::HardLinkOutside { .. }),
        "{err:?}"
    );
    let err = refused(Layer::new().hardlink("passwd", "not/there"));
    assert!(
        matches!(err, UnpackError::HardLinkTargetMissing { .. }),
        "{err:?}"
    );
}

#[test]
fn refuses_a_layer_that_does_not_match_its_diff_id() {
    let (_root, layers) = store();
    let claimed = Digest::parse(&Layer::new().file("a", "a").diff_id().unwrap()).unwrap();
    let blob = Layer::new().file("a", "b").blob().unwrap();
    let err = layers
        .unpack(&claimed, blob.as_slice(), &unlimited())
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::Unpack { source: UnpackError::DiffIdMismatch { expected, .. }, .. } if *expected == claimed),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(layers.dir()).unwrap().count(), 0);
}

#[test]
fn refuses_a_corrupt_stream() {
    let (_root, layers) = store();
    let layer = Layer::new().file("a", vec![b'x'; 10_000]);
    let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
    let mut blob = layer.blob().unwrap();
    blob.truncate(blob.len() / 2);
    let err = layers
        .unpack(&diff_id, blob.as_slice(), &unlimited())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unpack {
                source: UnpackError::Read(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(layers.dir()).unwrap().count(), 0);
}

#[test]
fn concurrent_unpacks_of_one_layer_keep_one_copy() {
    let (_root, layers) = store();
    let layer = Layer::new()
        .file("big", vec![7u8; 2 << 20])
        .file("small", "s");
    let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
    let blob = layer.blob().unwrap();
    let outcomes: Vec<UnpackOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    layers
                        .unpack(&diff_id, blob.as_slice(), &unlimited())
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == UnpackOutcome::Unpacked)
            .count(),
        1
    );
    let names: Vec<_> = std::fs::read_dir(layers.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from(diff_id.hex())]);
    assert_eq!(
        std::fs::read(layers.path(&diff_id).join("small")).unwrap(),
        b"s"
    );
}

#[test]
fn refuses_whiteouts_of_dot_and_dot_dot_and_files_at_the_root() {
    for marker in ["dir/.wh.", "dir/.wh..", ".wh..."] {
        let err = refused(
            Layer::new()
                .dir("dir")
                .file("dir/keep", "k")
                .file(marker, ""),
        );
        assert!(
            matches!(&err, UnpackError::InvalidWhiteout { entry } if entry == marker),
            "{marker}: {err:?}"
        );
    }
    let err = refused(Layer::new().raw("./", EntryKind::File(b"x".to_vec())));
    assert!(
        matches!(err, UnpackError::RootNotDirectory { .. }),
        "{err:?}"
    );
}

/// A layer of one file of `size` zeros: a few KiB compressed.
fn zeros(size: usize, compression: LayerCompression) -> Layer {
    Layer::new()
        .file("zeros", vec![0u8; size])
        .compression(compression)
}

#[test]
fn a_layer_over_the_budget_is_refused_and_leaves_nothing() {
    for compression in [LayerCompression::Gzip, LayerCompression::Zstd] {
        let layer = zeros(4 << 20, compression);
        let blob = layer.blob().unwrap();
        assert!(blob.len() < 64 * 1024, "{compression:?}: {}", blob.len());
        let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
        let (_root, layers) = store();
        let budget = UnpackBudget::new(1 << 20);
        let err = layers
            .unpack(&diff_id, blob.as_slice(), &budget)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ImageError::Unpack { source: UnpackError::TooLarge { limit }, .. } if *limit == 1 << 20
            ),
            "{compression:?}: {err:?}"
        );
        let message = model::error_chain(&err);
        assert!(message.contains("more than 1 MiB"), "{message}");
        assert!(
            message.contains("ephemeralStorage.sizeInGiB (up to 200)"),
            "{message}"
        );
        // Stopped at the read that crossed the limit, not at the end of the stream.
        assert!(budget.used() <= 1 << 20);
        let leftovers: Vec<_> = std::fs::read_dir(layers.dir()).unwrap().collect();
        assert!(leftovers.is_empty(), "{compression:?}: left {leftovers:?}");
    }
}

#[test]
fn a_layer_exactly_at_the_budget_is_unpacked() {
    for compression in [LayerCompression::Gzip, LayerCompression::Zstd] {
        let layer = zeros(4 << 20, compression);
        let size = layer.tar().unwrap().len() as u64;
        let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
        let (_root, layers) = store();
        let blob = layer.blob().unwrap();
        let short = UnpackBudget::new(size - 1);
        assert!(layers.unpack(&diff_id, blob.as_slice(), &short).is_err());
        let exact = UnpackBudget::new(size);
        let outcome = layers.unpack(&diff_id, blob.as_slice(), &exact).unwrap();
        assert_eq!(outcome, UnpackOutcome::Unpacked);
        assert_eq!(exact.used(), size);
        assert_eq!(
            std::fs::metadata(layers.path(&diff_id).join("zeros"))
                .unwrap()
                .len(),
            4 << 20
        );
        // A layer already unpacked costs nothing.
        let spent = UnpackBudget::new(0);
        let outcome = layers.unpack(&diff_id, blob.as_slice(), &spent).unwrap();
        assert_eq!(outcome, UnpackOutcome::AlreadyPresent);
    }
}

#[test]
fn the_budget_is_shared_by_the_layers_of_a_pull() {
    let (_root, layers) = store();
    let (first, second) = (
        zeros(600 << 10, LayerCompression::Gzip),
        zeros(700 << 10, LayerCompression::Zstd),
    );
    let budget = UnpackBudget::new(1 << 20);
    let diff_id = Digest::parse(&first.diff_id().unwrap()).unwrap();
    layers
        .unpack(&diff_id, first.blob().unwrap().as_slice(), &budget)
        .unwrap();
    let diff_id = Digest::parse(&second.diff_id().unwrap()).unwrap();
    let err = layers
        .unpack(&diff_id, second.blob().unwrap().as_slice(), &budget)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unpack {
                source: UnpackError::TooLarge { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!layers.contains(&diff_id));
}

/// A GNU sparse file of `size` bytes whose only data is its last 512-byte block: the
/// tar stream is three blocks, the file's holes are made up by the tar reader.
fn sparse_tar(size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("sparse").unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(512);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(size);
    gnu.sparse[0].set_offset(size - 512);
    gnu.sparse[0].set_length(512);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[1u8; 512]);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

#[test]
fn the_holes_of_sparse_files_count_against_the_budget() {
    let size = 8 << 20;
    let tar = sparse_tar(size);
    let diff_id = Digest::of(&tar);
    let (_root, layers) = store();
    let err = layers
        .unpack(&diff_id, tar.as_slice(), &UnpackBudget::new(4 << 20))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unpack {
                source: UnpackError::TooLarge { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(layers.dir()).unwrap().count(), 0);

    // Within the budget, the file is unpacked with its holes as zeros.
    layers
        .unpack(&diff_id, tar.as_slice(), &UnpackBudget::new(16 << 20))
        .unwrap();
    let content = std::fs::read(layers.path(&diff_id).join("sparse")).unwrap();
    assert_eq!(content.len() as u64, size);
    assert!(content[..content.len() - 512].iter().all(|b| *b == 0));
    assert!(content[content.len() - 512..].iter().all(|b| *b == 1));
}

#[test]
fn sizes_are_shown_in_the_largest_unit_that_divides_them() {
    assert_eq!(budget::display_size(20 * GIB), "20 GiB");
    assert_eq!(budget::display_size(1 << 20), "1 MiB");
    assert_eq!(budget::display_size(1000), "1000 bytes");
    assert_eq!(budget::display_size(0), "0 bytes");
}
