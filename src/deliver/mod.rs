//! Delivery targets: where a downloaded message is put durably: a Maildir, an
//! mbox, an MDA, or an IMAP mailbox.
//!
//! One small sync trait, so `sync` can stream a message into any target without
//! knowing which: `open` gets the target ready (IMAP: log in), `prepare_batch`
//! names the deliveries before anything is written (those names go into the
//! store's pending rows), `start` opens each, the sink takes the message bytes
//! (LF line ends) as they come off the socket, and `commit` makes the batch
//! durable. A sink dropped without `commit` removes what it wrote; `recover`
//! tells, after a crash, whether a pending delivery landed.

pub mod imap;
pub mod maildir;
pub mod mbox;
pub mod mda;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::config::Delivery;
use crate::exit::ExitCode;

/// A delivery that failed. Says which target and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot create Maildir directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}{}", path.display(), disk_hint(source))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sync {} to disk: {source}", path.display())]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mbox {} is locked by another program ({holder}); try again later", path.display())]
    Locked { path: PathBuf, holder: String },
    #[error("cannot start MDA `{command}`: {source}")]
    MdaSpawn {
        command: String,
        source: std::io::Error,
    },
    #[error("MDA `{command}` failed ({status}){}", stderr_part(stderr))]
    MdaFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "MDA `{command}` exited 75 (temporary failure){}; the message stays on the server and is tried again next run",
        stderr_part(stderr)
    )]
    MdaTemporary { command: String, stderr: String },
    #[error("MDA `{command}` did not finish within {}s (command_timeout) and was killed", timeout.as_secs())]
    MdaTimeout {
        command: String,
        timeout: std::time::Duration,
    },
    #[error("cannot move {} into place: {source}", path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Imap(Box<imap::ImapError>),
}

fn stderr_part(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn disk_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            " (the disk is full: free space; the message stays on the server)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (check the permissions of the delivery target)"
        }
        _ => "",
    }
}

impl DeliveryError {
    /// Local delivery problems are local I/O errors (74).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DeliveryError::Locked { .. } | DeliveryError::MdaTemporary { .. } => ExitCode::TempFail,
            DeliveryError::Imap(e) => e.exit_code(),
            _ => ExitCode::IoError,
        }
    }
}

/// How a pending row in the seen-store names its target: "maildir:PATH",
/// "mbox:PATH" or "mda:COMMAND". Written and read back only here.
impl Delivery {
    pub fn to_record(&self) -> String {
        match self {
            Delivery::Maildir(p) => format!("maildir:{}", p.display()),
            Delivery::Mbox(p) => format!("mbox:{}", p.display()),
            Delivery::Mda(c) => format!("mda:{c}"),
            Delivery::Imap(i) => format!("imap:{}@{}/{}", i.user, i.server(), i.mailbox),
        }
    }

    /// `None` for a record this popsync does not know, and for an IMAP
    /// target, which only the config can give (with its secret).
    pub fn from_record(record: &str) -> Option<Delivery> {
        let (kind, rest) = record.split_once(':')?;
        Some(match kind {
            "maildir" => Delivery::Maildir(PathBuf::from(rest)),
            "mbox" => Delivery::Mbox(PathBuf::from(rest)),
            "mda" => Delivery::Mda(rest.to_owned()),
            _ => return None,
        })
    }
}

/// Facts about a message that targets need before its bytes arrive.
#[derive(Debug, Clone)]
pub struct MessageInfo<'a> {
    /// Octets the server announced (LIST); a hint only.
    pub server_size: u64,
    /// The `Received:` header to put first, if any (already ends in LF).
    pub received: Option<&'a str>,
}

/// A named, not yet started delivery. `location` is recorded in the store's
/// pending row so that an interrupted run can be resolved by the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub location: String,
    pub offset: Option<u64>,
}

/// A message written in full whose delivery is not yet durable;
/// `Target::commit` makes it so. Dropping it undoes the write where the
/// target can (a Maildir tmp file is removed).
pub struct Finished {
    pub(crate) kind: FinishedKind,
    /// Octets written (LF line ends, Received: header included).
    pub size: u64,
}

pub(crate) enum FinishedKind {
    Maildir(maildir::Written),
    /// Appended at this location ("PATH@OFFSET"); synced at commit.
    Mbox(String),
    /// Already handed over: the MDA exited 0.
    Mda(String),
    /// Spooled, to be appended at commit.
    Imap(Box<imap::Spooled>),
}

impl Finished {
    /// What the message's pending row should say from now on, before
    /// `commit` delivers it, if that changed since `prepare_batch` (IMAP:
    /// how to find the message in the mailbox after a crash).
    pub fn pending_update(&self) -> Option<String> {
        match &self.kind {
            FinishedKind::Imap(s) => Some(s.pending.to_location()),
            _ => None,
        }
    }
}

/// A delivery target. Deliveries come in batches so that durability costs
/// one sync per batch instead of several per message: `prepare_batch` names
/// them (the names go into the store's pending rows before any message byte
/// is written), `start` opens each, and `commit` makes the finished ones
/// durable together. A batch that is not committed is undone by `abort` (or
/// by dropping the target).
pub trait Target: Send {
    /// Where this target delivers, as configured: recorded with pending
    /// deliveries (`Delivery::to_record`), so that the next run can find
    /// them even if the config changed.
    fn delivery(&self) -> Delivery;
    /// Get ready to deliver, before the first batch (IMAP: connect and log
    /// in, so that a target that cannot take mail fails before any RETR).
    fn open(&mut self) -> Result<(), DeliveryError> {
        Ok(())
    }
    /// Most messages one batch may hold.
    fn batch_limit(&self) -> usize {
        256
    }
    /// Name the next `n` deliveries; writes no message bytes (mbox: takes
    /// the lock, which is held until `commit` or `abort`).
    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError>;
    /// Open one delivery named by `prepare_batch`.
    fn start(
        &mut self,
        prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError>;
    /// Make these finished messages durable and end the batch; returns each
    /// one's final location, in order.
    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError>;
    /// Give up the current batch: remove what it wrote.
    fn abort(&mut self) {}
    /// After a crash: was the delivery recorded as pending (by a run that
    /// started at `started`) completed? Cleans up leftovers of one that was
    /// not. Returns where it landed, if it did.
    fn recover(
        &mut self,
        pending: &Prepared,
        started: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError>;
    /// Warnings gathered since the last call (a stale lock removed, ...).
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// One message being written.
pub trait Sink: Send {
    /// Append message bytes (LF line ends).
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError>;
    /// The whole message was written; hand it over for the batch's commit.
    fn finish(self: Box<Self>) -> Result<Finished, DeliveryError>;
}

/// The `Received:` header popsync adds (RFC 5322 date), ending in LF.
pub fn received_header(server: &str, user: &str, tls: &str, now: DateTime<Utc>) -> String {
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect::<String>() };
    format!(
        "Received: from {} by {} with {} (popsync {})\n\tfor <{}>; {}\n",
        clean(server),
        clean(&local_hostname()),
        tls,
        env!("CARGO_PKG_VERSION"),
        clean(user),
        now.to_rfc2822()
    )
}

/// This machine's host name, for Maildir names and Received headers.
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates
    // within that length or truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Longest header block held back while looking for `Return-Path:` (mbox
/// needs the sender for its `From ` line, an MDA for `%F`, before the body).
const MAX_HEAD: usize = 256 * 1024;

/// Holds the start of a message until its header block is complete.
#[derive(Debug, Default)]
pub struct HeadBuffer {
    buf: Vec<u8>,
}

impl HeadBuffer {
    /// Take a chunk; returns the whole head (and whatever followed it in the
    /// chunk) once the blank line ending the headers, or `MAX_HEAD` bytes,
    /// has been seen.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let searched_from = self.buf.len().saturating_sub(1);
        self.buf.extend_from_slice(chunk);
        let done = self.buf.starts_with(b"\n")
            || memchr::memmem::find(&self.buf[searched_from..], b"\n\n").is_some()
            || self.buf.len() >= MAX_HEAD;
        done.then(|| std::mem::take(&mut self.buf))
    }

    /// The message ended before its header block did.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Longest envelope sender used (addresses are at most 254 octets).
const MAX_SENDER: usize = 512;

/// The envelope sender: the address in `Return-Path:`, else `MAILER-DAEMON`
/// (also for the null sender `<>`). Control characters and spaces are
/// removed: the value goes into an mbox separator and a shell command.
pub fn envelope_sender(head: &[u8]) -> String {
    let addr: String = crate::headers::field(head, "Return-Path")
        .unwrap_or_default()
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(MAX_SENDER)
        .collect();
    if addr.is_empty() {
        "MAILER-DAEMON".into()
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_rows_target_reads_back_as_written() {
        for d in [
            Delivery::Maildir("/home/me/Mail/in:box".into()),
            Delivery::Mbox("/var/mail/me".into()),
            Delivery::Mda("procmail -d 'me:x'".into()),
        ] {
            assert_eq!(Delivery::from_record(&d.to_record()), Some(d.clone()));
        }
        // The form older runs wrote stays readable.
        assert_eq!(
            Delivery::from_record("maildir:/m"),
            Some(Delivery::Maildir("/m".into()))
        );
        assert_eq!(Delivery::from_record("imap:x"), None);
        assert_eq!(Delivery::from_record("no colon"), None);
    }

    #[test]
    fn envelope_sender_comes_from_return_path_else_mailer_daemon() {
        assert_eq!(
            envelope_sender(b"Return-Path: <a@b.c>\nFrom: x\n\nbody"),
            "a@b.c"
        );
        assert_eq!(
            envelope_sender(b"return-path:\n <folded@x>\n\n"),
            "folded@x"
        );
        assert_eq!(envelope_sender(b"Return-Path: <>\n\n"), "MAILER-DAEMON");
        assert_eq!(
            envelope_sender(b"From: x\n\nReturn-Path: <body@x>\n"),
            "MAILER-DAEMON"
        );
        assert_eq!(envelope_sender(b"Return-Path: <a b\x1b@c>\n\n"), "ab@c");
    }

    #[test]
    fn head_buffer_releases_at_the_blank_line_even_when_split() {
        let mut h = HeadBuffer::default();
        assert_eq!(h.push(b"A: 1\n"), None);
        assert_eq!(h.push(b"\nbody"), Some(b"A: 1\n\nbody".to_vec()));
        let mut h = HeadBuffer::default();
        assert_eq!(h.push(b"\nbody only"), Some(b"\nbody only".to_vec()));
    }

    #[test]
    fn received_header_is_one_folded_header_ending_in_lf() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 3, 4, 5).unwrap();
        let h = received_header("pop.example.com", "me@example.com", "POP3S", t);
        assert!(h.starts_with("Received: from pop.example.com by "), "{h}");
        assert!(
            h.ends_with("for <me@example.com>; Sun, 22 Nov 2026 03:04:05 +0000\n"),
            "{h}"
        );
        assert_eq!(h.matches('\n').count(), 2);
    }
}
