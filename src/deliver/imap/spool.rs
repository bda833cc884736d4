//! A message on its way to the IMAP server: spooled to an unnamed file as it
//! comes off the POP3 socket (an APPEND literal needs its exact size first,
//! and a message is never held whole in memory), then streamed into the
//! APPEND with CRLF line ends.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::PendingImap;
use super::date::internaldate;
use crate::deliver::{DeliveryError, Finished, FinishedKind, Sink};

/// Header bytes kept in memory to find the dates and the Message-ID.
const MAX_HEAD: usize = 256 * 1024;

/// A message written in full to its spool file.
pub struct Spooled {
    file: File,
    /// Octets as the IMAP server will count them (every LF sent as CRLF).
    pub crlf_size: u64,
    /// The quoted INTERNALDATE to APPEND with.
    pub internaldate: String,
    /// How to find the message in the mailbox: what its pending row says
    /// from just before the APPEND on.
    pub pending: PendingImap,
}

/// Why a spooled message could not be sent.
pub enum SendError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl Spooled {
    /// Write the message to `w` with CRLF line ends.
    pub async fn send_crlf<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<(), SendError> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(SendError::Read)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(2 * buf.len());
        loop {
            let n = self.file.read(&mut buf).map_err(SendError::Read)?;
            if n == 0 {
                return Ok(());
            }
            out.clear();
            for &b in &buf[..n] {
                if b == b'\n' {
                    out.push(b'\r');
                }
                out.push(b);
            }
            w.write_all(&out).await.map_err(SendError::Write)?;
        }
    }
}

/// The sink that spools one message.
pub struct SpoolSink {
    out: BufWriter<File>,
    head: Vec<u8>,
    written: u64,
    newlines: u64,
    pending: PendingImap,
    now: DateTime<Utc>,
    /// For errors: the file is unnamed.
    spool_dir: std::path::PathBuf,
}

impl SpoolSink {
    /// An unnamed spool file in `dir`; `received` (popsync's Received:
    /// header, already carrying the pending delivery's token) goes first.
    pub fn create(
        dir: &Path,
        mut pending: PendingImap,
        received: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<SpoolSink, DeliveryError> {
        let write_err = |source| DeliveryError::Write {
            path: dir.to_owned(),
            source,
        };
        let file = tempfile::tempfile_in(dir).map_err(write_err)?;
        let mut sink = SpoolSink {
            out: BufWriter::with_capacity(64 * 1024, file),
            head: Vec::new(),
            written: 0,
            newlines: 0,
            pending: {
                pending.token_in_message = received.is_some();
                pending
            },
            now,
            spool_dir: dir.to_owned(),
        };
        if let Some(r) = received {
            // Not into `head`: the dates that count are the message's own.
            sink.out.write_all(r.as_bytes()).map_err(write_err)?;
            sink.written += r.len() as u64;
            sink.newlines += memchr::memchr_iter(b'\n', r.as_bytes()).count() as u64;
        }
        Ok(sink)
    }
}

impl Sink for SpoolSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        self.out
            .write_all(data)
            .map_err(|source| DeliveryError::Write {
                path: self.spool_dir.clone(),
                source,
            })?;
        self.written += data.len() as u64;
        self.newlines += memchr::memchr_iter(b'\n', data).count() as u64;
        if self.head.len() < MAX_HEAD && memchr::memmem::find(&self.head, b"\n\n").is_none() {
            let room = MAX_HEAD - self.head.len();
            self.head.extend_from_slice(&data[..data.len().min(room)]);
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Finished, DeliveryError> {
        let s = *self;
        let path = s.spool_dir.clone();
        let file = s.out.into_inner().map_err(|e| DeliveryError::Write {
            path: path.clone(),
            source: e.into_error(),
        })?;
        let crlf_size = s.written + s.newlines;
        let mut pending = s.pending;
        pending.size = Some(crlf_size);
        pending.message_id = crate::headers::field(&s.head, "Message-ID")
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty());
        Ok(Finished {
            kind: FinishedKind::Imap(Box::new(Spooled {
                file,
                crlf_size,
                internaldate: internaldate(&s.head, s.now),
                pending,
            })),
            size: s.written,
        })
    }
}
