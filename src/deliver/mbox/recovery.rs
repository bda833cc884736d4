//! Finishing or undoing an mbox batch that a killed run left, by its
//! write-ahead journal (`journal`), without ever cutting another program's
//! mail.
//!
//! Recovery checks the journal's pieces against the file from the start and
//! stops at the first that does not match: everything before that point
//! (`verified`) is proven to be popsync's own. A message whose end lies
//! within it is whole: it is synced and recorded as delivered. Of the first
//! message that is not, what is left is cut off only when nothing follows
//! the verified bytes; when anything else does (another program appended
//! after the kill), the file is left as it is and a warning names it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use super::journal::{Journal, parse_location};
use super::lock::MboxLock;
use crate::deliver::{DeliveryError, Prepared};

/// The last verification done in this process: every pending row of a
/// batch is recovered on its own (taking the locks anew), and a batch may
/// hold 256 messages and 32 MB. Reused only while the file is unchanged:
/// same length, and the same change time (which any write moves).
static VERIFIED: Mutex<Option<(VerifyKey, u64)>> = Mutex::new(None);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerifyKey {
    id: u64,
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

/// `journal.verify(file)`, or its result from the last row of the same
/// batch when the file has not changed since.
pub(super) fn verified_end(journal: &Journal, file: &File) -> std::io::Result<u64> {
    let m = file.metadata()?;
    let key = VerifyKey {
        id: journal.header.id,
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        ctime: (m.ctime(), m.ctime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
    };
    if let Ok(cache) = VERIFIED.lock()
        && let Some((k, v)) = *cache
        && k == key
    {
        return Ok(v);
    }
    let v = journal.verify(file)?;
    if let Ok(mut cache) = VERIFIED.lock() {
        *cache = Some((key, v));
    }
    Ok(v)
}

/// What to do with the file after an interrupted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cleanup {
    /// Nothing of an unfinished message is in the file.
    Nothing,
    /// Cut the file back to here: an unfinished message's bytes are the
    /// last in the file.
    TruncateTo(u64),
    /// Other bytes follow an unfinished message (or may: they cannot be
    /// told from its start). Leave the file alone and say so.
    Leave {
        /// The unfinished message: where it begins, and the end of what of
        /// it is proven popsync's.
        message: u64,
        verified: u64,
        /// The length of the file.
        len: u64,
    },
}

/// The verdict on a batch: which messages are whole, and the cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Assessment {
    /// Index → start of each message whose bytes are all there and proven.
    pub complete: BTreeMap<u32, u64>,
    pub cleanup: Cleanup,
}

/// Judge a batch by its journal, how far the file matches it (`verified`)
/// and the file's length now.
pub(super) fn assess(journal: &Journal, verified: u64, len: u64) -> Assessment {
    let mut complete = BTreeMap::new();
    let mut unfinished: Option<u64> = None;
    for (&index, m) in &journal.messages {
        match m.end {
            Some(end) if end <= verified && m.start >= journal.header.start => {
                complete.insert(index, m.start);
            }
            _ => unfinished = Some(unfinished.map_or(m.start, |u| u.min(m.start))),
        }
    }
    let cleanup = match unfinished {
        None => Cleanup::Nothing,
        Some(start) if len == verified => {
            if verified > start {
                Cleanup::TruncateTo(start)
            } else {
                Cleanup::Nothing
            }
        }
        Some(start) => Cleanup::Leave {
            message: start,
            verified: verified.max(start),
            len,
        },
    };
    Assessment { complete, cleanup }
}

/// Recover the delivery of one pending row (`pending`, whose batch began at
/// `offset`) into the mbox `path`, locked by `lock`, by the journal at
/// `journal_path`: `Some(location)` when the message is whole (it is synced
/// first), else `None` (it is fetched again), with the cleanup done.
pub(super) fn recover(
    lock: &MboxLock,
    path: &Path,
    journal_path: Option<&Path>,
    pending: &Prepared,
    offset: u64,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, DeliveryError> {
    let file = lock.file();
    let err = |source| DeliveryError::Write {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(err)?;
    let len = meta.len();
    let tag = parse_location(&pending.location);
    let journal = match (tag, journal_path) {
        (Some((id, _)), Some(path)) => Journal::read(path)
            .map_err(|source| DeliveryError::Write {
                path: path.to_owned(),
                source,
            })?
            .filter(|j| j.header.id == id),
        _ => None,
    };
    let (Some(journal), Some((_, index))) = (journal, tag) else {
        // A row of an older popsync, or its journal is gone: nothing
        // proves whose the bytes after the offset are.
        if len > offset {
            warn_once(
                warnings,
                format!(
                    "{}: an interrupted delivery began at offset {offset}, and what follows it \
                     ({} bytes) cannot be proven to be popsync's; the file was left as it is. \
                     The message is fetched again: if the mbox holds a partial copy of it \
                     there, delete that with a mail reader",
                    path.display(),
                    len - offset
                ),
            );
        }
        return Ok(None);
    };
    if (meta.dev(), meta.ino()) != (journal.header.dev, journal.header.ino) {
        warn_once(
            warnings,
            format!(
                "{} was replaced since an interrupted delivery; it was left as it is, and the \
                 interrupted messages are fetched again (one may appear twice)",
                path.display()
            ),
        );
        return Ok(None);
    }
    let verified = verified_end(&journal, file).map_err(err)?;
    let verdict = assess(&journal, verified, len);
    if let Some(&at) = verdict.complete.get(&index) {
        file.sync_all().map_err(|source| DeliveryError::Sync {
            path: path.to_owned(),
            source,
        })?;
        if let Some(dir) = lock
            .resolved()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| DeliveryError::Sync {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        return Ok(Some(format!("{}@{at}", path.display())));
    }
    match verdict.cleanup {
        Cleanup::Nothing => {}
        Cleanup::TruncateTo(to) => {
            file.set_len(to).map_err(err)?;
            file.sync_all().map_err(|source| DeliveryError::Sync {
                path: path.to_owned(),
                source,
            })?;
        }
        Cleanup::Leave {
            message,
            verified,
            len,
        } => {
            let path = path.display();
            let other = len - verified;
            let text = if verified > message {
                format!(
                    "{path}: a delivery interrupted by a kill left the first {} bytes of a \
                     message at offset {message}, and {other} bytes that popsync did not \
                     write follow them (another program's mail); the file was left as it is, \
                     as cutting the partial message out would move that mail. The message is \
                     fetched again: delete its partial copy at offset {message} with a mail \
                     reader",
                    verified - message
                )
            } else {
                format!(
                    "{path}: a delivery interrupted by a kill was writing a message at offset \
                     {message}, where {other} bytes now follow that popsync cannot prove its \
                     own (another program's mail, or the start of that message); the file \
                     was left as it is. The message is fetched again: if a partial copy of \
                     it is at offset {message}, delete it with a mail reader"
                )
            };
            warn_once(warnings, text);
        }
    }
    Ok(None)
}

/// Warnings already given in this process: every pending row of a batch
/// comes to the same verdict, and the user needs to read it once.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Add `text` to `warnings` unless this process gave it already.
pub(super) fn warn_once(warnings: &mut Vec<String>, text: String) {
    let fresh = match WARNED.lock() {
        Ok(mut seen) => seen.insert(text.clone()),
        Err(_) => true,
    };
    if fresh {
        warnings.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::mbox::journal::tests::journal_of;

    fn two_messages() -> Journal {
        journal_of(|w| {
            w.message_start(0, 100);
            w.message_end(0, 150);
            w.message_start(1, 150);
            w.message_end(1, 200);
        })
    }

    #[test]
    fn assessment_of_every_state_a_kill_can_leave() {
        let j = two_messages();
        let whole = |ids: &[(u32, u64)]| ids.iter().copied().collect::<BTreeMap<_, _>>();
        // Everything written, nothing after it.
        assert_eq!(
            assess(&j, 200, 200),
            Assessment {
                complete: whole(&[(0, 100), (1, 150)]),
                cleanup: Cleanup::Nothing
            }
        );
        // Everything written, another program's mail after it.
        assert_eq!(assess(&j, 200, 900).cleanup, Cleanup::Nothing);
        // Torn in message 1, nothing after: cut message 1 off.
        assert_eq!(
            assess(&j, 170, 170),
            Assessment {
                complete: whole(&[(0, 100)]),
                cleanup: Cleanup::TruncateTo(150)
            }
        );
        // Torn in message 1, then other mail: leave it and say so.
        assert_eq!(
            assess(&j, 170, 900).cleanup,
            Cleanup::Leave {
                message: 150,
                verified: 170,
                len: 900
            }
        );
        // Nothing written.
        assert_eq!(
            assess(&j, 100, 100),
            Assessment {
                complete: BTreeMap::new(),
                cleanup: Cleanup::Nothing
            }
        );
        // Message 0 whole, message 1 begun in the journal only, then bytes
        // that may be the start of it or another program's.
        assert_eq!(
            assess(&j, 150, 400).cleanup,
            Cleanup::Leave {
                message: 150,
                verified: 150,
                len: 400
            }
        );
    }
}
