//! Delivery targets: where a downloaded message is written durably.
//!
//! One small sync trait, so `sync` can stream a message into any target without
//! knowing which: `prepare` names the delivery before anything is written (that
//! name goes into the store's pending row), `start` opens it, the sink takes the
//! message bytes (LF line ends) as they come off the socket, and `commit` makes
//! it durable. A sink dropped without `commit` removes what it wrote.

pub mod maildir;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

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
    #[error("cannot move {} into place: {source}", path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
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
        ExitCode::IoError
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

/// A delivery target.
pub trait Target: Send {
    /// "maildir:/path" and the like: recorded with pending deliveries.
    fn describe(&self) -> String;
    /// Choose the name of the next delivery; writes nothing.
    fn prepare(&mut self) -> Result<Prepared, DeliveryError>;
    /// Open the delivery named by `prepare`.
    fn start(
        &mut self,
        prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError>;
    /// After a crash: was the delivery recorded as pending completed? Cleans up
    /// leftovers of one that was not. Returns where it landed, if it did.
    fn recover(&mut self, pending: &Prepared) -> Result<Option<String>, DeliveryError>;
}

/// One message being written.
pub trait Sink: Send {
    /// Append message bytes (LF line ends).
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError>;
    /// Make the message durable; returns its final location and size in octets.
    fn commit(self: Box<Self>) -> Result<(String, u64), DeliveryError>;
}

/// The `Received:` header popsync adds (RFC 5322 date), ending in LF.
pub fn received_header(server: &str, user: &str, tls: &str, now: DateTime<Utc>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
    };
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
    if name.is_empty() { "localhost".into() } else { name }
}
