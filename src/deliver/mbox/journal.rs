//! The write-ahead journal of an mbox batch: what lets the next run tell
//! exactly which bytes a killed run appended, so that it can finish or undo
//! the batch without ever cutting another program's mail (`recovery`).
//!
//! The store's pending rows are written before a batch starts, when no byte
//! of it is known. So the mbox target keeps its own journal, one file per
//! account and mbox in the state directory (`mbox-journal/`), rewritten for
//! every batch; a pending row names the batch (a random id) and the
//! message's index in it. The journal holds, in order:
//!
//! - a header: the id, the mbox's device and inode, and its length when the
//!   batch took the locks (where the batch's bytes begin);
//! - `P` pieces: the length and a SHA-256 (keyed by the id, cut to 128 bits)
//!   of each run of appended bytes, contiguous from the start; a piece never
//!   spans a 4 KiB boundary of the file nor a message start, so a write that
//!   a kill cut short (the kernel stops between pages) ends on a piece;
//! - `S`/`E` records: message i begins / ends at this offset;
//! - `T`: the batch cut its file back to this offset (a message that failed,
//!   an aborted batch); what began there is void.
//!
//! Every record reaches the journal, synced, before the bytes it describes
//! are written to the mbox; so any byte of popsync's in the mbox is
//! described, whatever the kill instant (power loss included). The batch
//! writes it (`JournalWriter`); recovery reads it back (`Journal`) and checks
//! the file against it (`Journal::verify`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Pieces never span a multiple of this in the file.
const PIECE: u64 = 4096;

const MAGIC: &[u8; 8] = b"PSMBOXJ1";
const HEADER_LEN: usize = 40;
const TAG_PIECE: u8 = b'P';
const TAG_START: u8 = b'S';
const TAG_END: u8 = b'E';
const TAG_CUT: u8 = b'T';

/// What identifies a batch's journal and where the batch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub id: u64,
    pub dev: u64,
    pub ino: u64,
    /// The mbox's length when the batch took the locks.
    pub start: u64,
}

/// The pending row's location for message `index` of batch `id`: the mbox
/// path, then `#`, the id and the index.
pub(super) fn location(path: &Path, id: u64, index: u32) -> String {
    format!("{}#{id:016x}.{index}", path.display())
}

/// (batch id, index) from a pending row's location; `None` for a row that
/// an older popsync wrote (the bare mbox path).
pub(super) fn parse_location(location: &str) -> Option<(u64, u32)> {
    let (_, tag) = location.rsplit_once('#')?;
    let (id, index) = tag.split_once('.')?;
    if id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, index.parse().ok()?))
}

/// Name of the journal of `account`'s deliveries into the mbox `configured`.
pub(super) fn journal_path(state_dir: &Path, account: &str, configured: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(account.as_bytes());
    ctx.update(b"\0");
    ctx.update(configured.as_os_str().as_bytes());
    let name: String = ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state_dir
        .join("mbox-journal")
        .join(format!("{name}.journal"))
}

fn piece_hash(id: u64, bytes: &[u8]) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&id.to_le_bytes());
    ctx.update(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// The writing side: records are queued, then written and synced by `sync`,
/// which the batch calls before each write to the mbox.
pub(super) struct JournalWriter {
    file: File,
    path: PathBuf,
    id: u64,
    queued: Vec<u8>,
    dirty: bool,
}

impl JournalWriter {
    /// Start the journal of a new batch at `path`, replacing the previous
    /// batch's (whose pending rows are resolved by then: a batch starts only
    /// after the one before it was recorded, and a run only after the
    /// previous run's rows were recovered).
    pub(super) fn create(path: &Path, header: Header) -> std::io::Result<JournalWriter> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let mut fresh_dir = false;
        if let Some(dir) = path.parent()
            && !dir.is_dir()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            fresh_dir = true;
        }
        let fresh = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        for v in [header.id, header.dev, header.ino, header.start] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        file.write_all(&h)?;
        if fresh && let Some(dir) = path.parent() {
            // The journal's own name must survive a power loss.
            File::open(dir)?.sync_all()?;
            if fresh_dir && let Some(up) = dir.parent() {
                File::open(up)?.sync_all()?;
            }
        }
        Ok(JournalWriter {
            file,
            path: path.to_owned(),
            id: header.id,
            queued: Vec::new(),
            dirty: true,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn message_start(&mut self, index: u32, at: u64) {
        self.queued.push(TAG_START);
        self.queued.extend_from_slice(&index.to_le_bytes());
        self.queued.extend_from_slice(&at.to_le_bytes());
    }

    pub(super) fn message_end(&mut self, index: u32, at: u64) {
        self.queued.push(TAG_END);
        self.queued.extend_from_slice(&index.to_le_bytes());
        self.queued.extend_from_slice(&at.to_le_bytes());
    }

    pub(super) fn cut(&mut self, at: u64) {
        self.queued.push(TAG_CUT);
        self.queued.extend_from_slice(&at.to_le_bytes());
    }

    /// Describe `bytes`, about to be appended at offset `at`; `starts` are
    /// the offsets of message starts among them.
    pub(super) fn pieces(&mut self, at: u64, bytes: &[u8], starts: &[u64]) {
        let end = at + bytes.len() as u64;
        let mut pos = at;
        while pos < end {
            let mut next = ((pos / PIECE) + 1) * PIECE;
            if let Some(&s) = starts.iter().filter(|&&s| s > pos).min() {
                next = next.min(s);
            }
            let next = next.min(end);
            let piece = &bytes[(pos - at) as usize..(next - at) as usize];
            self.queued.push(TAG_PIECE);
            // A piece is at most PIECE (4096) octets: it fits in u16.
            self.queued
                .extend_from_slice(&(piece.len() as u16).to_le_bytes());
            self.queued.extend_from_slice(&piece_hash(self.id, piece));
            pos = next;
        }
    }

    /// Write what is queued and make it durable.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if !self.queued.is_empty() {
            self.file.write_all(&self.queued)?;
            self.queued.clear();
            self.dirty = true;
        }
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Write what is queued without waiting for the disk (records that only
    /// make recovery quicker, such as a cut already made).
    pub(super) fn write_queued(&mut self) -> std::io::Result<()> {
        if !self.queued.is_empty() {
            self.file.write_all(&self.queued)?;
            self.queued.clear();
            self.dirty = true;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: u64,
    len: u64,
    hash: [u8; 16],
}

/// A message of the batch: where it began, and where it ended if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Message {
    pub start: u64,
    pub end: Option<u64>,
}

/// A batch's journal, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Journal {
    pub header: Header,
    pieces: Vec<Piece>,
    pub messages: BTreeMap<u32, Message>,
}

impl Journal {
    /// Read the journal at `path`; `None` when there is none or it is not
    /// one. A record torn at the end (the kill came while writing it) is
    /// ignored: its bytes never reached the mbox.
    pub(super) fn read(path: &Path) -> std::io::Result<Option<Journal>> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Journal::parse(&bytes))
    }

    fn parse(bytes: &[u8]) -> Option<Journal> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return None;
        }
        let u64_at = |b: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        let u32_at = |b: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let header = Header {
            id: u64_at(bytes, 8)?,
            dev: u64_at(bytes, 16)?,
            ino: u64_at(bytes, 24)?,
            start: u64_at(bytes, 32)?,
        };
        let mut journal = Journal {
            header,
            pieces: Vec::new(),
            messages: BTreeMap::new(),
        };
        let mut cursor = header.start;
        let mut rest = &bytes[HEADER_LEN..];
        while let Some(&tag) = rest.first() {
            let body = &rest[1..];
            let used = match tag {
                TAG_PIECE => {
                    let Some(len) = body.get(..2) else { break };
                    let len = u64::from(u16::from_le_bytes([len[0], len[1]]));
                    let Some(hash) = body.get(2..18) else { break };
                    let mut h = [0u8; 16];
                    h.copy_from_slice(hash);
                    journal.pieces.push(Piece {
                        start: cursor,
                        len,
                        hash: h,
                    });
                    cursor += len;
                    18
                }
                TAG_START | TAG_END => {
                    let (Some(index), Some(at)) = (u32_at(body, 0), u64_at(body, 4)) else {
                        break;
                    };
                    if tag == TAG_START {
                        journal.messages.insert(
                            index,
                            Message {
                                start: at,
                                end: None,
                            },
                        );
                    } else if let Some(m) = journal.messages.get_mut(&index) {
                        m.end = Some(at);
                    }
                    12
                }
                TAG_CUT => {
                    let Some(at) = u64_at(body, 0) else { break };
                    journal.pieces.retain(|p| p.start + p.len <= at);
                    cursor = journal
                        .pieces
                        .last()
                        .map_or(header.start, |p| p.start + p.len);
                    journal.messages.retain(|_, m| m.start < at);
                    for m in journal.messages.values_mut() {
                        if m.end.is_some_and(|e| e > at) {
                            m.end = None;
                        }
                    }
                    8
                }
                _ => break,
            };
            rest = &body[used..];
        }
        Some(journal)
    }

    /// How far, from the batch's start, the file holds exactly the bytes
    /// the journal describes.
    pub(super) fn verify(&self, file: &File) -> std::io::Result<u64> {
        let mut verified = self.header.start;
        let mut buf = vec![0u8; PIECE as usize];
        for p in &self.pieces {
            let chunk = &mut buf[..p.len as usize];
            match file.read_exact_at(chunk, p.start) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            if piece_hash(self.header.id, chunk) != p.hash {
                break;
            }
            verified = p.start + p.len;
        }
        Ok(verified)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_and_old_ones_are_recognised() {
        let l = location(Path::new("/m/x#y.mbox"), 0xdead_beef, 7);
        assert_eq!(l, "/m/x#y.mbox#00000000deadbeef.7");
        assert_eq!(parse_location(&l), Some((0xdead_beef, 7)));
        assert_eq!(parse_location("/m/inbox"), None);
        assert_eq!(parse_location("/m/x#y.mbox"), None);
    }

    fn header() -> Header {
        Header {
            id: 9,
            dev: 1,
            ino: 2,
            start: 100,
        }
    }

    /// The journal that `records` write, read back.
    pub(in crate::deliver::mbox) fn journal_of(
        records: impl FnOnce(&mut JournalWriter),
    ) -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j/x.journal");
        let mut w = JournalWriter::create(&path, header()).unwrap();
        records(&mut w);
        w.sync().unwrap();
        Journal::read(&path).unwrap().unwrap()
    }

    #[test]
    fn pieces_split_at_4k_boundaries_and_message_starts() {
        let bytes = vec![b'x'; 9000];
        let j = journal_of(|w| w.pieces(100, &bytes, &[100, 5000]));
        let spans: Vec<_> = j.pieces.iter().map(|p| (p.start, p.len)).collect();
        assert_eq!(
            spans,
            vec![(100, 3996), (4096, 904), (5000, 3192), (8192, 908)]
        );
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_a_cut_voids_what_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.journal");
        let mut w = JournalWriter::create(&path, header()).unwrap();
        w.message_start(0, 100);
        w.pieces(100, b"first\n\n", &[100]);
        w.message_end(0, 107);
        w.message_start(1, 107);
        w.pieces(107, b"second", &[107]);
        w.cut(107);
        w.message_start(2, 107);
        w.sync().unwrap();
        let j = Journal::read(&path).unwrap().unwrap();
        assert_eq!(j.pieces.len(), 1);
        assert_eq!(
            j.messages.keys().copied().collect::<Vec<_>>(),
            vec![0, 2],
            "message 1 was cut"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[TAG_PIECE, 7]);
        assert_eq!(Journal::parse(&bytes), Some(j));
        assert_eq!(
            Journal::parse(b"not a journal at all, not at all, no"),
            None
        );
    }
}
