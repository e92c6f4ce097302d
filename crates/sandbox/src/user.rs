//! Resolving an ECS `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image.
//!
//! Names are looked up in the container's own `/etc/passwd` and `/etc/group`, opened with
//! `openat2(RESOLVE_IN_ROOT)` so that a symlink in the image cannot make the host read a
//! file outside the root filesystem. Supplementary groups are the groups of `/etc/group`
//! that list the user by name, as Docker does.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

use crate::SandboxError;

/// The identity a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, for `HOME`.
    pub home: Option<String>,
}

/// Resolves `user` (None = root) for `container` with its files in `rootfs`.
pub fn resolve(
    container: &str,
    rootfs: &Path,
    user: Option<&str>,
) -> Result<ResolvedUser, SandboxError> {
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let group = read_in_root(rootfs, "etc/group")?;
    resolve_with(
        container,
        user.unwrap_or("0"),
        passwd.as_deref().unwrap_or(""),
        group.as_deref().unwrap_or(""),
    )
}

fn resolve_with(
    container: &str,
    user: &str,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, SandboxError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry =
        passwd_entries(passwd).find(|e| e.name == user_part || e.uid.to_string() == user_part);
    let uid = match (user_part.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(entry)) => entry.uid,
        (Err(_), None) => {
            return Err(SandboxError::UnknownUser {
                container: container.to_owned(),
                user: user_part.to_owned(),
            })
        }
    };
    let gid = match group_part {
        Some(group_name) => match group_name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|g| g.name == group_name)
                .map(|g| g.gid)
                .ok_or_else(|| SandboxError::UnknownGroup {
                    container: container.to_owned(),
                    group: group_name.to_owned(),
                })?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let additional_gids = match (&entry, group_part) {
        (Some(entry), None) => group_entries(group)
            .filter(|g| g.gid != gid && g.members.split(',').any(|m| m == entry.name))
            .map(|g| g.gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.to_owned()),
    })
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: fields[0],
            gid: fields[2].parse().ok()?,
            members: fields[3],
        })
    })
}

/// Reads `relative` inside `root` with every path component resolved inside it.
fn read_in_root(root: &Path, relative: &str) -> Result<Option<String>, SandboxError> {
    let root_dir = File::open(root).map_err(SandboxError::io("open root filesystem", root))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let path = root.join(relative);
    let fd = match openat2(std::os::fd::AsRawFd::as_raw_fd(&root_dir), relative, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(SandboxError::io("open", path)(errno.into())),
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    file.by_ref()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(SandboxError::io("read", path))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\ndocker:x:999:app\n";

    fn resolve(user: &str) -> Result<ResolvedUser, SandboxError> {
        resolve_with("c", user, PASSWD, GROUP)
    }

    #[test]
    fn numeric_forms_need_no_passwd() {
        let user = resolve_with("c", "1234:5678", "", "").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.additional_gids.len()),
            (1234, 5678, 0)
        );
        assert_eq!(resolve_with("c", "42", "", "").unwrap().gid, 0);
    }

    #[test]
    fn names_resolve_through_the_image_files() {
        let app = resolve("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![10, 999]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let app_wheel = resolve("app:wheel").unwrap();
        assert_eq!((app_wheel.uid, app_wheel.gid), (1000, 10));
        assert_eq!(
            resolve("1000").unwrap().gid,
            1000,
            "a known uid takes its passwd gid"
        );
        assert_eq!(resolve("root").unwrap().additional_gids, vec![10]);
    }

    #[test]
    fn unknown_names_are_errors_that_say_what_to_do() {
        let err = resolve("ghost").unwrap_err();
        assert!(
            matches!(err, SandboxError::UnknownUser { .. })
                && err.to_string().contains("numeric uid")
        );
        assert!(matches!(
            resolve("app:ghosts"),
            Err(SandboxError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn lookups_cannot_escape_the_root_filesystem() {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = temp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc")).unwrap();
        // "../../outside" resolves to /outside inside the root, which does not exist.
        assert!(matches!(
            super::resolve("c", &root, Some("evil")),
            Err(SandboxError::UnknownUser { .. })
        ));
        std::fs::remove_file(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(super::resolve("c", &root, Some("app")).unwrap().uid, 1000);
    }
}
