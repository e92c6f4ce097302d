//! Writes tar entries into a layer directory without ever leaving it.
//!
//! Every path is resolved component by component from a directory file descriptor of
//! the layer root with `openat(O_DIRECTORY | O_NOFOLLOW)`, so a symlink (or anything
//! else that is not a directory) met on the way is refused instead of followed; files
//! are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing symlink at the final
//! component is replaced, never written through. Absolute paths, `..` components and
//! hard links whose target resolves outside the layer are refused before anything is
//! touched. Device nodes and fifos are refused, except 0:0 character devices, which are
//! overlayfs whiteouts already.
//!
//! Docker/OCI whiteouts become overlayfs ones:
//!
//! | tar entry           | written as                                        |
//! |---------------------|---------------------------------------------------|
//! | `dir/.wh.name`      | `dir/name`, a character device 0:0                |
//! | `dir/.wh..wh..opq`  | xattr `trusted.overlay.opaque=y` on `dir`         |
//! | `dir/.wh..wh.*`     | ignored (aufs bookkeeping)                        |
//!
//! Ownership, permission bits (after `chown`, which clears setuid), `SCHILY.xattr.*`
//! extended attributes and mtimes are applied to every entry; directory mtimes are set
//! at the end, because creating their children changes them. `trusted.overlay.*`
//! attributes from the archive are dropped: they would steer overlayfs (redirects,
//! metacopy) and only the unpacker may set them.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{
    fchmod, fstatat, futimens, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use super::UnpackError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// A validated entry path: relative, no `..`, `.` and empty components dropped.
struct EntryPath {
    display: String,
    parts: Vec<OsString>,
}

impl EntryPath {
    /// Parses a tar path, refusing absolute paths and `..` components.
    fn parse(bytes: &[u8]) -> Result<Self, PathProblem> {
        if bytes.starts_with(b"/") {
            return Err(PathProblem::Absolute);
        }
        let mut parts = Vec::new();
        for part in bytes.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(PathProblem::Parent),
                part => parts.push(OsStr::from_bytes(part).to_owned()),
            }
        }
        Ok(Self {
            display: String::from_utf8_lossy(bytes).into_owned(),
            parts,
        })
    }

    fn name(&self) -> Option<&OsStr> {
        self.parts.last().map(OsString::as_os_str)
    }

    fn parent_parts(&self) -> &[OsString] {
        &self.parts[..self.parts.len().saturating_sub(1)]
    }
}

enum PathProblem {
    Absolute,
    Parent,
}

/// Ownership, mode, mtime and xattrs of an entry.
struct Attributes {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Writes entries under one layer root.
pub(super) struct LayerWriter {
    root: OwnedFd,
    root_path: PathBuf,
    /// Directories whose mtime is applied in [`LayerWriter::finish`].
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
}

/// `openat` returning an owned descriptor.
fn open_at(dir: RawFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = openat(Some(dir), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn io_error<'a>(action: &'static str, entry: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io {
        action,
        entry: entry.to_owned(),
        source: errno.into(),
    }
}

impl LayerWriter {
    /// Starts writing into the empty directory `root_path`.
    pub(super) fn new(root_path: &Path) -> Result<Self, UnpackError> {
        let staging = |source| UnpackError::Staging {
            action: "open the temporary layer directory",
            path: root_path.to_owned(),
            source,
        };
        let fd = nix::fcntl::open(
            root_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| staging(errno.into()))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        // Layer roots default to 0755 (a `./` entry may override it).
        fchmod(root.as_raw_fd(), Mode::from_bits_truncate(0o755))
            .map_err(|errno| staging(errno.into()))?;
        Ok(Self {
            root,
            root_path: root_path.to_owned(),
            dir_times: Vec::new(),
        })
    }

    /// Writes one entry.
    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let path = EntryPath::parse(&raw_path).map_err(|problem| {
            let entry = String::from_utf8_lossy(&raw_path).into_owned();
            match problem {
                PathProblem::Absolute => UnpackError::AbsolutePath { entry },
                PathProblem::Parent => UnpackError::ParentComponent { entry },
            }
        })?;
        if let Some(name) = path.name().map(OsStr::as_bytes) {
            if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                return self.apply_whiteout_marker(&path, name, target);
            }
        }
        let attributes = read_attributes(entry, &path.display)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(&path, entry, &attributes)
            }
            EntryType::Directory => self.write_dir(&path, &attributes),
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::MissingLinkTarget {
                        entry: path.display.clone(),
                    })?
                    .into_owned();
                self.write_symlink(&path, &target, &attributes)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::MissingLinkTarget {
                        entry: path.display.clone(),
                    })?
                    .into_owned();
                self.write_hardlink(&path, &target)
            }
            EntryType::Char => {
                let header = entry.header();
                let major = header.device_major().map_err(UnpackError::Read)?;
                let minor = header.device_minor().map_err(UnpackError::Read)?;
                if major == Some(0) && minor == Some(0) {
                    // Already an overlayfs whiteout.
                    self.write_whiteout(&path)
                } else {
                    Err(UnpackError::SpecialFile {
                        entry: path.display,
                        kind: "character device",
                    })
                }
            }
            EntryType::Block => Err(UnpackError::SpecialFile {
                entry: path.display,
                kind: "block device",
            }),
            EntryType::Fifo => Err(UnpackError::SpecialFile {
                entry: path.display,
                kind: "fifo",
            }),
            other => Err(UnpackError::UnsupportedType {
                entry: path.display,
                kind: char::from(other.as_byte()),
            }),
        }
    }

    /// Applies directory mtimes, now that nothing else will be created in them.
    pub(super) fn finish(self) -> Result<(), UnpackError> {
        for (parts, mtime) in &self.dir_times {
            let display = parts_display(parts);
            let Some((name, parent_parts)) = parts.split_last() else {
                futimens(self.root.as_raw_fd(), mtime, mtime)
                    .map_err(io_error("set the mtime of", "."))?;
                continue;
            };
            let Some(parent) = self.walk(parent_parts, false, &display)? else {
                continue; // deleted by a later entry
            };
            // A later entry may have replaced the directory with something else.
            match fstatat(
                Some(parent.as_raw_fd()),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(stat)
                    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
                        == SFlag::S_IFDIR => {}
                Ok(_) | Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(io_error("inspect", &display)(errno)),
            }
            utimensat(
                Some(parent.as_raw_fd()),
                name.as_os_str(),
                mtime,
                mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io_error("set the mtime of", &display))?;
        }
        Ok(())
    }

    /// Opens the directory `parts` (relative to the root) without following symlinks.
    /// Missing directories are created (0755, root) when `create`, otherwise `None`.
    fn walk(
        &self,
        parts: &[OsString],
        create: bool,
        entry: &str,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let mut current = self.root.try_clone().map_err(|source| UnpackError::Io {
            action: "duplicate the layer root descriptor for",
            entry: entry.to_owned(),
            source,
        })?;
        for (i, part) in parts.iter().enumerate() {
            let dir = current.as_raw_fd();
            let opened = match open_at(dir, part, flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(Some(dir), part.as_os_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => {
                            return Err(io_error("create a parent directory of", entry)(errno))
                        }
                    }
                    let fd = open_at(dir, part, flags, Mode::empty());
                    if let Ok(fd) = &fd {
                        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                            .map_err(io_error("set the mode of a parent directory of", entry))?;
                    }
                    fd
                }
                other => other,
            };
            current = match opened {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let component = parts_display(&parts[..=i]);
                    let is_symlink =
                        fstatat(Some(dir), part.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                            .is_ok_and(|stat| {
                                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
                                    == SFlag::S_IFLNK
                            });
                    return Err(if is_symlink {
                        UnpackError::ThroughSymlink {
                            entry: entry.to_owned(),
                            component,
                        }
                    } else {
                        UnpackError::NotADirectory {
                            entry: entry.to_owned(),
                            component,
                        }
                    });
                }
                Err(errno) => return Err(io_error("open a parent directory of", entry)(errno)),
            };
        }
        Ok(Some(current))
    }

    /// The parent directory of `path` (created if missing) and the final name.
    fn parent_of<'p>(&self, path: &'p EntryPath) -> Result<(OwnedFd, &'p OsStr), UnpackError> {
        let name = path.name().ok_or_else(|| UnpackError::RootNotDirectory {
            entry: path.display.clone(),
        })?;
        let parent = self.create_dirs(path.parent_parts(), &path.display)?;
        Ok((parent, name))
    }

    /// Opens the directory `parts`, creating missing components.
    fn create_dirs(&self, parts: &[OsString], entry: &str) -> Result<OwnedFd, UnpackError> {
        // `walk` only reports a missing directory if one vanished between its mkdir and
        // open, which nothing else writing to the staging directory can cause.
        self.walk(parts, true, entry)?
            .ok_or_else(|| io_error("create a parent directory of", entry)(Errno::ENOENT))
    }

    /// Removes whatever is at `parent/name` (a whole tree for a directory).
    fn remove_existing(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &EntryPath,
    ) -> Result<(), UnpackError> {
        let stat = match fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => return Err(io_error("inspect the existing", &path.display)(errno)),
        };
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            // Every component of this path was just opened with O_NOFOLLOW, and nothing
            // else writes into the staging directory, so the path is symlink-free;
            // `remove_dir_all` itself does not follow symlinks inside the tree.
            let full: PathBuf = path
                .parts
                .iter()
                .fold(self.root_path.clone(), |p, c| p.join(c));
            std::fs::remove_dir_all(&full).map_err(|source| UnpackError::Io {
                action: "replace the existing directory",
                entry: path.display.clone(),
                source,
            })
        } else {
            unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(io_error("replace the existing", &path.display))
        }
    }

    fn write_file<R: Read>(
        &mut self,
        path: &EntryPath,
        content: &mut R,
        attributes: &Attributes,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent_of(path)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match open_at(parent.as_raw_fd(), name, flags, mode) {
            Err(Errno::EEXIST) => {
                self.remove_existing(&parent, name, path)?;
                open_at(parent.as_raw_fd(), name, flags, mode)
            }
            other => other,
        }
        .map_err(io_error("create", &path.display))?;
        let mut file = File::from(fd);
        copy_content(content, &mut file, &path.display)?;
        apply_attributes(file.as_raw_fd(), attributes, &path.display)?;
        futimens(file.as_raw_fd(), &attributes.mtime, &attributes.mtime)
            .map_err(io_error("set the mtime of", &path.display))
    }

    fn write_dir(&mut self, path: &EntryPath, attributes: &Attributes) -> Result<(), UnpackError> {
        let dir = match path.name() {
            None => self.root.try_clone().map_err(|source| UnpackError::Io {
                action: "open",
                entry: path.display.clone(),
                source,
            })?,
            Some(_) => {
                let (parent, name) = self.parent_of(path)?;
                let mode = Mode::from_bits_truncate(0o700);
                match mkdirat(Some(parent.as_raw_fd()), name, mode) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        let existing =
                            fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                                .map_err(io_error("inspect the existing", &path.display))?;
                        if SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT
                            != SFlag::S_IFDIR
                        {
                            self.remove_existing(&parent, name, path)?;
                            mkdirat(Some(parent.as_raw_fd()), name, mode)
                                .map_err(io_error("create directory", &path.display))?;
                        }
                    }
                    Err(errno) => return Err(io_error("create directory", &path.display)(errno)),
                }
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
                open_at(parent.as_raw_fd(), name, flags, Mode::empty())
                    .map_err(io_error("open directory", &path.display))?
            }
        };
        apply_attributes(dir.as_raw_fd(), attributes, &path.display)?;
        self.dir_times.push((path.parts.clone(), attributes.mtime));
        Ok(())
    }

    fn write_symlink(
        &mut self,
        path: &EntryPath,
        target: &[u8],
        attributes: &Attributes,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent_of(path)?;
        let target = OsStr::from_bytes(target);
        match symlinkat(target, Some(parent.as_raw_fd()), name) {
            Err(Errno::EEXIST) => {
                self.remove_existing(&parent, name, path)?;
                symlinkat(target, Some(parent.as_raw_fd()), name)
            }
            other => other,
        }
        .map_err(io_error("create symlink", &path.display))?;
        fchownat(
            Some(parent.as_raw_fd()),
            name,
            Some(attributes.uid),
            Some(attributes.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_error("set the owner of", &path.display))?;
        if !attributes.xattrs.is_empty() {
            let full: PathBuf = path
                .parts
                .iter()
                .fold(self.root_path.clone(), |p, c| p.join(c));
            for (key, value) in &attributes.xattrs {
                set_xattr(XattrTarget::Symlink(&full), key, value, &path.display)?;
            }
        }
        utimensat(
            Some(parent.as_raw_fd()),
            name,
            &attributes.mtime,
            &attributes.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_error("set the mtime of", &path.display))
    }

    fn write_hardlink(&mut self, path: &EntryPath, target: &[u8]) -> Result<(), UnpackError> {
        let outside = || UnpackError::HardLinkOutside {
            entry: path.display.clone(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let missing = || UnpackError::HardLinkTargetMissing {
            entry: path.display.clone(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_path = EntryPath::parse(target).map_err(|_| outside())?;
        let Some(target_name) = target_path.name() else {
            return Err(outside());
        };
        let target_parent = match self.walk(target_path.parent_parts(), false, &path.display) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(missing()),
            Err(UnpackError::ThroughSymlink { .. }) => return Err(outside()),
            Err(UnpackError::NotADirectory { .. }) => return Err(missing()),
            Err(other) => return Err(other),
        };
        if target_path.parts == path.parts {
            return Ok(());
        }
        let (parent, name) = self.parent_of(path)?;
        let link = || {
            linkat(
                Some(target_parent.as_raw_fd()),
                target_name,
                Some(parent.as_raw_fd()),
                name,
                AtFlags::empty(),
            )
        };
        match link() {
            Err(Errno::EEXIST) => {
                self.remove_existing(&parent, name, path)?;
                link()
            }
            other => other,
        }
        .map_err(|errno| match errno {
            Errno::ENOENT => missing(),
            errno => io_error("create hard link", &path.display)(errno),
        })
    }

    /// Handles `.wh.<name>` and `.wh..wh..opq` entries.
    fn apply_whiteout_marker(
        &mut self,
        path: &EntryPath,
        marker: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let dir_parts = path.parent_parts();
        if marker == OPAQUE_MARKER.as_bytes() {
            let dir = self.create_dirs(dir_parts, &path.display)?;
            return set_xattr(
                XattrTarget::Fd(dir.as_raw_fd()),
                OVERLAY_OPAQUE_XATTR,
                b"y",
                &path.display,
            );
        }
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            tracing::debug!(entry = %path.display, "ignoring aufs whiteout metadata");
            return Ok(());
        }
        // `.wh..` and `.wh...` would whiteout `.` or `..`: the directory itself or
        // its parent, which must never be touched by name.
        if matches!(target, b"" | b"." | b"..") {
            return Err(UnpackError::InvalidWhiteout {
                entry: path.display.clone(),
            });
        }
        let mut parts = dir_parts.to_vec();
        parts.push(OsStr::from_bytes(target).to_owned());
        self.write_whiteout(&EntryPath {
            display: path.display.clone(),
            parts,
        })
    }

    /// Creates the overlayfs whiteout (a 0:0 character device) at `path`.
    fn write_whiteout(&mut self, path: &EntryPath) -> Result<(), UnpackError> {
        let (parent, name) = self.parent_of(path)?;
        self.remove_existing(&parent, name, path)?;
        mknodat(
            Some(parent.as_raw_fd()),
            name,
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .map_err(io_error("create the whiteout for", &path.display))
    }
}

fn parts_display(parts: &[OsString]) -> String {
    let joined: Vec<_> = parts.iter().map(|p| p.to_string_lossy()).collect();
    joined.join("/")
}

fn read_attributes<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    entry_name: &str,
) -> Result<Attributes, UnpackError> {
    let header = entry.header();
    let mode = header.mode().map_err(UnpackError::Read)?;
    let uid = header.uid().map_err(UnpackError::Read)?;
    let gid = header.gid().map_err(UnpackError::Read)?;
    let mtime = header.mtime().map_err(UnpackError::Read)?;
    let id = |value: u64| {
        u32::try_from(value).map_err(|_| UnpackError::Io {
            action: "set the owner of",
            entry: entry_name.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("id {value} does not fit in 32 bits"),
            ),
        })
    };
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Read)? {
        for extension in extensions {
            let extension = extension.map_err(UnpackError::Read)?;
            let Ok(key) = extension.key() else { continue };
            let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                continue;
            };
            if name.starts_with(OVERLAY_XATTR_PREFIX) {
                tracing::warn!(entry = %entry_name, xattr = name, "dropping overlayfs attribute from the layer archive");
                continue;
            }
            xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
        }
    }
    Ok(Attributes {
        mode: Mode::from_bits_truncate(mode & 0o7777),
        uid: Uid::from_raw(id(uid)?),
        gid: Gid::from_raw(id(gid)?),
        mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
        xattrs,
    })
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown also clears
/// `security.capability`).
fn apply_attributes(
    fd: RawFd,
    attributes: &Attributes,
    entry_name: &str,
) -> Result<(), UnpackError> {
    fchown(fd, Some(attributes.uid), Some(attributes.gid))
        .map_err(io_error("set the owner of", entry_name))?;
    fchmod(fd, attributes.mode).map_err(io_error("set the mode of", entry_name))?;
    for (key, value) in &attributes.xattrs {
        set_xattr(XattrTarget::Fd(fd), key, value, entry_name)?;
    }
    Ok(())
}

/// Copies an entry's content, telling read failures (a corrupt stream) from write
/// failures (a full disk).
fn copy_content<R: Read>(
    content: &mut R,
    file: &mut File,
    entry_name: &str,
) -> Result<(), UnpackError> {
    let mut buffer = vec![0u8; 128 * 1024];
    loop {
        let n = match content.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(UnpackError::Read(err)),
        };
        file.write_all(&buffer[..n])
            .map_err(|source| UnpackError::Io {
                action: "write",
                entry: entry_name.to_owned(),
                source,
            })?;
    }
}

enum XattrTarget<'a> {
    Fd(RawFd),
    Symlink(&'a Path),
}

fn set_xattr(
    target: XattrTarget<'_>,
    key: &str,
    value: &[u8],
    entry_name: &str,
) -> Result<(), UnpackError> {
    let error = |source| UnpackError::Io {
        action: "set an extended attribute on",
        entry: entry_name.to_owned(),
        source,
    };
    let name = CString::new(key).map_err(|_| {
        error(io::Error::new(
            io::ErrorKind::InvalidData,
            "xattr name contains NUL",
        ))
    })?;
    let result = match target {
        // SAFETY: `name` is a NUL-terminated string and `value` a live slice whose pointer
        // and length are passed together; the kernel only reads them during the call.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        },
        XattrTarget::Symlink(path) => {
            let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "path contains NUL",
                ))
            })?;
            // SAFETY: as above; `path` is NUL-terminated and outlives the call.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    if result == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::EOPNOTSUPP => {
            tracing::warn!(entry = %entry_name, xattr = key, "the layer filesystem does not support this extended attribute; skipping it");
            Ok(())
        }
        errno => Err(error(errno.into())),
    }
}
