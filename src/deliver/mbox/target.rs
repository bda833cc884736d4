//! The mbox `Target` that `sync` drives: `prepare_batch` takes the locks and
//! starts a batch (`batch`) with its journal, `start` hands out a sink per
//! message, `commit` makes the batch durable and releases the locks, `abort`
//! (or drop) cuts it back, and `recover` finishes or undoes what a killed run
//! left (`recovery`). Each message's sink (`sink`) writes the `From ` line,
//! `Received:` and the quoted message into the batch.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::batch::{Batch, batch_id, lock_batch};
use super::journal::{self, Header, JournalWriter};
use super::lock::MboxLock;
use super::recovery;
use super::sink::MboxSink;
use crate::deliver::{DeliveryError, Finished, FinishedKind, MessageInfo, Prepared, Sink, Target};

/// An mbox file.
pub struct Mbox {
    path: PathBuf,
    now: DateTime<Utc>,
    lock_timeout: Duration,
    /// Where the write-ahead journal of this account's batches goes; without
    /// one (the fuzz target), an interrupted batch cannot be told from
    /// others' mail and is left alone by recovery.
    journal: Option<PathBuf>,
    /// The batch being written, from `prepare_batch` to `commit` or `abort`.
    batch: Option<Arc<Mutex<Batch>>>,
    warnings: Vec<String>,
}

impl Mbox {
    /// `now` dates the `From ` lines; `lock_timeout` bounds the wait for
    /// another program's lock.
    pub fn new(path: PathBuf, now: DateTime<Utc>, lock_timeout: Duration) -> Mbox {
        Mbox {
            path,
            now,
            lock_timeout,
            journal: None,
            batch: None,
            warnings: Vec::new(),
        }
    }

    /// Keep the journal that crash recovery needs in `state_dir`, one per
    /// account and mbox (two accounts may share an mbox).
    pub fn journal_in(mut self, state_dir: &Path, account: &str) -> Mbox {
        self.journal = Some(journal::journal_path(state_dir, account, &self.path));
        self
    }

    fn lost(&self) -> DeliveryError {
        DeliveryError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(
                "no batch is being written (none prepared, or it failed)",
            ),
        }
    }
}

impl Drop for Mbox {
    fn drop(&mut self) {
        // A batch never committed (an error, the server went away): cut off
        // everything it appended.
        self.abort();
    }
}

impl Target for Mbox {
    fn delivery(&self) -> crate::config::Delivery {
        crate::config::Delivery::Mbox(self.path.clone())
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        if self.batch.is_none() {
            let lock = MboxLock::acquire(&self.path, self.lock_timeout, &mut self.warnings)?;
            let meta = lock
                .file()
                .metadata()
                .map_err(|source| DeliveryError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            let id = batch_id();
            let header = Header {
                id,
                dev: meta.dev(),
                ino: meta.ino(),
                start: meta.len(),
            };
            let journal = match &self.journal {
                Some(path) => Some(JournalWriter::create(path, header).map_err(|source| {
                    DeliveryError::Write {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
            self.batch = Some(Arc::new(Mutex::new(Batch::new(
                lock,
                self.path.clone(),
                id,
                journal,
                header.start,
            ))));
        }
        let Some(batch) = self.batch.as_ref() else {
            return Err(self.lost());
        };
        let mut b = lock_batch(batch, &self.path)?;
        let first = b.next_index;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        b.next_index = first.saturating_add(n);
        // Every row records where the batch began, as rows always did, and
        // names the batch and the message, which recovery finds in the
        // journal.
        Ok((first..first.saturating_add(n))
            .map(|i| Prepared {
                location: journal::location(&self.path, b.id, i),
                offset: Some(b.start),
            })
            .collect())
    }

    fn start(
        &mut self,
        prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        let Some(batch) = self.batch.as_ref() else {
            return Err(self.lost());
        };
        let mut b = lock_batch(batch, &self.path)?;
        // The journal must name the message as the pending row does.
        let index = match journal::parse_location(&prepared.location) {
            Some((id, index)) if id == b.id && index < b.next_index => index,
            _ => {
                return Err(DeliveryError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::other("a delivery that was not prepared in this batch"),
                });
            }
        };
        let offset = b.begin(index)?;
        drop(b);
        Ok(Box::new(MboxSink::new(
            Arc::clone(batch),
            index,
            self.path.clone(),
            offset,
            self.now,
            info.received.map(str::to_owned),
        )))
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        let mut locations = Vec::with_capacity(batch.len());
        for f in batch {
            match f.kind {
                FinishedKind::Mbox(location) => locations.push(location),
                _ => {
                    return Err(DeliveryError::Write {
                        path: self.path.clone(),
                        source: std::io::Error::other(
                            "a message of another target in an mbox batch",
                        ),
                    });
                }
            }
        }
        let Some(batch) = self.batch.take() else {
            return Ok(locations);
        };
        let mut b = lock_batch(&batch, &self.path)?;
        let done = b.commit();
        if done.is_err() {
            b.abort();
        } else {
            // Committed: release both locks for mutt and procmail.
            b.release();
        }
        self.warnings.append(&mut b.warnings);
        done.map(|()| locations)
    }

    fn abort(&mut self) {
        if let Some(batch) = self.batch.take()
            && let Ok(mut b) = batch.lock()
        {
            b.abort();
            self.warnings.append(&mut b.warnings);
        }
    }

    /// Finish or undo a batch that a killed run left (see `recovery`): a
    /// message proven whole is synced and reported delivered; the rest of
    /// the batch is cut off only when nothing else follows it.
    fn recover(
        &mut self,
        pending: &Prepared,
        _started: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        let Some(offset) = pending.offset else {
            return Ok(None);
        };
        let lock = MboxLock::acquire(&self.path, self.lock_timeout, &mut self.warnings)?;
        let outcome = recovery::recover(
            &lock,
            &self.path,
            self.journal.as_deref(),
            pending,
            offset,
            &mut self.warnings,
        );
        if let Some(w) = lock.release() {
            self.warnings.push(w);
        }
        outcome
    }

    fn take_warnings(&mut self) -> Vec<String> {
        if let Some(batch) = self.batch.as_ref()
            && let Ok(mut b) = batch.lock()
        {
            self.warnings.append(&mut b.warnings);
        }
        std::mem::take(&mut self.warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::SystemTime;

    fn info() -> MessageInfo<'static> {
        MessageInfo {
            server_size: 0,
            received: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap()
    }

    /// An mbox target with its journal in `dir`/state.
    fn mbox_in(dir: &Path, path: &Path) -> Mbox {
        Mbox::new(path.to_owned(), now(), Duration::from_secs(1))
            .journal_in(&dir.join("state"), "acct")
    }

    fn deliver(mbox: &mut Mbox, msg: &[u8]) -> Result<Vec<String>, DeliveryError> {
        let p = mbox.prepare_batch(1)?.remove(0);
        let mut sink = mbox.start(&p, &info())?;
        for chunk in msg.chunks(7) {
            sink.write(chunk)?;
        }
        let f = sink.finish()?;
        mbox.commit(vec![f])
    }

    #[test]
    fn messages_get_separator_sender_date_and_blank_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = mbox_in(dir.path(), &path);
        deliver(&mut m, b"Return-Path: <a@b>\nSubject: 1\n\nFrom here\n").unwrap();
        deliver(&mut m, b"Subject: 2\n\nno newline").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "From a@b Mon Nov  2 03:04:05 2026\nReturn-Path: <a@b>\nSubject: 1\n\n>From here\n\n\
             From MAILER-DAEMON Mon Nov  2 03:04:05 2026\nSubject: 2\n\nno newline\n\n"
        );
        assert!(!dir.path().join("box.lock").exists());
    }

    #[test]
    fn an_uncommitted_message_is_cut_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = mbox_in(dir.path(), &path);
        deliver(&mut m, b"Subject: 1\n\nbody\n").unwrap();
        let before = std::fs::read(&path).unwrap();
        let p = m.prepare_batch(1).unwrap().remove(0);
        let mut sink = m.start(&p, &info()).unwrap();
        sink.write(&vec![b'x'; 300_000]).unwrap();
        assert!(std::fs::read(&path).unwrap().len() > before.len());
        drop(sink);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn an_aborted_batch_is_cut_back_whole_and_a_committed_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = mbox_in(dir.path(), &path);
        deliver(&mut m, b"Subject: kept\n\nbody\n").unwrap();
        let before = std::fs::read(&path).unwrap();
        let batch = m.prepare_batch(2).unwrap();
        assert_eq!(batch[0].offset, Some(before.len() as u64));
        assert_eq!(batch[0].offset, batch[1].offset);
        for p in &batch {
            let mut sink = m.start(p, &info()).unwrap();
            sink.write(&vec![b'y'; 100_000]).unwrap();
            let _finished = sink.finish().unwrap();
        }
        assert!(
            dir.path().join("box.lock").exists(),
            "the lock is held across the batch"
        );
        drop(m);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!dir.path().join("box.lock").exists());
    }

    /// Another open file description trying a read lock, as another process
    /// would: OFD locks conflict within one process too.
    fn lockable(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        // SAFETY: an all-zero flock is valid; whole file.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        // SAFETY: a valid flock pointer and an open fd.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0 }
    }

    #[test]
    fn the_fcntl_lock_holds_from_prepare_to_commit_across_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = mbox_in(dir.path(), &path);
        let batch = m.prepare_batch(3).unwrap();
        let mut finished = Vec::new();
        for p in &batch {
            assert!(!lockable(&path), "locked before message {}", p.location);
            let mut sink = m.start(p, &info()).unwrap();
            sink.write(b"Subject: s\n\nbody\n").unwrap();
            finished.push(sink.finish().unwrap());
            assert!(!lockable(&path), "locked after message {}", p.location);
        }
        assert!(!lockable(&path));
        m.commit(finished).unwrap();
        assert!(lockable(&path), "released at commit");
    }

    /// Everything a kill can leave of a batch: write it (not committed),
    /// keep its bytes and journal, undo it; then put back the file as the
    /// kill left it (cut at `cut`, perhaps followed by `foreign`) and
    /// recover every pending row. Returns the file after recovery, the
    /// rows' outcomes and the warnings.
    struct Killed {
        dir: tempfile::TempDir,
        path: PathBuf,
        before: Vec<u8>,
        written: Vec<u8>,
        journal: Vec<u8>,
        journal_path: PathBuf,
        prepared: Vec<Prepared>,
        /// Where each message begins and ends in `written`.
        spans: Vec<(usize, usize)>,
    }

    impl Killed {
        fn new(messages: &[Vec<u8>]) -> Killed {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("box");
            let before = b"From old Sun Nov  1 00:00:00 2026\nSubject: old\n\nold\n\n".to_vec();
            std::fs::write(&path, &before).unwrap();
            let mut m = mbox_in(dir.path(), &path);
            let prepared = m.prepare_batch(messages.len()).unwrap();
            let mut starts = Vec::new();
            for (p, msg) in prepared.iter().zip(messages) {
                let mut sink = m.start(p, &info()).unwrap();
                sink.write(msg).unwrap();
                let f = sink.finish().unwrap();
                let FinishedKind::Mbox(location) = &f.kind else {
                    panic!("not an mbox delivery")
                };
                let at: usize = location.rsplit_once('@').unwrap().1.parse().unwrap();
                starts.push(at - before.len());
            }
            // Everything out to the file, as a commit would, but not
            // committed.
            {
                let batch = m.batch.as_ref().unwrap();
                let mut b = lock_batch(batch, &path).unwrap();
                let all = b.buf.len();
                b.write_out(all).unwrap();
            }
            let written = std::fs::read(&path).unwrap()[before.len()..].to_vec();
            let journal_path = m.journal.clone().unwrap();
            let journal = std::fs::read(&journal_path).unwrap();
            drop(m);
            let spans = starts
                .iter()
                .enumerate()
                .map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(written.len())))
                .collect();
            Killed {
                path,
                before,
                written,
                journal,
                journal_path,
                prepared,
                spans,
                dir,
            }
        }

        /// The file as a kill after `cut` bytes of the batch left it, then
        /// `foreign` appended; recovery of every row (in reverse order, to
        /// show the order does not matter).
        fn recover(
            &self,
            cut: usize,
            foreign: &[u8],
        ) -> (Vec<u8>, Vec<Option<String>>, Vec<String>) {
            // Same inode: rewrite in place.
            let mut f = File::options().write(true).open(&self.path).unwrap();
            f.set_len(0).unwrap();
            f.write_all(&self.before).unwrap();
            f.write_all(&self.written[..cut]).unwrap();
            f.write_all(foreign).unwrap();
            drop(f);
            std::fs::write(&self.journal_path, &self.journal).unwrap();
            let mut outcomes = vec![None; self.prepared.len()];
            let mut warnings = Vec::new();
            for (i, p) in self.prepared.iter().enumerate().rev() {
                let mut m = mbox_in(self.dir.path(), &self.path);
                outcomes[i] = m.recover(p, now()).unwrap();
                warnings.extend(m.take_warnings());
            }
            (std::fs::read(&self.path).unwrap(), outcomes, warnings)
        }
    }

    fn message(i: usize, size: usize) -> Vec<u8> {
        let mut m = format!("Subject: {i}\n\nFrom the body\n").into_bytes();
        while m.len() < size {
            m.extend_from_slice(format!("line {i} {}\n", m.len()).as_bytes());
        }
        m
    }

    #[test]
    fn recovery_after_a_kill_at_any_piece_keeps_whole_messages_and_cuts_the_torn_one() {
        let k = Killed::new(&[message(1, 300), message(2, 9000), message(3, 5000)]);
        let base = k.before.len();
        // Every place a kill can cut a write: piece ends (4 KiB boundaries
        // of the file, message starts), and both ends.
        let mut cuts: Vec<usize> = (0..=k.written.len())
            .filter(|&c| (base + c).is_multiple_of(4096))
            .collect();
        cuts.extend(k.spans.iter().map(|s| s.0));
        cuts.extend([0, k.written.len()]);
        for cut in cuts {
            let (file, outcomes, warnings) = k.recover(cut, b"");
            let whole: Vec<_> = k.spans.iter().filter(|s| s.1 <= cut).collect();
            let keep = whole.last().map_or(0, |s| s.1);
            assert_eq!(file.len(), base + keep, "cut {cut}");
            assert_eq!(file[..], [&k.before[..], &k.written[..keep]].concat()[..]);
            for (i, o) in outcomes.iter().enumerate() {
                assert_eq!(
                    o.is_some(),
                    k.spans[i].1 <= cut,
                    "cut {cut}, message {i}: {o:?}"
                );
            }
            assert!(warnings.is_empty(), "cut {cut}: {warnings:?}");
        }
    }

    #[test]
    fn recovery_leaves_another_programs_mail_after_a_torn_write_and_says_so() {
        let k = Killed::new(&[message(1, 300), message(2, 9000)]);
        let base = k.before.len();
        // The other program's separator is dated in the very second of ours.
        let foreign = b"\nFrom MAILER-DAEMON Mon Nov  2 03:04:05 2026\nSubject: local\n\nmine\n\n";
        let cut = 4096 - base + 4096;
        let (file, outcomes, warnings) = k.recover(cut, foreign);
        let want = [&k.before[..], &k.written[..cut], &foreign[..]].concat();
        assert_eq!(file, want, "the file must be left as it is");
        assert!(outcomes[0].is_some(), "message 1 is whole: delivered");
        assert!(outcomes[1].is_none(), "message 2 is fetched again");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&k.path.display().to_string()));
    }

    #[test]
    fn recovery_keeps_mail_appended_after_a_whole_batch() {
        let k = Killed::new(&[message(1, 300), message(2, 600)]);
        let foreign = b"From x Mon Nov  2 03:04:05 2026\nSubject: local\n\nmine\n\n";
        let (file, outcomes, warnings) = k.recover(k.written.len(), foreign);
        assert_eq!(file, [&k.before[..], &k.written[..], &foreign[..]].concat());
        assert!(outcomes.iter().all(Option::is_some), "{outcomes:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn recovery_without_a_journal_leaves_the_file_and_warns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let bytes = b"From x Mon Nov  2 03:04:05 2026\nSubject: a\n\nb\n\nFrom y Mon Nov  2 03:04:05 2026\nS: t\n\nto";
        std::fs::write(&path, bytes).unwrap();
        let mut m = mbox_in(dir.path(), &path);
        let pending = Prepared {
            location: path.display().to_string(),
            offset: Some(40),
        };
        assert_eq!(m.recover(&pending, now()).unwrap(), None);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(m.take_warnings().len(), 1);
    }

    #[test]
    fn a_held_dotlock_makes_delivery_wait_then_fail_and_a_stale_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let lock = dir.path().join("box.lock");
        std::fs::write(&lock, "1").unwrap();
        let mut m = Mbox::new(path.clone(), now(), Duration::from_millis(300));
        let e = deliver(&mut m, b"S: 1\n\nb\n").unwrap_err();
        assert!(matches!(e, DeliveryError::Locked { .. }), "{e}");
        let old = SystemTime::now() - Duration::from_secs(600);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        deliver(&mut m, b"S: 1\n\nb\n").unwrap();
        assert_eq!(m.take_warnings().len(), 1);
    }
}
