//! Root filesystem assembly: an overlayfs of the shared read-only layers plus a
//! per-task upper directory.
//!
//! ```text
//! target  = overlay(lowerdir = top:...:lowest, upperdir = upper, workdir = work)
//! ```
//!
//! Layers are never written: every change lands in `upper` (copy-up), so one unpacked
//! layer serves every task using it. A read-only root filesystem is the same overlay
//! mounted `MS_RDONLY`, which also works for single-layer images (overlayfs needs two
//! lower layers only when there is no upper directory).
//!
//! The kernel copies mount options into a single page, so the `lowerdir` list of a
//! deep image with absolute paths can be too long. Layers normally share one parent
//! directory (`<store>/layers/`), so the mount is then retried from a dedicated thread
//! that unshares its filesystem context (`CLONE_FS`: its own working directory),
//! `chdir`s into that parent and passes bare layer names; the rest of the process is
//! not affected. If even that does not fit, the error says to squash the image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{sysconf, SysconfVar};

use crate::error::ImageError;

/// Present when the kernel's overlayfs knows the `index` option.
const OVERLAY_INDEX_PARAMETER: &str = "/sys/module/overlay/parameters/index";
/// Unmount attempts while the mount is busy before detaching it lazily.
const UNMOUNT_ATTEMPTS: u32 = 5;

/// Mounts the overlay root filesystem on `target`. `lower` lists the layer
/// directories lowest first; `upper` and `work` must be empty directories on the same
/// filesystem, private to this mount.
pub fn mount_rootfs(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), ImageError> {
    if lower.is_empty() {
        return Err(ImageError::NoLayers);
    }
    for path in lower.iter().map(PathBuf::as_path).chain([upper, work]) {
        check_option_path(path)?;
    }
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let limit = page_size() - 1; // the options and their terminating NUL share one page
    let absolute: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = overlay_options(&absolute, upper, work);
    if options.len() <= limit {
        return overlay_mount(target, flags, &options);
    }

    let parent = lower[0]
        .parent()
        .filter(|parent| lower.iter().all(|p| p.parent() == Some(*parent)));
    let relative: Option<Vec<String>> = parent.and_then(|_| {
        lower
            .iter()
            .rev()
            .map(|p| {
                p.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .collect()
    });
    let (Some(parent), Some(relative)) = (parent, relative) else {
        return Err(ImageError::MountOptionsTooLong {
            layers: lower.len(),
            length: options.len(),
            limit,
        });
    };
    let options = overlay_options(&relative, upper, work);
    if options.len() > limit {
        return Err(ImageError::MountOptionsTooLong {
            layers: lower.len(),
            length: options.len(),
            limit,
        });
    }
    tracing::debug!(layers = lower.len(), dir = %parent.display(), "mounting overlay with relative layer paths");
    let parent = parent.to_owned();
    let target = target.to_owned();
    let mounter = std::thread::Builder::new()
        .name("overlay-mount".to_owned())
        .spawn(move || -> Result<(), ImageError> {
            // Give this thread its own cwd so the chdir does not affect the process.
            unshare(CloneFlags::CLONE_FS).map_err(|errno| {
                ImageError::io(
                    "unshare the working directory to mount",
                    &target,
                    errno.into(),
                )
            })?;
            nix::unistd::chdir(&parent).map_err(|errno| {
                ImageError::io("enter the layer directory", &parent, errno.into())
            })?;
            overlay_mount(&target, flags, &options)
        })
        .map_err(|source| {
            ImageError::io(
                "start the overlay mount thread for",
                lower[0].clone(),
                source,
            )
        })?;
    match mounter.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Unmounts a root filesystem. Not being mounted is success; a mount that stays busy
/// is detached lazily (and logged) as a last resort.
pub fn unmount_rootfs(target: &Path) -> Result<(), ImageError> {
    for attempt in 0..UNMOUNT_ATTEMPTS {
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {
                tracing::debug!(target = %target.display(), "unmounted root filesystem");
                return Ok(());
            }
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20 << attempt)),
            Err(errno) => {
                return Err(ImageError::Unmount {
                    target: target.to_owned(),
                    source: errno,
                })
            }
        }
    }
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => {
            tracing::warn!(target = %target.display(), "root filesystem stayed busy; detached it lazily");
            Ok(())
        }
        Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(errno) => Err(ImageError::Unmount {
            target: target.to_owned(),
            source: errno,
        }),
    }
}

fn overlay_options(lower: &[String], upper: &Path, work: &Path) -> String {
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    // With `index=on` (a kernel default on some distributions) an upper directory is
    // tied to its lower layers; tasks never reuse one, and docker turns it off too.
    if Path::new(OVERLAY_INDEX_PARAMETER).exists() {
        options.push_str(",index=off");
    }
    options
}

fn overlay_mount(target: &Path, flags: MsFlags, options: &str) -> Result<(), ImageError> {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
    .map_err(|source| ImageError::Mount {
        target: target.to_owned(),
        source,
    })?;
    tracing::debug!(target = %target.display(), readonly = flags.contains(MsFlags::MS_RDONLY), "mounted overlay root filesystem");
    Ok(())
}

/// Refuses paths with the characters overlayfs option parsing reserves.
fn check_option_path(path: &Path) -> Result<(), ImageError> {
    let text = path.to_string_lossy();
    match text.chars().find(|c| matches!(c, ',' | ':' | '\\')) {
        Some(character) => Err(ImageError::UnsupportedMountPath {
            path: path.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

fn page_size() -> usize {
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests;
