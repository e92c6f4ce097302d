//! Overlay tests: they mount in the host's mount namespace (as root) and always
//! unmount through [`Mounted`]'s drop, even when an assertion fails.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use testkit::Layer;

use super::*;
use crate::digest::Digest;
use crate::unpack::LayerStore;

/// A mounted root filesystem, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount_rootfs(&self.0).expect("test cleanup: unmount");
    }
}

/// Per-test directories: layers, upper, work, target.
struct Fixture {
    dir: tempfile::TempDir,
    layers: LayerStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layers = LayerStore::open(dir.path()).unwrap();
        for sub in ["upper", "work", "target"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Self { dir, layers }
    }

    fn layer(&self, layer: Layer) -> PathBuf {
        let diff_id = Digest::parse(&layer.diff_id().unwrap()).unwrap();
        self.layers
            .unpack(
                &diff_id,
                layer.blob().unwrap().as_slice(),
                &crate::UnpackBudget::largest_task(),
            )
            .unwrap();
        self.layers.path(&diff_id)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn mount(&self, lower: &[PathBuf], readonly: bool) -> Result<Mounted, ImageError> {
        let target = self.path("target");
        mount_rootfs(
            lower,
            &self.path("upper"),
            &self.path("work"),
            &target,
            readonly,
        )?;
        Ok(Mounted(target))
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn overlay_applies_layers_whiteouts_and_opaque_dirs() {
    let fixture = Fixture::new();
    let base = fixture.layer(
        Layer::new()
            .file("kept", "base")
            .file("removed", "gone soon")
            .file("dir/old", "hidden by opaque")
            .file("shared", "original"),
    );
    let top = fixture.layer(
        Layer::new()
            .whiteout("removed")
            .opaque("dir")
            .file("dir/new", "n"),
    );
    let mounted = fixture.mount(&[base.clone(), top], false).unwrap();
    let root = &mounted.0;

    assert_eq!(std::fs::read_to_string(root.join("kept")).unwrap(), "base");
    assert_eq!(
        std::fs::metadata(root.join("removed")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(names(&root.join("dir")), ["new"]);

    // Writes land in the upper directory, never in the shared layers.
    std::fs::write(root.join("created"), "task data").unwrap();
    std::fs::write(root.join("shared"), "changed by the task").unwrap();
    assert_eq!(
        std::fs::read_to_string(fixture.path("upper/created")).unwrap(),
        "task data"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("shared")).unwrap(),
        "original"
    );
    assert!(!base.join("created").exists());
}

#[test]
fn readonly_overlay_refuses_writes_even_with_one_layer() {
    let fixture = Fixture::new();
    let only = fixture.layer(Layer::new().file("etc/hostname", "ro"));
    let mounted = fixture.mount(&[only], true).unwrap();
    assert_eq!(
        std::fs::read_to_string(mounted.0.join("etc/hostname")).unwrap(),
        "ro"
    );
    let err = std::fs::write(mounted.0.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn deep_images_mount_with_relative_layer_paths() {
    let fixture = Fixture::new();
    // 55 layers of <tmp>/layers/<64 hex> do not fit in one page as absolute paths.
    let lower: Vec<PathBuf> = (0..55)
        .map(|i| fixture.layer(Layer::new().file(&format!("file-{i}"), i.to_string())))
        .collect();
    let absolute_length: usize = lower.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        absolute_length > page_size(),
        "the test must exceed the page limit"
    );
    let mounted = fixture.mount(&lower, false).unwrap();
    assert_eq!(names(&mounted.0).len(), 55);
    assert_eq!(
        std::fs::read_to_string(mounted.0.join("file-54")).unwrap(),
        "54"
    );
    // The process's working directory is untouched.
    assert_ne!(std::env::current_dir().unwrap(), fixture.layers.dir());
}

#[test]
fn too_many_layers_are_refused_with_advice() {
    let fixture = Fixture::new();
    let lower: Vec<PathBuf> = (0..80)
        .map(|i| fixture.layers.dir().join(format!("{i:064x}")))
        .collect();
    let err = fixture.mount(&lower, false).err().unwrap();
    assert!(
        matches!(err, ImageError::MountOptionsTooLong { layers: 80, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("squash"));
}

#[test]
fn bad_inputs_are_refused_before_mounting() {
    let fixture = Fixture::new();
    assert!(matches!(
        fixture.mount(&[], false).err().unwrap(),
        ImageError::NoLayers
    ));
    let err = fixture
        .mount(&[PathBuf::from("/tmp/a:b")], false)
        .err()
        .unwrap();
    assert!(
        matches!(err, ImageError::UnsupportedMountPath { character: ':', .. }),
        "{err:?}"
    );
}

#[test]
fn unmount_is_idempotent() {
    let fixture = Fixture::new();
    let only = fixture.layer(Layer::new().file("f", "f"));
    let mounted = fixture.mount(&[only], false).unwrap();
    unmount_rootfs(&mounted.0).unwrap();
    unmount_rootfs(&mounted.0).unwrap();
    unmount_rootfs(&fixture.path("never-existed")).unwrap();
    assert!(names(&mounted.0).is_empty());
}
