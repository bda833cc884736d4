//! Maildir delivery (https://cr.yp.to/proto/maildir.html) with the fsync order
//! that survives power loss: write tmp/NAME, fsync it, link it to new/NAME,S=SIZE,
//! fsync new/, then remove tmp/NAME.
//!
//! Names are `<secs>.M<usec>P<pid>Q<n>.<host>`: unique across concurrent runs
//! (pid), across hosts (host) and within a run (n). The name without `,S=` is
//! what the store's pending row records; recovery looks for it in new/ and cur/.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{DeliveryError, MessageInfo, Prepared, Sink, Target};

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
    fn describe(&self) -> String {
        format!("maildir:{}", self.root.display())
    }

    fn prepare(&mut self) -> Result<Prepared, DeliveryError> {
        self.ensure_dirs()?;
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
        Ok(Prepared {
            location: name,
            offset: None,
        })
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
            root: self.root.clone(),
            name: prepared.location.clone(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
            written: 0,
        };
        if let Some(h) = info.received {
            sink.write(h.as_bytes())?;
        }
        Ok(Box::new(sink))
    }

    fn recover(&mut self, pending: &Prepared) -> Result<Option<String>, DeliveryError> {
        let prefix = &pending.location;
        for sub in ["new", "cur"] {
            if let Some(found) = find_with_prefix(&self.root.join(sub), prefix) {
                return Ok(Some(found.display().to_string()));
            }
        }
        // Not delivered: a partial tmp file may remain; remove it so it cannot
        // be mistaken for mail.
        let tmp = self.root.join("tmp").join(prefix);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DeliveryError::Write { path: tmp, source }),
        }
        Ok(None)
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
    root: PathBuf,
    name: String,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    written: u64,
}

impl Sink for MaildirSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(data).map_err(|source| DeliveryError::Write {
                path: self.tmp.clone(),
                source,
            })?;
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(String, u64), DeliveryError> {
        let Some(buffered) = self.file.take() else {
            return Err(DeliveryError::Write {
                path: self.tmp.clone(),
                source: std::io::Error::other("delivery already finished"),
            });
        };
        let file = buffered.into_inner().map_err(|e| DeliveryError::Write {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| DeliveryError::Sync {
            path: self.tmp.clone(),
            source,
        })?;
        drop(file);
        let final_name = format!("{},S={}", self.name, self.written);
        let new_dir = self.root.join("new");
        let dest = new_dir.join(&final_name);
        // link() refuses to replace an existing file, unlike rename(): a name
        // collision can never overwrite mail.
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
        sync_dir(&new_dir)?;
        Ok((dest.display().to_string(), self.written))
    }
}

impl Drop for MaildirSink {
    fn drop(&mut self) {
        // Not committed: remove the partial file from tmp/.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// fsync a directory so a new entry in it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DeliveryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| DeliveryError::Sync {
            path: dir.to_owned(),
            source,
        })
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

    #[test]
    fn delivers_into_new_with_size_in_name_and_nothing_left_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().join("Mail"));
        let p = md.prepare().unwrap();
        let mut sink = md.start(&p, &info()).unwrap();
        sink.write(b"Subject: x\n\nbody\n").unwrap();
        let (loc, size) = sink.commit().unwrap();
        assert_eq!(size, 17);
        assert!(loc.ends_with(",S=17"), "{loc}");
        assert_eq!(std::fs::read(&loc).unwrap(), b"Subject: x\n\nbody\n");
        assert_eq!(
            std::fs::read_dir(dir.path().join("Mail/tmp"))
                .unwrap()
                .count(),
            0
        );
        assert!(dir.path().join("Mail/cur").is_dir());
    }

    #[test]
    fn names_are_unique_within_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let a = md.prepare().unwrap();
        let b = md.prepare().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn dropped_sink_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare().unwrap();
        let mut sink = md.start(&p, &info()).unwrap();
        sink.write(b"partial").unwrap();
        drop(sink);
        for sub in ["tmp", "new", "cur"] {
            assert_eq!(
                std::fs::read_dir(dir.path().join(sub)).unwrap().count(),
                0,
                "{sub}"
            );
        }
    }

    #[test]
    fn recover_finds_delivered_file_even_after_a_reader_moved_it_to_cur() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare().unwrap();
        let sink = md.start(&p, &info()).unwrap();
        let (loc, _) = sink.commit().unwrap();
        let moved = dir.path().join("cur").join(format!(
            "{}:2,S",
            Path::new(&loc).file_name().unwrap().to_str().unwrap()
        ));
        std::fs::rename(&loc, &moved).unwrap();
        assert_eq!(md.recover(&p).unwrap(), Some(moved.display().to_string()));
    }

    #[test]
    fn recover_removes_a_partial_tmp_file_and_reports_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Maildir::new(dir.path().to_owned());
        let p = md.prepare().unwrap();
        let mut sink = md.start(&p, &info()).unwrap();
        sink.write(b"half a mess").unwrap();
        // Simulate a crash: the process dies without Drop running.
        std::mem::forget(sink);
        assert_eq!(md.recover(&p).unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn host_part_escapes_slash_and_colon() {
        assert_eq!(maildir_host("a/b:c"), "a\\057b\\072c");
    }
}
