//! Blocking readers over the chunks of a download, for the threads that store and
//! unpack a blob while it is still arriving.
//!
//! ```text
//!  async download loop ──tokio mpsc──> ChunkReader ──> ContentStore::write (hash, file)
//!                                          │ tee: every chunk, before it is written
//!                                          └──std sync_channel──> QueueReader ──> unpack
//! ```
//!
//! Both queues are bounded, so a slow disk or unpacker slows the download instead of
//! buffering the blob in memory. Chunks are `Bytes`, so the tee copies no data. If the
//! unpacker stops early (it failed, or it finished), the tee is dropped and the blob
//! is still stored; if the writer stops early, the tee closes and the unpacker sees
//! the end of its stream.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::{Buf, Bytes};

/// Reads the chunks of a download, forwarding each to an optional tee.
pub(super) struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    tee: Option<SyncSender<Bytes>>,
    current: Bytes,
}

impl ChunkReader {
    pub(super) fn new(
        chunks: tokio::sync::mpsc::Receiver<Bytes>,
        tee: Option<SyncSender<Bytes>>,
    ) -> Self {
        Self {
            chunks,
            tee,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            // Called on a blocking thread (spawn_blocking), never on a runtime worker.
            let Some(chunk) = self.chunks.blocking_recv() else {
                return Ok(0);
            };
            if let Some(tee) = &self.tee {
                if tee.send(chunk.clone()).is_err() {
                    self.tee = None;
                }
            }
            self.current = chunk;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Reads the chunks a [`ChunkReader`] forwards.
pub(super) struct QueueReader {
    chunks: Receiver<Bytes>,
    current: Bytes,
}

impl QueueReader {
    pub(super) fn new(chunks: Receiver<Bytes>) -> Self {
        Self {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tee_sees_every_chunk_and_a_gone_tee_is_tolerated() {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let (tee_sender, tee_receiver) = std::sync::mpsc::sync_channel(4);
        let reader = ChunkReader::new(receiver, Some(tee_sender));
        let producer = std::thread::spawn(move || {
            for chunk in ["hello ", "", "chunked ", "world"] {
                sender.blocking_send(Bytes::from(chunk)).unwrap();
            }
        });
        let consumer = std::thread::spawn(move || {
            let mut copy = String::new();
            QueueReader::new(tee_receiver)
                .read_to_string(&mut copy)
                .unwrap();
            copy
        });
        let mut main = String::new();
        // Small reads exercise the partial-chunk path.
        let mut reader = io::BufReader::with_capacity(3, reader);
        reader.read_to_string(&mut main).unwrap();
        drop(reader);
        producer.join().unwrap();
        assert_eq!(main, "hello chunked world");
        assert_eq!(consumer.join().unwrap(), "hello chunked world");

        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let (tee_sender, tee_receiver) = std::sync::mpsc::sync_channel(1);
        drop(tee_receiver);
        sender
            .try_send(Bytes::from_static(b"still stored"))
            .unwrap();
        drop(sender);
        let mut stored = String::new();
        ChunkReader::new(receiver, Some(tee_sender))
            .read_to_string(&mut stored)
            .unwrap();
        assert_eq!(stored, "still stored");
    }
}
