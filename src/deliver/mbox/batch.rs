//! One mbox batch while it is written: the locks held from `prepare_batch`
//! to commit or abort, the bytes buffered and appended through the one
//! locked descriptor, each piece journaled (synced) before it is written,
//! the file fsynced at commit, and cut back to where the batch began when it
//! is not committed. `target` owns the batch; each message's sink writes
//! into it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::journal::JournalWriter;
use super::lock::MboxLock;
use crate::deliver::DeliveryError;

/// Bytes gathered before they are journaled and appended; doubles from
/// the first to the last value during a batch, so a batch of small messages
/// reaches the file soon and a large message costs few journal syncs.
const FIRST_UNIT: usize = 64 * 1024;
const LAST_UNIT: usize = 1024 * 1024;

/// Bytes of the message being written that wait for its end (see
/// `Batch::write`).
const HOLD_BACK: usize = 2;

/// Lock the batch's state; a panic elsewhere while it was held leaves it
/// unknown, which is an error, not a reason to panic again.
pub(super) fn lock_batch<'a>(
    batch: &'a Mutex<Batch>,
    path: &Path,
) -> Result<MutexGuard<'a, Batch>, DeliveryError> {
    batch.lock().map_err(|_| DeliveryError::Write {
        path: path.to_owned(),
        source: std::io::Error::other("the mbox batch's state was lost"),
    })
}

/// One batch: the locks, the journal, and the bytes not yet appended.
pub(super) struct Batch {
    /// Held until commit or abort.
    lock: Option<MboxLock>,
    /// The mbox as configured, for messages and locations.
    path: PathBuf,
    pub(super) id: u64,
    journal: Option<JournalWriter>,
    /// The file's length when the locks were taken.
    pub(super) start: u64,
    /// popsync's bytes in the file end here.
    end: u64,
    /// Bytes to append after `end`.
    pub(super) buf: Vec<u8>,
    /// Offsets of message starts within `buf` (pieces break there).
    starts: Vec<u64>,
    unit: usize,
    /// The index the next prepared message gets.
    pub(super) next_index: u32,
    /// The message being written: its index and offset.
    open: Option<(u32, u64)>,
    /// Where the last finished message ends.
    finished_end: u64,
    /// A write failed and left a finished message incomplete: the batch
    /// cannot be committed.
    broken: bool,
    pub(super) warnings: Vec<String>,
}

impl Batch {
    /// A batch that holds `lock` on the mbox `path`, whose bytes begin at
    /// `start`, journaled (when there is a journal) by `journal`.
    pub(super) fn new(
        lock: MboxLock,
        path: PathBuf,
        id: u64,
        journal: Option<JournalWriter>,
        start: u64,
    ) -> Batch {
        Batch {
            lock: Some(lock),
            path,
            id,
            journal,
            start,
            end: start,
            buf: Vec::new(),
            starts: Vec::new(),
            unit: FIRST_UNIT,
            next_index: 0,
            open: None,
            finished_end: start,
            broken: false,
            warnings: Vec::new(),
        }
    }

    fn file(&self) -> Result<&File, DeliveryError> {
        match &self.lock {
            Some(l) => Ok(l.file()),
            None => Err(self.write_err(std::io::Error::other(
                "the batch is over: its locks were released",
            ))),
        }
    }

    fn write_err(&self, source: std::io::Error) -> DeliveryError {
        DeliveryError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn journal_err(&self, source: std::io::Error) -> DeliveryError {
        DeliveryError::Write {
            path: self
                .journal
                .as_ref()
                .map_or_else(|| self.path.clone(), |j| j.path().to_owned()),
            source,
        }
    }

    fn file_len(&self) -> Result<u64, DeliveryError> {
        let file = self.file()?;
        file.metadata()
            .map(|m| m.len())
            .map_err(|e| self.write_err(e))
    }

    /// Offset the next byte will have.
    fn pos(&self) -> u64 {
        self.end + self.buf.len() as u64
    }

    pub(super) fn begin(&mut self, index: u32) -> Result<u64, DeliveryError> {
        if self.open.is_some() {
            return Err(self.write_err(std::io::Error::other(
                "a message started while another was being written",
            )));
        }
        let at = self.pos();
        self.starts.push(at);
        if let Some(j) = self.journal.as_mut() {
            j.message_start(index, at);
        }
        self.open = Some((index, at));
        Ok(at)
    }

    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.unit {
            // The last bytes of a message being written stay behind until
            // its end is journaled: a message cut short by a kill then
            // lacks more than a line end, which another program appending
            // after it could supply, making a torn copy look whole.
            let keep = if self.open.is_some() { HOLD_BACK } else { 0 };
            self.write_out(self.buf.len().saturating_sub(keep))?;
        }
        Ok(())
    }

    /// Append the last bytes of message `index`. Its end is journaled
    /// before they are buffered, so that no write can put the whole message
    /// in the file without the record that it is whole: recovery would take
    /// it for torn and fetch it again. On failure the message is cut off.
    pub(super) fn end_message(&mut self, index: u32, last: &[u8]) -> Result<(), DeliveryError> {
        let Some((open, start)) = self.open.filter(|&(open, _)| open == index) else {
            return Err(self.write_err(std::io::Error::other(
                "a message ended that was not being written",
            )));
        };
        let at = self.pos() + last.len() as u64;
        if let Some(j) = self.journal.as_mut() {
            j.message_end(open, at);
        }
        if let Err(e) = self.write(last) {
            self.open = None;
            self.cut_back(start);
            return Err(e);
        }
        self.open = None;
        self.finished_end = at;
        Ok(())
    }

    /// Journal (and sync) the first `n` buffered bytes, then append them.
    pub(super) fn write_out(&mut self, n: usize) -> Result<(), DeliveryError> {
        let len = self.file_len()?;
        if len != self.end {
            // Someone wrote to the file although we hold both locks: what
            // we would append now could not be told from theirs.
            return Err(self.write_err(std::io::Error::other(format!(
                "the mbox changed while popsync held its locks ({} bytes expected, {len} found): \
                 another program writes to it without locking",
                self.end
            ))));
        }
        let n = n.min(self.buf.len());
        if let Some(j) = self.journal.as_mut() {
            j.pieces(self.end, &self.buf[..n], &self.starts);
            if let Err(e) = j.sync() {
                return Err(self.journal_err(e));
            }
        }
        let written = self.file()?.write_all(&self.buf[..n]);
        if let Err(e) = written {
            // Part of it may be in the file: ours (the locks are held and
            // the journal describes it). The message being written is cut
            // back by its sink; a finished one that did not make it whole
            // fails the batch (its sink has handed it over already).
            match self.file_len() {
                Ok(now) if now >= self.end => self.end = now.min(self.end + n as u64),
                _ => self.broken = true,
            }
            if self.finished_end > self.end {
                self.broken = true;
            }
            self.buf.clear();
            self.starts.clear();
            return Err(self.write_err(e));
        }
        self.end += n as u64;
        self.buf.drain(..n);
        self.starts.retain(|&s| s >= self.end);
        self.unit = (self.unit * 2).min(LAST_UNIT);
        Ok(())
    }

    /// Cut the file back to `to`, if what is after it is all ours.
    fn cut_back(&mut self, to: u64) {
        if self.end > to {
            let cut = match self.file_len() {
                Ok(len) if len == self.end => self.file().and_then(|f| {
                    f.set_len(to)
                        .and_then(|()| f.sync_data())
                        .map_err(|e| self.write_err(e))
                }),
                Ok(_) => Err(self.write_err(std::io::Error::other("the file changed meanwhile"))),
                Err(e) => Err(e),
            };
            match cut {
                Ok(()) => self.end = to,
                Err(e) => self.warnings.push(format!(
                    "could not remove what popsync had begun to append at offset {to}: {e}; \
                     check the mbox with a mail reader"
                )),
            }
        }
        self.buf.truncate(to.saturating_sub(self.end) as usize);
        self.starts.retain(|&s| s < to);
        if let Some(j) = self.journal.as_mut() {
            j.cut(to);
            // A cut already made: recovery finds it in the file anyway.
            let _ = j.write_queued();
        }
    }

    /// A message that was not finished: remove it.
    pub(super) fn fail_message(&mut self, index: u32) {
        if let Some((open, at)) = self.open
            && open == index
        {
            self.open = None;
            self.cut_back(at);
        }
    }

    /// Make the batch durable: append the rest, sync journal and file.
    pub(super) fn commit(&mut self) -> Result<(), DeliveryError> {
        if self.broken {
            return Err(self.write_err(std::io::Error::other(
                "a write to the mbox failed part way: the batch is rolled back",
            )));
        }
        self.write_out(self.buf.len())?;
        let lock = self
            .lock
            .as_ref()
            .ok_or_else(|| self.write_err(std::io::Error::other("no lock")))?;
        let sync_err = |source| DeliveryError::Sync {
            path: self.path.clone(),
            source,
        };
        lock.file().sync_all().map_err(sync_err)?;
        if lock.created()
            && let Some(dir) = lock.resolved().parent()
        {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(sync_err)?;
        }
        Ok(())
    }

    /// Give up the batch: cut off everything it appended.
    pub(super) fn abort(&mut self) {
        self.open = None;
        self.cut_back(self.start);
        self.release();
    }

    pub(super) fn release(&mut self) {
        if let Some(lock) = self.lock.take()
            && let Some(w) = lock.release()
        {
            self.warnings.push(w);
        }
    }
}

/// A random batch id: journals of different batches never match.
pub(super) fn batch_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No random source: time and pid still differ between batches.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_le_bytes(b)
}
