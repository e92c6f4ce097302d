//! Layers described in code and packed into (optionally compressed) tar streams.
//!
//! A [`Layer`] is an ordered list of entries. Entries added with the typed methods go
//! through the tar crate's header helpers, which support long names and refuse absolute
//! paths and `..`. [`Layer::raw`] bypasses those helpers and writes the path and link
//! target into the header verbatim: that is how tests build the malicious layers
//! (`../escape`, `/etc/passwd`, device nodes) an unpacker must refuse.
//!
//! Modifiers ([`Layer::mode`], [`Layer::owner`], [`Layer::mtime`], [`Layer::xattr`])
//! apply to the entry added last. Extended attributes are written as a PAX extended
//! header (`SCHILY.xattr.<name>`), the way GNU tar and the docker/containerd tooling do.

use std::io::Write;

use tar::{EntryType, Header};

use crate::{sha256_digest, TestkitError};

/// The mtime every entry gets unless [`Layer::mtime`] says otherwise (2023-11-14), so
/// digests are reproducible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip, the common case for registry layers.
    #[default]
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Media type of an OCI layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, TestkitError> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data).map_err(TestkitError::Stream)?;
                encoder.finish().map_err(TestkitError::Stream)
            }
            Compression::Zstd => zstd::encode_all(data, 3).map_err(TestkitError::Stream),
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with this content.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target (stored as is, never resolved).
    Symlink(String),
    /// A hard link to this earlier entry of the layer.
    HardLink(String),
    /// A character device node.
    CharDevice { major: u32, minor: u32 },
    /// A block device node.
    BlockDevice { major: u32, minor: u32 },
    /// A named pipe.
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
    raw: bool,
}

/// One image layer, described entry by entry.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
    misuse: Option<&'static str>,
}

impl Layer {
    /// An empty layer, gzip-compressed by default.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: EntryKind, raw: bool) -> Self {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) | EntryKind::HardLink(_) => 0o777,
            EntryKind::File(_) => 0o644,
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => 0o600,
        };
        self.entries.push(Entry {
            path: path.to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            raw,
        });
        self
    }

    /// Adds a regular file (mode 0644, owned by root).
    pub fn file(self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.push(path, EntryKind::File(content.into()), false)
    }

    /// Adds a directory (mode 0755, owned by root).
    pub fn dir(self, path: &str) -> Self {
        let path = format!("{}/", path.trim_end_matches('/'));
        self.push(&path, EntryKind::Dir, false)
    }

    /// Adds a symbolic link `path -> target`.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::Symlink(target.to_owned()), false)
    }

    /// Adds a hard link `path` to the earlier entry `target` (a path in the layer).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::HardLink(target.to_owned()), false)
    }

    /// Deletes `path` of lower layers: adds the `.wh.<name>` whiteout marker.
    pub fn whiteout(self, path: &str) -> Self {
        let marker = match path.trim_end_matches('/').rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/.wh.{name}"),
            None => format!(".wh.{}", path.trim_end_matches('/')),
        };
        self.push(&marker, EntryKind::File(Vec::new()), false)
    }

    /// Hides everything lower layers have in directory `dir`: adds `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let marker = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.push(&marker, EntryKind::File(Vec::new()), false)
    }

    /// Adds an entry whose path and link target are written into the header verbatim,
    /// without the tar crate's checks (absolute paths and `..` allowed, 100 bytes max).
    pub fn raw(self, path: &str, kind: EntryKind) -> Self {
        self.push(path, kind, true)
    }

    fn modify(mut self, modifier: &'static str, apply: impl FnOnce(&mut Entry)) -> Self {
        match self.entries.last_mut() {
            Some(entry) => apply(entry),
            None => self.misuse = self.misuse.or(Some(modifier)),
        }
        self
    }

    /// Sets the permission bits (including setuid/setgid/sticky) of the last entry.
    pub fn mode(self, mode: u32) -> Self {
        self.modify("mode", |e| e.mode = mode)
    }

    /// Sets the owner of the last entry.
    pub fn owner(self, uid: u64, gid: u64) -> Self {
        self.modify("owner", |e| {
            e.uid = uid;
            e.gid = gid;
        })
    }

    /// Sets the modification time (seconds since the epoch) of the last entry.
    pub fn mtime(self, mtime: u64) -> Self {
        self.modify("mtime", |e| e.mtime = mtime)
    }

    /// Adds an extended attribute to the last entry. The value must not contain a
    /// newline: the tar crate's PAX reader splits records on newlines.
    pub fn xattr(self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        let value = value.into();
        self.modify("xattr", |e| e.xattrs.push((name.to_owned(), value)))
    }

    /// Chooses how [`Layer::blob`] compresses the tar stream.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The compression [`Layer::blob`] uses.
    pub fn compression_kind(&self) -> Compression {
        self.compression
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Result<Vec<u8>, TestkitError> {
        if let Some(modifier) = self.misuse {
            return Err(TestkitError::NoEntry { modifier });
        }
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append_entry(&mut builder, entry)?;
        }
        builder.into_inner().map_err(TestkitError::Stream)
    }

    /// The layer blob as stored in an image: the tar stream, compressed.
    pub fn blob(&self) -> Result<Vec<u8>, TestkitError> {
        self.compression.compress(&self.tar()?)
    }

    /// The diff id: digest of the uncompressed tar stream.
    pub fn diff_id(&self) -> Result<String, TestkitError> {
        Ok(sha256_digest(&self.tar()?))
    }
}

fn append_entry(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) -> Result<(), TestkitError> {
    if !entry.xattrs.is_empty() {
        append_pax_xattrs(builder, &entry.xattrs)?;
    }
    let mut header = Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(0);
    let mut data: &[u8] = &[];
    let mut link: Option<&str> = None;
    match &entry.kind {
        EntryKind::File(content) => {
            header.set_entry_type(EntryType::Regular);
            header.set_size(content.len() as u64);
            data = content;
        }
        EntryKind::Dir => header.set_entry_type(EntryType::Directory),
        EntryKind::Symlink(target) => {
            header.set_entry_type(EntryType::Symlink);
            link = Some(target);
        }
        EntryKind::HardLink(target) => {
            header.set_entry_type(EntryType::Link);
            link = Some(target);
        }
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            header.set_entry_type(if matches!(entry.kind, EntryKind::CharDevice { .. }) {
                EntryType::Char
            } else {
                EntryType::Block
            });
            set_device(&mut header, *major, *minor, &entry.path)?;
        }
        EntryKind::Fifo => header.set_entry_type(EntryType::Fifo),
    }
    let tar_error = |source| TestkitError::TarEntry {
        path: entry.path.clone(),
        source,
    };
    if entry.raw {
        write_raw_field(&mut header.as_old_mut().name, &entry.path)?;
        if let Some(target) = link {
            write_raw_field(&mut header.as_old_mut().linkname, target)?;
        }
        header.set_cksum();
        return builder.append(&header, data).map_err(tar_error);
    }
    match link {
        Some(target) => builder
            .append_link(&mut header, &entry.path, target)
            .map_err(tar_error),
        None => builder
            .append_data(&mut header, &entry.path, data)
            .map_err(tar_error),
    }
}

fn set_device(header: &mut Header, major: u32, minor: u32, path: &str) -> Result<(), TestkitError> {
    let tar_error = |source| TestkitError::TarEntry {
        path: path.to_owned(),
        source,
    };
    header.set_device_major(major).map_err(tar_error)?;
    header.set_device_minor(minor).map_err(tar_error)
}

fn write_raw_field(field: &mut [u8; 100], value: &str) -> Result<(), TestkitError> {
    let bytes = value.as_bytes();
    if bytes.len() > field.len() {
        return Err(TestkitError::RawFieldTooLong {
            value: value.to_owned(),
        });
    }
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Writes a PAX extended header carrying `SCHILY.xattr.*` records for the next entry.
fn append_pax_xattrs(
    builder: &mut tar::Builder<Vec<u8>>,
    xattrs: &[(String, Vec<u8>)],
) -> Result<(), TestkitError> {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        records.extend_from_slice(&pax_record(&format!("SCHILY.xattr.{name}"), value));
    }
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_size(records.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(DEFAULT_MTIME);
    write_raw_field(&mut header.as_old_mut().name, "././@PaxHeader")?;
    header.set_cksum();
    builder
        .append(&header, records.as_slice())
        .map_err(TestkitError::Stream)
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn entries(tar: &[u8]) -> Vec<(String, EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
                let kind = entry.header().entry_type();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (path, kind, data)
            })
            .collect()
    }

    #[test]
    fn typed_entries_round_trip_through_tar() {
        let long = format!("{}/file", "d".repeat(150));
        let layer = Layer::new()
            .dir("etc")
            .file("etc/motd", "hello")
            .mode(0o4755)
            .owner(1000, 100)
            .symlink("etc/link", "motd")
            .hardlink("etc/hard", "etc/motd")
            .whiteout("usr/bin/old")
            .opaque("var/")
            .file(&long, "x");
        let tar = layer.tar().unwrap();
        let found = entries(&tar);
        let names: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/motd",
                "etc/link",
                "etc/hard",
                "usr/bin/.wh.old",
                "var/.wh..wh..opq",
                long.as_str()
            ]
        );
        assert_eq!(found[1].2, b"hello");
        let mut archive = tar::Archive::new(tar.as_slice());
        let motd = archive.entries().unwrap().nth(1).unwrap().unwrap();
        assert_eq!(motd.header().mode().unwrap(), 0o4755);
        assert_eq!(motd.header().uid().unwrap(), 1000);
        assert_eq!(motd.header().gid().unwrap(), 100);
    }

    #[test]
    fn raw_entries_keep_hostile_paths() {
        let tar = Layer::new()
            .raw("../escape", EntryKind::File(b"x".to_vec()))
            .raw("/abs", EntryKind::HardLink("../../etc/passwd".into()))
            .raw("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 })
            .tar()
            .unwrap();
        let found = entries(&tar);
        assert_eq!(found[0].0, "../escape");
        assert_eq!(found[1].0, "/abs");
        assert_eq!(found[1].1, EntryType::Link);
        assert_eq!(found[2].1, EntryType::Block);
    }

    #[test]
    fn typed_entries_refuse_parent_components() {
        let err = Layer::new().file("../x", "").tar().unwrap_err();
        assert!(matches!(err, TestkitError::TarEntry { .. }), "{err:?}");
    }

    #[test]
    fn xattrs_become_pax_records() {
        let tar = Layer::new()
            .file("f", "")
            .xattr("user.note", b"a=b c".to_vec())
            .tar()
            .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let pax: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|ext| {
                let ext = ext.unwrap();
                (ext.key().unwrap().to_owned(), ext.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(
            pax,
            [("SCHILY.xattr.user.note".to_owned(), b"a=b c".to_vec())]
        );
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for value_len in [0, 1, 5, 6, 7, 90, 95, 96, 97, 1000] {
            let record = pax_record("k", &vec![b'v'; value_len]);
            let text = String::from_utf8(record.clone()).unwrap();
            let declared: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(declared, record.len(), "value length {value_len}");
        }
    }

    #[test]
    fn compression_is_applied_and_diff_id_is_of_the_tar() {
        let layer = Layer::new().file("a", "a");
        let tar = layer.tar().unwrap();
        let gzip = layer.clone().compression(Compression::Gzip).blob().unwrap();
        let zstd = layer.clone().compression(Compression::Zstd).blob().unwrap();
        let none = layer.clone().compression(Compression::None).blob().unwrap();
        assert_eq!(&gzip[..2], [0x1f, 0x8b]);
        assert_eq!(&zstd[..4], [0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(none, tar);
        assert_eq!(layer.diff_id().unwrap(), sha256_digest(&tar));
    }

    #[test]
    fn modifier_without_entry_is_reported() {
        let err = Layer::new().mode(0o700).tar().unwrap_err();
        assert!(matches!(err, TestkitError::NoEntry { modifier: "mode" }));
    }
}
