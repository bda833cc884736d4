//! Delivery into an IMAP mailbox by APPEND, exactly once.
//!
//! One connection per run, opened before the first batch. Each message is
//! spooled as it arrives; the batch is appended in one command (MULTIAPPEND
//! when offered: all or none of it lands; else one message per batch), with
//! the message's own date as INTERNALDATE. Before the APPEND, the pending
//! row learns how to find the message again (`PendingImap`: UIDVALIDITY,
//! UIDNEXT, the Message-ID, its size, popsync's id in its `Received:`
//! header); after a crash, `recover` searches the mailbox for it before
//! anything is fetched, so a message is never appended twice.

mod client;
mod date;
mod error;
mod login;
pub mod probe;
mod spool;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

pub use error::ImapError;
pub use spool::Spooled;

use self::client::{Conn, MailboxState, quote};
use self::spool::SpoolSink;
use super::{DeliveryError, Finished, FinishedKind, MessageInfo, Prepared, Sink, Target};
use crate::config::{Delivery, ImapSpec};

/// Most messages in one MULTIAPPEND.
const MULTIAPPEND_BATCH: usize = 256;

/// What a pending row records of an IMAP delivery: enough to find the
/// message in the mailbox after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingImap {
    /// popsync's id for the delivery; in the message's `Received:` header
    /// when `token_in_message`.
    pub token: String,
    pub uidvalidity: u32,
    /// UIDNEXT before the APPEND: the message, if it arrived, has a UID at
    /// least this (while UIDVALIDITY is unchanged).
    pub uidnext: u32,
    /// Set just before the APPEND; without them the APPEND never began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default)]
    pub token_in_message: bool,
}

impl PendingImap {
    pub(crate) fn to_location(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The IMAP delivery target of one account's run.
pub struct Imap {
    spec: ImapSpec,
    timeout: Duration,
    command_timeout: Duration,
    now: DateTime<Utc>,
    spool_dir: PathBuf,
    conn: Option<Conn>,
    state: Option<MailboxState>,
    /// The last APPEND came without APPENDUID, so UIDNEXT is not known
    /// until the mailbox is examined again.
    uidnext_stale: bool,
    next: u64,
    warnings: Vec<String>,
}

impl Imap {
    /// `spool_dir`: where messages wait for their APPEND (unnamed files).
    pub fn new(
        spec: ImapSpec,
        timeout: Duration,
        command_timeout: Duration,
        now: DateTime<Utc>,
        spool_dir: PathBuf,
    ) -> Imap {
        Imap {
            spec,
            timeout,
            command_timeout,
            now,
            spool_dir,
            conn: None,
            state: None,
            uidnext_stale: false,
            next: 0,
            warnings: Vec::new(),
        }
    }

    /// Connected, logged in and the mailbox examined: once per run.
    fn connected(&mut self) -> Result<(&mut Conn, MailboxState), DeliveryError> {
        if self.conn.is_none() {
            let password = self
                .spec
                .secret
                .resolve(self.command_timeout)
                .map_err(ImapError::Secret)?;
            let (spec, timeout) = (self.spec.clone(), self.timeout);
            let (conn, state) = block_on(&spec.server(), async move {
                let mut conn = Conn::open(&spec, &password, timeout).await?;
                let state = conn.examine(&spec.mailbox, spec.create).await?;
                Ok::<_, ImapError>((conn, state))
            })??;
            self.conn = Some(conn);
            self.state = Some(state);
        }
        match (self.conn.as_mut(), self.state) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => Err(ImapError::Dropped {
                server: self.spec.server(),
                during: "while connecting".into(),
            }
            .into()),
        }
    }

    fn token(&mut self) -> String {
        self.next += 1;
        let nanos = self.now.timestamp_nanos_opt().unwrap_or_default();
        format!(
            "popsync.{nanos:x}.{}.{}.{}",
            std::process::id(),
            self.next,
            super::local_hostname()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        )
    }
}

/// Run network I/O from the (blocking) target methods, which `sync` calls
/// through `command::blocking` on the multi-thread runtime.
fn block_on<T>(server: &str, f: impl Future<Output = T>) -> Result<T, DeliveryError> {
    match Handle::try_current() {
        Ok(h) => Ok(h.block_on(f)),
        Err(_) => Err(ImapError::Protocol {
            server: server.to_owned(),
            during: "outside the async runtime".into(),
            text: "an internal error".into(),
        }
        .into()),
    }
}

impl From<ImapError> for DeliveryError {
    fn from(e: ImapError) -> Self {
        DeliveryError::Imap(Box::new(e))
    }
}

/// popsync's Received: header with the delivery's id in it (RFC 5321 4.4:
/// the `id` clause comes before `for`).
fn with_id(received: &str, token: &str) -> String {
    received.replacen("\n\tfor <", &format!("\n\tid <{token}> for <"), 1)
}

impl Target for Imap {
    fn delivery(&self) -> Delivery {
        Delivery::Imap(Box::new(self.spec.clone()))
    }

    fn open(&mut self) -> Result<(), DeliveryError> {
        self.connected().map(|_| ())
    }

    fn size_limit(&self) -> Option<u64> {
        self.conn.as_ref().and_then(|c| c.caps.appendlimit)
    }

    /// Without MULTIAPPEND each APPEND is a batch of its own, so that a
    /// batch is always committed on the server all or not at all.
    fn batch_limit(&self) -> usize {
        match &self.conn {
            Some(c) if c.caps.multiappend => MULTIAPPEND_BATCH,
            _ => 1,
        }
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        if self.uidnext_stale {
            // A pending row's UIDNEXT must be past every message appended
            // before it, or a search after a crash could find an earlier
            // message with the same Message-ID or size.
            let (mailbox, create, server) = (
                self.spec.mailbox.clone(),
                self.spec.create,
                self.spec.server(),
            );
            let (conn, _) = self.connected()?;
            let fresh = block_on(&server, conn.examine(&mailbox, create))??;
            self.state = Some(fresh);
            self.uidnext_stale = false;
        }
        let (_, state) = self.connected()?;
        Ok((0..n)
            .map(|_| Prepared {
                location: PendingImap {
                    token: self.token(),
                    uidvalidity: state.uidvalidity,
                    uidnext: state.uidnext,
                    size: None,
                    message_id: None,
                    token_in_message: false,
                }
                .to_location(),
                offset: None,
            })
            .collect())
    }

    fn start(
        &mut self,
        prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        let pending: PendingImap =
            serde_json::from_str(&prepared.location).map_err(|e| ImapError::Protocol {
                server: self.spec.server(),
                during: "preparing a delivery".into(),
                text: e.to_string(),
            })?;
        let received = info.received.map(|r| with_id(r, &pending.token));
        Ok(Box::new(SpoolSink::create(
            &self.spool_dir,
            pending,
            received.as_deref(),
            self.now,
        )?))
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut spooled: Vec<Spooled> = Vec::with_capacity(batch.len());
        for f in batch {
            if let FinishedKind::Imap(s) = f.kind {
                spooled.push(*s);
            }
        }
        let (mailbox, flags) = (self.spec.mailbox.clone(), self.spec.flags.clone());
        let server = self.spec.server();
        let base = format!("imap://{}@{server}/{mailbox}", self.spec.user);
        let (conn, _) = self.connected()?;
        let appended = block_on(&server, conn.append(&mailbox, &flags, &mut spooled))??;
        // The mailbox grew: later batches' UIDNEXT is past these.
        let last = appended
            .as_ref()
            .and_then(|(_, uids)| uids.iter().max().copied());
        match (self.state.as_mut(), last) {
            (Some(state), Some(u)) => state.uidnext = u.saturating_add(1).max(state.uidnext),
            _ => self.uidnext_stale = true,
        }
        Ok(spooled
            .iter()
            .enumerate()
            .map(|(i, s)| match &appended {
                Some((validity, uids)) if uids.len() == spooled.len() => {
                    format!("{base};UIDVALIDITY={validity}/;UID={}", uids[i])
                }
                _ => format!("{base} id {}", s.pending.token),
            })
            .collect())
    }

    fn recover(
        &mut self,
        pending: &Prepared,
        _started: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        let Ok(p) = serde_json::from_str::<PendingImap>(&pending.location) else {
            self.warnings.push(format!(
                "an interrupted IMAP delivery left a record popsync cannot read ({:?}); the message will be fetched again",
                pending.location
            ));
            return Ok(None);
        };
        // No size: the pending row was never updated, so no APPEND began.
        let Some(size) = p.size else {
            return Ok(None);
        };
        let server = self.spec.server();
        let (conn, state) = self.connected()?;
        let same_uids = state.uidvalidity == p.uidvalidity;
        let range = if same_uids {
            format!("UID {}:* ", p.uidnext)
        } else {
            String::new()
        };
        let query = if p.token_in_message {
            format!("{range}HEADER Received {}", quote(&p.token))
        } else if let Some(mid) = p.message_id.as_ref().filter(|m| m.is_ascii()) {
            format!("{range}HEADER Message-ID {}", quote(mid))
        } else if same_uids {
            format!(
                "{range}LARGER {} SMALLER {}",
                size.saturating_sub(1),
                size + 1
            )
        } else {
            self.warnings.push(format!(
                "IMAP server {server}: the mailbox's UIDVALIDITY changed since an APPEND was interrupted, and the message has no Message-ID to search for; it will be fetched and appended again"
            ));
            return Ok(None);
        };
        let mut found = block_on(&server, conn.search(&query))??;
        if same_uids {
            // `UID n:*` always matches the mailbox's last message, even when
            // its UID is below n (RFC 9051 6.4.9): only UIDs the APPEND could
            // have given count.
            found.retain(|&uid| uid >= p.uidnext);
        }
        let base = format!("imap://{}@{}/{}", self.spec.user, server, self.spec.mailbox);
        Ok(found.last().map(|uid| {
            format!(
                "{base};UIDVALIDITY={}/;UID={uid}",
                if same_uids {
                    p.uidvalidity
                } else {
                    state.uidvalidity
                }
            )
        }))
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

impl Drop for Imap {
    fn drop(&mut self) {
        // LOGOUT when the runtime lets us wait for it; otherwise closing the
        // connection loses nothing (every APPEND has its reply).
        if let (Some(conn), Ok(h)) = (self.conn.take(), Handle::try_current())
            && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| h.block_on(conn.logout()));
        }
    }
}
