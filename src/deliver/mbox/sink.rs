//! One message written into an mbox batch: the `From ` separator (the
//! envelope sender found in its head), the `Received:` header, the message
//! with `From ` lines quoted (mboxrd), its last line completed and a blank
//! line after it. A sink dropped before `finish` cuts its message back off,
//! so the mbox holds only whole messages.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::batch::{Batch, lock_batch};
use super::quoting::{FromQuoter, from_date};
use crate::deliver::{DeliveryError, Finished, FinishedKind, HeadBuffer, Sink, envelope_sender};

/// One message on its way into the batch.
pub(super) struct MboxSink {
    batch: Arc<Mutex<Batch>>,
    index: u32,
    path: PathBuf,
    /// Where the message begins in the file.
    offset: u64,
    date: DateTime<Utc>,
    received: Option<String>,
    head: Option<HeadBuffer>,
    quoter: FromQuoter,
    scratch: Vec<u8>,
    last: u8,
    written: u64,
    finished: bool,
}

impl MboxSink {
    /// The sink of message `index` of `batch`, which begins at `offset` of
    /// the mbox `path`; `date` dates its `From ` line and `received` is the
    /// `Received:` header to put first, if any.
    pub(super) fn new(
        batch: Arc<Mutex<Batch>>,
        index: u32,
        path: PathBuf,
        offset: u64,
        date: DateTime<Utc>,
        received: Option<String>,
    ) -> MboxSink {
        MboxSink {
            batch,
            index,
            path,
            offset,
            date,
            received,
            head: Some(HeadBuffer::default()),
            quoter: FromQuoter::default(),
            scratch: Vec::new(),
            last: b'\n',
            written: 0,
            finished: false,
        }
    }

    fn raw(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        lock_batch(&self.batch, &self.path)?.write(data)
    }

    /// The head is complete: write the separator, Received:, then the head.
    fn open_message(&mut self, head: &[u8]) -> Result<(), DeliveryError> {
        let sender = envelope_sender(head);
        let from_line = format!("From {} {}\n", sender, from_date(self.date));
        self.raw(from_line.as_bytes())?;
        if let Some(r) = self.received.take() {
            self.quoted(r.as_bytes())?;
        }
        self.quoted(head)
    }

    fn quoted(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.quoter.quote(data, &mut scratch);
        if let Some(&l) = scratch.last() {
            self.last = l;
        }
        self.written += scratch.len() as u64;
        let r = self.raw(&scratch);
        self.scratch = scratch;
        r
    }
}

impl Sink for MboxSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        match self.head.as_mut() {
            Some(head) => match head.push(data) {
                Some(whole) => {
                    self.head = None;
                    self.open_message(&whole)
                }
                None => Ok(()),
            },
            None => self.quoted(data),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, DeliveryError> {
        if let Some(mut head) = self.head.take() {
            let whole = head.finish();
            self.open_message(&whole)?;
        }
        let mut tail = Vec::new();
        self.quoter.finish(&mut tail);
        if let Some(&last) = tail.last() {
            self.last = last;
        }
        // Complete the last line, then the blank line between messages.
        if self.last != b'\n' {
            tail.push(b'\n');
        }
        self.written += tail.len() as u64;
        tail.push(b'\n');
        let ended = lock_batch(&self.batch, &self.path)?.end_message(self.index, &tail);
        // Whole, or already cut back: nothing left for drop to undo.
        self.finished = true;
        ended?;
        Ok(Finished {
            kind: FinishedKind::Mbox(format!("{}@{}", self.path.display(), self.offset)),
            size: self.written,
        })
    }
}

impl Drop for MboxSink {
    fn drop(&mut self) {
        // Not finished (a write failed, the server went away): cut the
        // partial message off so the mbox holds only whole messages.
        if !self.finished
            && let Ok(mut b) = self.batch.lock()
        {
            b.fail_message(self.index);
        }
    }
}
