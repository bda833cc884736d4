//! Locking an mbox the way procmail, mutt and the MTA's delivery agent
//! expect, for as long as popsync writes to it.
//!
//! Two locks, both on the file a symlinked mbox points to (`~/mbox ->
//! /var/mail/u` locks `/var/mail/u.lock`, the name the other programs use):
//!
//! - a `PATH.lock` dotfile, created with O_EXCL. Another program takes one
//!   older than 300 s for stale (left by a killed process) and removes it, so
//!   while popsync holds it a thread keeps its mtime fresh. Releasing removes
//!   it only while it is still the file popsync created (same inode): one
//!   that another program put there in the meantime stays.
//! - an fcntl write lock on the whole file. On Linux it is an open file
//!   description (OFD) lock: it conflicts with the classic POSIX locks other
//!   programs take, and unlike those it is not dropped when some other
//!   descriptor of the file in this process is closed. Elsewhere (or on a
//!   kernel without OFD locks) it is a classic lock, on the one descriptor
//!   that popsync keeps open for the whole batch and never duplicates.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::deliver::DeliveryError;

/// A dotlock older than this was left by a killed process (DESIGN.md).
pub(super) const STALE_DOTLOCK: Duration = Duration::from_secs(300);

/// A held dotlock is touched once its mtime is this old: far from stale.
const REFRESH_AFTER: Duration = Duration::from_secs(60);

/// How often the refreshing thread looks at the dotlock's mtime.
const REFRESH_CHECK: Duration = Duration::from_secs(1);

/// Pause between two tries for a lock another program holds.
const RETRY: Duration = Duration::from_millis(100);

/// Longest chain of symlinks followed to the real mbox.
const MAX_SYMLINKS: usize = 40;

/// The mbox open for reading and appending, with both locks held until
/// `release` (or drop).
pub(super) struct MboxLock {
    file: File,
    resolved: PathBuf,
    created: bool,
    dotlock: Dotlock,
}

impl MboxLock {
    /// Take both locks on the mbox `configured` names, waiting up to
    /// `timeout` for another program to release them. Creates the mbox (and
    /// its directory) when missing. Stale dotlocks removed on the way are
    /// reported in `warnings`.
    pub(super) fn acquire(
        configured: &Path,
        timeout: Duration,
        warnings: &mut Vec<String>,
    ) -> Result<MboxLock, DeliveryError> {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DeliveryError::Write { path, source }
        };
        let resolved = resolve(configured).map_err(write_err(configured))?;
        if let Some(dir) = resolved.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            std::fs::create_dir_all(dir).map_err(|source| DeliveryError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let deadline = Instant::now() + timeout;
        let dotlock_path = dotlock_of(&resolved);
        let dotlock = match Dotlock::acquire(&dotlock_path, deadline, warnings) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(DeliveryError::Locked {
                    path: configured.to_owned(),
                    holder: dotlock_path.display().to_string(),
                });
            }
            Err(e) => return Err(write_err(&dotlock_path)(e)),
        };
        // From here on `dotlock` is ours; dropping it (on any error below)
        // removes it.
        let created = std::fs::symlink_metadata(&resolved).is_err();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&resolved)
            .map_err(write_err(&resolved))?;
        loop {
            match try_write_lock(&file) {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => std::thread::sleep(RETRY),
                Ok(false) => {
                    return Err(DeliveryError::Locked {
                        path: configured.to_owned(),
                        holder: "an fcntl lock".into(),
                    });
                }
                Err(e) => return Err(write_err(&resolved)(e)),
            }
        }
        Ok(MboxLock {
            file,
            resolved,
            created,
            dotlock,
        })
    }

    /// The locked mbox. Never duplicate or close it early: that is what
    /// used to drop the lock.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// The file the mbox path leads to (symlinks followed).
    pub(super) fn resolved(&self) -> &Path {
        &self.resolved
    }

    /// Whether this lock created the mbox file (its directory entry then
    /// needs syncing too).
    pub(super) fn created(&self) -> bool {
        self.created
    }

    /// Release both locks. Returns a warning when the dotlock was no longer
    /// the one popsync created (another program replaced it; it is left).
    pub(super) fn release(mut self) -> Option<String> {
        self.dotlock.release()
        // The fcntl lock goes with the descriptor, right after.
    }
}

/// `path` + ".lock".
fn dotlock_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Follow symlinks from `path` to the file they lead to, which need not
/// exist yet (a link to a mail spool file that the MTA creates on first
/// delivery). Symlinked directories need no resolving: the lock file sits
/// next to the same file either way.
pub(super) fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_owned();
    for _ in 0..MAX_SYMLINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// Take an fcntl write lock on the whole file without waiting; false when
/// another program holds a conflicting one.
fn try_write_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value (l_start 0, l_len 0 = the
    // whole file; l_pid 0, as OFD locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    let busy = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: F_OFD_SETLK with a pointer to a valid flock; the fd is
        // open for the lifetime of `file`.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if busy(&e) {
            return Ok(false);
        }
        // EINVAL: a kernel older than 3.15; fall back to a classic lock.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    // SAFETY: as above, with F_SETLK.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if busy(&e) { Ok(false) } else { Err(e) }
}

/// A `.lock` dotfile that popsync created and holds.
struct Dotlock {
    path: PathBuf,
    /// (device, inode) of the file popsync created: "still ours" means the
    /// path still names it.
    id: (u64, u64),
    refresher: Option<Refresher>,
    released: bool,
}

impl Dotlock {
    /// Create the dotlock, waiting until `deadline` while another program
    /// holds it and removing one that is stale. `Ok(None)`: still held by
    /// someone else at the deadline.
    fn acquire(
        path: &Path,
        deadline: Instant,
        warnings: &mut Vec<String>,
    ) -> std::io::Result<Option<Dotlock>> {
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
            {
                Ok(mut f) => {
                    // The pid, as liblockfile and procmail write it; a
                    // failure to write it does not make the lock less ours.
                    let _ = writeln!(f, "{}", std::process::id());
                    let meta = f.metadata()?;
                    let file = Arc::new(f);
                    return Ok(Some(Dotlock {
                        path: path.to_owned(),
                        id: (meta.dev(), meta.ino()),
                        refresher: Refresher::start(file),
                        released: false,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if remove_if_stale(path, warnings) {
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(RETRY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }

    /// Stop refreshing and remove the dotlock if it is still ours.
    fn release(&mut self) -> Option<String> {
        if self.released {
            return None;
        }
        self.released = true;
        if let Some(mut r) = self.refresher.take() {
            r.stop();
        }
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
            None
        } else {
            Some(format!(
                "lock file {} was replaced or removed by another program while popsync held it; \
                 it was left as it is",
                self.path.display()
            ))
        }
    }
}

impl Drop for Dotlock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Remove the dotlock at `path` if it is older than `STALE_DOTLOCK`, with a
/// warning; true when it was removed (or vanished meanwhile).
fn remove_if_stale(path: &Path, warnings: &mut Vec<String>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        // Gone between our create and this look: try again at once.
        return true;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_none_or(|a| a <= STALE_DOTLOCK) {
        return false;
    }
    // Remove it only if it is still the file judged stale: another program
    // may have removed it and taken a fresh one meanwhile.
    let same = std::fs::symlink_metadata(path)
        .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
    if same && std::fs::remove_file(path).is_ok() {
        warnings.push(format!(
            "removed stale lock file {} (older than {} s, left by a killed process)",
            path.display(),
            STALE_DOTLOCK.as_secs()
        ));
    }
    true
}

/// A thread that keeps a held dotlock's mtime fresh: a long batch (a large
/// message on a slow link) must not look like a lock left by a killed
/// process. It touches the file popsync created through its own descriptor,
/// so it never touches a dotlock that another program put in its place.
struct Refresher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// `None` if no thread can be started: the lock is then only as fresh
    /// as its creation, as it always was before.
    fn start(file: Arc<File>) -> Option<Refresher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("popsync-dotlock".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH_CHECK)
                {
                    let age = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
                    if age.is_some_and(|a| a >= REFRESH_AFTER) {
                        let _ = file.set_modified(SystemTime::now());
                    }
                }
            })
            .ok()?;
        Some(Refresher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        // Dropping the sender wakes the thread at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(path: &Path, timeout: Duration) -> Result<MboxLock, DeliveryError> {
        MboxLock::acquire(path, timeout, &mut Vec::new())
    }

    /// Another open file description trying a lock, as another process
    /// would (OFD locks conflict within one process too).
    fn can_lock(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        // SAFETY: as in try_write_lock.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        // SAFETY: a valid flock pointer and an open fd.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0 }
    }

    #[test]
    fn the_fcntl_lock_survives_closing_another_descriptor_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let lock = acquire(&path, Duration::from_secs(1)).unwrap();
        // What used to release a classic POSIX lock: another descriptor of
        // the same file, in this process, closed.
        drop(lock.file().try_clone().unwrap());
        drop(File::open(&path).unwrap());
        assert!(!can_lock(&path), "the mbox must stay locked");
        assert!(lock.release().is_none());
        assert!(can_lock(&path));
        assert!(!dir.path().join("box.lock").exists());
    }

    #[test]
    fn a_symlinked_mbox_is_locked_under_the_name_of_the_file_it_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let link = dir.path().join("mbox");
        // Dangling until the first delivery creates the spool file.
        std::os::unix::fs::symlink("spool/u", &link).unwrap();
        let lock = acquire(&link, Duration::from_secs(1)).unwrap();
        assert_eq!(lock.resolved(), spool.join("u"));
        assert!(spool.join("u.lock").exists());
        assert!(!dir.path().join("mbox.lock").exists());
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        lock.release();
        assert!(!spool.join("u.lock").exists());
    }

    #[test]
    fn a_dotlock_replaced_by_another_program_is_left_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let dotlock = dir.path().join("box.lock");
        let lock = acquire(&path, Duration::from_secs(1)).unwrap();
        std::fs::remove_file(&dotlock).unwrap();
        std::fs::write(&dotlock, "4242\n").unwrap();
        let warning = lock.release().expect("a warning");
        assert!(
            warning.contains(&dotlock.display().to_string()),
            "{warning}"
        );
        assert_eq!(std::fs::read_to_string(&dotlock).unwrap(), "4242\n");
    }

    #[test]
    fn a_held_dotlock_is_kept_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let dotlock = dir.path().join("box.lock");
        let lock = acquire(&path, Duration::from_secs(1)).unwrap();
        let old = SystemTime::now() - Duration::from_secs(250);
        File::options()
            .write(true)
            .open(&dotlock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::thread::sleep(REFRESH_CHECK * 3);
        let age = SystemTime::now()
            .duration_since(std::fs::metadata(&dotlock).unwrap().modified().unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(10), "dotlock age {age:?}");
        lock.release();
    }
}
