//! Maildir delivery (https://cr.yp.to/proto/maildir.html) with the sync order
//! that survives power loss: write tmp/NAME, sync its data, link it to
//! new/NAME,S=SIZE, sync new/, then remove tmp/NAME. A batch of messages is
//! synced with one syncfs() and one directory sync instead of two syncs each.
//!
//! Names are `<secs>.M<usec>P<pid>Q<n>.<host>`: unique across concurrent runs
//! (pid), across hosts (host) and within a run (n). The name without `,S=` is
//! what the store's pending row records; recovery looks for it in new/ and cur/.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::os::fd::AsRawFd;

use super::{DeliveryError, Finished, FinishedKind, MessageInfo, Prepared, Sink, Target};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A Maildir directory (with tmp/, new/, cur/ created on first use).
pub struct Maildir {
    root: PathBuf,
    host: String,
    ready: bool,
}

impl Maildir {
    pub fn new(root: PathBuf) -> Maildir {
        Maildir {
            root,
            host: maildir_host(&super::local_hostname()),
            ready: false,
        }
    }

    /// `<secs>.M<usec>P<pid>Q<n>.<host>`: unique across processes (pid),
    /// hosts (host) and within this process (n).
    fn unique_name(&self) -> Prepared {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1,
            self.host
        );
        Prepared {
            location: name,
            offset: None,
        }
    }

    fn ensure_dirs(&mut self) -> Result<(), DeliveryError> {
        if self.ready {
            return Ok(());
        }
        for sub in ["tmp", "new", "cur"] {
            let dir = self.root.join(sub);
            if !dir.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|source| DeliveryError::CreateDir { path: dir, source })?;
            }
        }
        self.ready = true;
        Ok(())
    }
}

/// The host part of a Maildir name: '/' and ':' are not allowed there.
fn maildir_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

impl Target for Maildir {
    fn delivery(&self) -> crate::config::Delivery {
        crate::config::Delivery::Maildir(self.root.clone())
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        self.ensure_dirs()?;
        Ok((0..n).map(|_| self.unique_name()).collect())
    }

    fn start(
        &mut self,
        prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        self.ensure_dirs()?;
        let tmp = self.root.join("tmp").join(&prepared.location);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| DeliveryError::Write {
                path: tmp.clone(),
                source,
            })?;
        let mut sink = MaildirSink {
            written: Some(Written {
                tmp,
                name: prepared.location.clone(),
                file: None,
                size: 0,
                linked: false,
            }),
            out: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
            unflushed: 0,
        };
        if let Some(h) = info.received {
            sink.write(h.as_bytes())?;
        }
        Ok(Box::new(sink))
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        let mut written = Vec::with_capacity(batch.len());
        for f in batch {
            match f.kind {
                FinishedKind::Maildir(w) => written.push(w),
                _ => {
                    return Err(DeliveryError::Write {
                        path: self.root.clone(),
                        source: std::io::Error::other(
                            "a message of another target in a Maildir batch",
                        ),
                    });
                }
            }
        }
        // The data first: one syncfs() for a batch, fdatasync for one file.
        let tmp_dir = self.root.join("tmp");
        if written.len() > 1 {
            sync_filesystem(&tmp_dir)?;
        } else {
            for w in &written {
                if let Some(file) = &w.file {
                    file.sync_data().map_err(|source| DeliveryError::Sync {
                        path: w.tmp.clone(),
                        source,
                    })?;
                }
            }
        }
        let new_dir = self.root.join("new");
        let mut locations = Vec::with_capacity(written.len());
        for w in &mut written {
            locations.push(w.link_into(&new_dir)?);
        }
        // Then the names, all at once.
        sync_dir(&new_dir)?;
        Ok(locations)
    }

    fn recover(
        &mut self,
        pending: &Prepared,
        _started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        let prefix = &pending.location;
        let found = ["new", "cur"]
            .iter()
            .find_map(|sub| find_with_prefix(&self.root.join(sub), prefix));
        // Either way the tmp/ name goes: a partial file must not be mistaken
        // for mail, and a kill between link() and unlink() leaves a second
        // name of a delivered one.
        let tmp = self.root.join("tmp").join(prefix);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DeliveryError::Write { path: tmp, source }),
        }
        let Some(found) = found else {
            return Ok(None);
        };
        // The run may have been killed after the link into new/ and before
        // new/ was synced: make the file and its name durable before the
        // caller records it as delivered (and may DELE it).
        File::open(&found)
            .and_then(|f| f.sync_all())
            .map_err(|source| DeliveryError::Sync {
                path: found.clone(),
                source,
            })?;
        if let Some(dir) = found.parent() {
            sync_dir(dir)?;
        }
        Ok(Some(found.display().to_string()))
    }
}

/// Flush every dirty page of the filesystem holding `dir`: one call for a
/// whole batch of new files.
fn sync_filesystem(dir: &Path) -> Result<(), DeliveryError> {
    let d = File::open(dir).map_err(|source| DeliveryError::Sync {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: syncfs takes any open descriptor; `d` lives across the call.
    let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(DeliveryError::Sync {
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// A file in `dir` named `prefix` followed by `,S=…`, `:2,…` or nothing.
fn find_with_prefix(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rest) = name.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with(',') || rest.starts_with(':'))
        {
            return Some(entry.path());
        }
    }
    None
}

struct MaildirSink {
    written: Option<Written>,
    out: Option<std::io::BufWriter<File>>,
    /// Octets written since writeback was last started (`start_writeback`).
    unflushed: u64,
}

/// A message (or the part of one) at least this large has its writeback
/// started as soon as it is written, so the batch's sync at commit finds
/// most of it on disk already instead of writing it all while the network
/// waits. Smaller messages are left to the one sync of their batch.
const EARLY_WRITEBACK: u64 = 1 << 20;

/// Ask the kernel to start writing `file`'s dirty pages now, without
/// waiting. Only a head start: durability still comes from the sync at
/// commit, so a failure here changes nothing.
fn start_writeback(file: &File) {
    // SAFETY: sync_file_range takes any open descriptor; `file` lives
    // across the call; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A message complete in tmp/, waiting for its batch's commit. Dropped
/// before it is linked into new/, it removes its tmp file.
pub(crate) struct Written {
    tmp: PathBuf,
    name: String,
    file: Option<File>,
    size: u64,
    linked: bool,
}

impl Written {
    /// Link tmp/NAME to new/NAME,S=SIZE and remove tmp/NAME. link() refuses
    /// to replace an existing file, unlike rename(): a name collision can
    /// never overwrite mail.
    fn link_into(&mut self, new_dir: &Path) -> Result<String, DeliveryError> {
        let dest = new_dir.join(format!("{},S={}", self.name, self.size));
        match std::fs::hard_link(&self.tmp, &dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.tmp);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DeliveryError::Rename {
                    path: dest,
                    source: e,
                });
            }
            // Filesystems without hard links: rename, after checking the name is free.
            Err(_) if !dest.exists() => {
                std::fs::rename(&self.tmp, &dest).map_err(|source| DeliveryError::Rename {
                    path: dest.clone(),
                    source,
                })?;
            }
            Err(source) => return Err(DeliveryError::Rename { path: dest, source }),
        }
        self.linked = true;
        self.file = None;
        Ok(dest.display().to_string())
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if !self.linked {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Sink for MaildirSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        if let (Some(out), Some(w)) = (self.out.as_mut(), self.written.as_mut()) {
            out.write_all(data).map_err(|source| DeliveryError::Write {
                path: w.tmp.clone(),
                source,
            })?;
            w.size += data.len() as u64;
            self.unflushed += data.len() as u64;
            if self.unflushed >= 8 * EARLY_WRITEBACK {
                start_writeback(out.get_ref());
                self.unflushed = 0;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, DeliveryError> {
        let (Some(out), Some(mut written)) = (self.out.take(), self.written.take()) else {
            return Err(DeliveryError::Write {
                path: PathBuf::new(),
                source: std::io::Error::other("delivery already finished"),
            });
        };
        let file = out.into_inner().map_err(|e| DeliveryError::Write {
            path: written.tmp.clone(),
            source: e.into_error(),
        })?;
        if self.unflushed >= EARLY_WRITEBACK {
            start_writeback(&file);
        }
        written.file = Some(file);
        let size = written.size;
        Ok(Finished {
            kind: FinishedKind::Maildir(written),
            size,
        })
    }
}

/// fsync a directory so a new entry in it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DeliveryError> {
    #[cfg(test)]
    SYNCED_DIRS.with(|d| d.borrow_mut().push(dir.to_owned()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| DeliveryError::Sync {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
thread_local! {
    /// The directories `sync_dir` synced on this thread, for tests of what
    /// is made durable when (an fsync cannot be seen from outside).
    static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> MessageInfo<'static> {
        MessageInfo {
            server_size: 0,
            received: None,
        }
    }

    fn write(md: &mut Maildir, p: &Prepared, body: &[u8]) -> Finished {
        let mut sink = md.start(p, &info()).unwrap();
        sink.write(body).unwrap();
        sink.finish().unwrap()
    }

    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_committed_batch_is_in_new_with_sizes_in_names_and_nothing_left_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().join("Mail"));
        let names = md.prepare_batch(3).unwrap();
        let bodies: [&[u8]; 3] = [b"Subject: x\n\nbody\n", b"a\n", b""];
        let finished: Vec<_> = names
            .iter()
            .zip(bodies)
            .map(|(p, b)| write(&mut md, p, b))
            .collect();
        // Nothing is in new/ before the commit.
        assert_eq!(count(&dir.path().join("Mail/new")), 0);
        let locations = md.commit(finished).unwrap();
        for (loc, body) in locations.iter().zip(bodies) {
            assert!(loc.ends_with(&format!(",S={}", body.len())), "{loc}");
            assert_eq!(std::fs::read(loc).unwrap(), body);
        }
        assert_eq!(count(&dir.path().join("Mail/tmp")), 0);
        assert!(dir.path().join("Mail/cur").is_dir());
    }

    #[test]
    fn names_are_unique_within_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let names = md.prepare_batch(100).unwrap();
        let unique: std::collections::HashSet<_> = names.iter().map(|p| &p.location).collect();
        assert_eq!(unique.len(), 100);
    }

    #[test]
    fn an_uncommitted_message_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare_batch(2).unwrap();
        let finished = write(&mut md, &p[0], b"whole");
        let mut partial = md.start(&p[1], &info()).unwrap();
        partial.write(b"partial").unwrap();
        drop(partial);
        drop(finished);
        for sub in ["tmp", "new", "cur"] {
            assert_eq!(count(&dir.path().join(sub)), 0, "{sub}");
        }
    }

    #[test]
    fn recover_finds_delivered_file_even_after_a_reader_moved_it_to_cur() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare_batch(1).unwrap().remove(0);
        let f = write(&mut md, &p, b"x");
        let loc = md.commit(vec![f]).unwrap().remove(0);
        let moved = dir.path().join("cur").join(format!(
            "{}:2,S",
            Path::new(&loc).file_name().unwrap().to_str().unwrap()
        ));
        std::fs::rename(&loc, &moved).unwrap();
        assert_eq!(
            md.recover(&p, chrono::Utc::now()).unwrap(),
            Some(moved.display().to_string())
        );
    }

    /// Issue 14 item 5: a run killed after linking into new/ and before
    /// syncing new/ leaves a name that a power cut can still take away.
    /// Recovery reports the message delivered (the caller then records it
    /// and may DELE it) only after syncing the directory that holds it.
    #[test]
    fn recover_syncs_the_directory_of_the_file_it_reports_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare_batch(1).unwrap().remove(0);
        // As a killed run leaves it: linked into new/, tmp/ name still there,
        // new/ not synced.
        let tmp = dir.path().join("tmp").join(&p.location);
        std::fs::write(&tmp, b"whole message\n").unwrap();
        let linked = dir.path().join("new").join(format!("{},S=14", p.location));
        std::fs::hard_link(&tmp, &linked).unwrap();
        SYNCED_DIRS.with(|d| d.borrow_mut().clear());

        let found = md.recover(&p, chrono::Utc::now()).unwrap();
        assert_eq!(found, Some(linked.display().to_string()));
        let synced = SYNCED_DIRS.with(|d| d.borrow().clone());
        assert!(
            synced.contains(&dir.path().join("new")),
            "new/ was not synced before reporting the message delivered: {synced:?}"
        );
        assert_eq!(count(&dir.path().join("tmp")), 0);
    }

    #[test]
    fn recover_removes_a_partial_tmp_file_and_reports_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare_batch(1).unwrap().remove(0);
        let mut sink = md.start(&p, &info()).unwrap();
        sink.write(b"half a mess").unwrap();
        // Simulate a crash: the process dies without Drop running.
        std::mem::forget(sink);
        assert_eq!(md.recover(&p, chrono::Utc::now()).unwrap(), None);
        assert_eq!(count(&dir.path().join("tmp")), 0);
    }

    #[test]
    fn host_part_escapes_slash_and_colon() {
        assert_eq!(maildir_host("a/b:c"), "a\\057b\\072c");
    }
}
