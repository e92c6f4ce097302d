//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! Every blob is written the same way: into a `.tmp-*` file in the blob directory,
//! hashed while it is copied, flushed to disk, and renamed to its digest only if the
//! digest (and size, when known) matches. A failed or mismatching write leaves nothing
//! behind, and a reader never sees a partial blob. Two writers of the same blob race
//! harmlessly: the rename does not replace, and the loser's identical copy is dropped.
//!
//! Blobs are immutable once stored, so a stored blob is trusted without re-hashing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};
use crate::error::ImageError;

/// Prefix of in-progress files and directories anywhere in the store.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Largest manifest, index or config accepted (real ones are a few KiB).
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;

/// Blobs addressed by their sha256 digest.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the blob store under `root/blobs/sha256`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let dir = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir)
            .map_err(|source| ImageError::io("create blob directory", &dir, source))?;
        Ok(Self { dir })
    }

    /// The directory blobs live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with this digest is (or would be) stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The size of a stored blob, or `None` if it is not stored.
    pub fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, ImageError> {
        let path = self.path(digest);
        match std::fs::metadata(&path) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ImageError::io("inspect blob", path, source)),
        }
    }

    /// Stores the blob `expected` from `reader`, verifying digest and (if given) size.
    /// If the blob is already stored, `reader` is not read at all. Returns the size.
    pub fn write(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        reader: impl Read,
    ) -> Result<u64, ImageError> {
        if let Some(size) = self.stored_size(expected)? {
            check_size(expected, expected_size, size)?;
            return Ok(size);
        }
        // Read at most one byte more than announced: enough to detect an oversized blob
        // without letting a hostile source fill the disk.
        let limit = expected_size.map_or(u64::MAX, |size| size.saturating_add(1));
        let (temp, actual, size) = self.copy_to_temp(reader.take(limit))?;
        check_size(expected, expected_size, size)?;
        if actual != *expected {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.commit(temp, expected)?;
        Ok(size)
    }

    /// Stores a blob whose digest is not known in advance (a file of a `docker save`
    /// archive) and returns its digest and size.
    pub fn ingest(&self, reader: impl Read) -> Result<(Digest, u64), ImageError> {
        let (temp, digest, size) = self.copy_to_temp(reader)?;
        self.commit(temp, &digest)?;
        Ok((digest, size))
    }

    /// Opens a stored blob. `what` names it in the error if it is missing.
    pub fn open_blob(&self, digest: &Digest, what: &'static str) -> Result<File, ImageError> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob {
                what,
                digest: digest.clone(),
            },
            _ => ImageError::io("open blob", path, source),
        })
    }

    /// Reads a stored JSON document (manifest, index, config), refusing oversized ones.
    pub fn read_document(
        &self,
        digest: &Digest,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        let file = self.open_blob(digest, what)?;
        let path = self.path(digest);
        let size = file
            .metadata()
            .map_err(|source| ImageError::io("inspect blob", &path, source))?
            .len();
        if size > MAX_DOCUMENT_SIZE {
            return Err(ImageError::DocumentTooLarge {
                what,
                digest: digest.clone(),
                size,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_DOCUMENT_SIZE)
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::io("read blob", path, source))?;
        Ok(bytes)
    }

    fn copy_to_temp(
        &self,
        mut reader: impl Read,
    ) -> Result<(tempfile::NamedTempFile, Digest, u64), ImageError> {
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|source| ImageError::io("create a temporary blob in", &self.dir, source))?;
        let temp_path = temp.path().to_owned();
        let mut writer = HashingWriter::new(temp.as_file_mut());
        // Copy by hand to tell a failing source (corrupt archive, broken download) from
        // a failing disk.
        let mut buffer = vec![0u8; 128 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ImageError::SourceRead(err)),
            };
            writer
                .write_all(&buffer[..n])
                .map_err(|source| ImageError::io("write blob", &temp_path, source))?;
        }
        let (digest, size, file) = writer.finish();
        file.sync_data()
            .map_err(|source| ImageError::io("flush blob", &temp_path, source))?;
        Ok((temp, digest, size))
    }

    fn commit(&self, temp: tempfile::NamedTempFile, digest: &Digest) -> Result<(), ImageError> {
        let path = self.path(digest);
        match temp.persist_noclobber(&path) {
            Ok(_) => {
                tracing::debug!(%digest, "stored blob");
                Ok(())
            }
            // Someone stored the same content first; ours is dropped with the temp file.
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(err) => Err(ImageError::io("store blob", path, err.error)),
        }
    }
}

fn check_size(digest: &Digest, expected: Option<u64>, actual: u64) -> Result<(), ImageError> {
    match expected {
        Some(expected) if expected != actual => Err(ImageError::SizeMismatch {
            digest: digest.clone(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_files(store: &ContentStore) -> Vec<String> {
        std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn verified_write_stores_under_digest() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let digest = Digest::of(b"blob");
        assert_eq!(store.write(&digest, Some(4), &b"blob"[..]).unwrap(), 4);
        assert_eq!(std::fs::read(store.path(&digest)).unwrap(), b"blob");
        // A second write does not read its source at all.
        struct Unreadable;
        impl Read for Unreadable {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("stored blob was read again")
            }
        }
        assert_eq!(store.write(&digest, None, Unreadable).unwrap(), 4);
    }

    #[test]
    fn mismatching_content_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let digest = Digest::of(b"expected");
        let err = store.write(&digest, None, &b"tampered"[..]).unwrap_err();
        match err {
            ImageError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, digest);
                assert_eq!(actual, Digest::of(b"tampered"));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(!store.path(&digest).exists());
        assert!(temp_files(&store).is_empty());
    }

    #[test]
    fn wrong_size_is_refused_without_reading_everything() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let digest = Digest::of(b"12345");
        let err = store
            .write(&digest, Some(3), std::io::repeat(b'x'))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::SizeMismatch {
                    expected: 3,
                    actual: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(temp_files(&store).is_empty());
    }

    #[test]
    fn ingest_computes_the_digest_and_documents_are_bounded() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let (digest, size) = store.ingest(&b"{}"[..]).unwrap();
        assert_eq!((digest.clone(), size), (Digest::of(b"{}"), 2));
        assert_eq!(store.read_document(&digest, "config").unwrap(), b"{}");
        let big = vec![b' '; MAX_DOCUMENT_SIZE as usize + 1];
        let (big_digest, _) = store.ingest(big.as_slice()).unwrap();
        assert!(matches!(
            store.read_document(&big_digest, "manifest"),
            Err(ImageError::DocumentTooLarge { .. })
        ));
        let missing = Digest::of(b"missing");
        assert!(matches!(
            store.open_blob(&missing, "layer"),
            Err(ImageError::MissingBlob { what: "layer", .. })
        ));
    }
}
