//! `popsync peek ACCOUNT`: what waits on the server, without downloading or
//! changing anything: number, UIDL, size, whether popsync has seen it, and
//! Date, From and Subject (decoded, made safe for a terminal), read with
//! TOP n 0 (pipelined when the server allows); `--lines N` adds the first N
//! body lines.

use serde::Serialize;

use crate::config::{Account, Retention};
use crate::headers;
use crate::login;
use crate::policy::{self, PlanSettings, Verdicts};
use crate::sanitize::sanitize;
use crate::store::Store;
use crate::sync::{self, RunOptions, SyncError};

/// Most bytes of one TOP reply kept for display.
const MAX_TOP: usize = 256 * 1024;

/// One message on the server, as `peek` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Peeked {
    pub msg: u32,
    pub uidl: String,
    pub size: u64,
    pub seen: bool,
    pub date: String,
    pub from: String,
    pub subject: String,
    pub lines: Vec<String>,
}

impl Peeked {
    /// One line for a person (plus the body lines, indented).
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:>4} {} {:>9} {:<4}  {}  {}  {}",
            self.msg,
            sanitize(self.uidl.as_bytes(), 70),
            self.size,
            if self.seen { "seen" } else { "new" },
            self.date,
            self.from,
            self.subject
        );
        for l in &self.lines {
            out.push_str("\n       | ");
            out.push_str(l);
        }
        out
    }
}

/// Why `peek` could not list the server.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(
        "{server} does not support TOP (an optional POP3 command), so popsync cannot read headers without downloading whole messages"
    )]
    NoTop { server: String },
}

impl PeekError {
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            PeekError::Sync(e) => e.exit_code(),
            // The one thing asked for is not available from this server.
            PeekError::NoTop { .. } => crate::exit::ExitCode::Unavailable,
        }
    }
}

/// List the server's messages with their headers.
pub async fn peek(
    account: &Account,
    opts: &RunOptions,
    only_new: bool,
    lines: u32,
) -> Result<Vec<Peeked>, PeekError> {
    let mut store = Store::open_in(&opts.state_dir).map_err(SyncError::from)?;
    let mut session = login::open_session(account, opts, &mut store)
        .await
        .map_err(SyncError::from)?;
    let server = session.conn.server().to_owned();
    let listing = session.listing().await.map_err(SyncError::from)?;
    login::record_login(account, opts, &mut store, &session).map_err(SyncError::from)?;
    let seen = store.rows(&account.name).map_err(SyncError::from)?;
    // The plan numbers duplicated UIDLs and tells new from seen exactly as
    // `fetch` will; retention and size limits do not matter here.
    let settings = PlanSettings {
        retention: Retention::Forever,
        max_size: None,
        accept_uidl_reset: true,
    };
    let plan = policy::plan(&listing, &seen, opts.now, settings, &Verdicts::new());
    let wanted: Vec<_> = plan
        .messages
        .iter()
        .map(|p| (&p.listed, !p.is_new()))
        .filter(|(_, s)| !only_new || !s)
        .collect();
    if !wanted.is_empty() && !session.capa.top() && session.capa.lines().next().is_some() {
        return Err(PeekError::NoTop { server });
    }
    let window = sync::command_window(&session);
    let mut out = Vec::with_capacity(wanted.len());
    for batch in wanted.chunks(window) {
        let msgs: Vec<u32> = batch.iter().map(|(l, _)| l.msg).collect();
        session
            .send_top(&msgs, lines)
            .await
            .map_err(SyncError::from)?;
        for (l, was_seen) in batch {
            let top = match session.read_top(l.msg, l.size, MAX_TOP).await {
                Ok(t) => t,
                // Without CAPA we could not know beforehand: a -ERR to TOP
                // means the server lacks it.
                Err(crate::pop3::session::SessionError::Rejected { .. }) if !session.capa.top() => {
                    return Err(PeekError::NoTop { server });
                }
                Err(e) => return Err(SyncError::from(e).into()),
            };
            let show = |name: &str| {
                headers::field(&top, name)
                    .map(|v| headers::display(&v, 80))
                    .unwrap_or_default()
            };
            let body_start = memchr::memmem::find(&top, b"\n\n").map_or(top.len(), |i| i + 2);
            let body = &top[body_start.min(top.len())..];
            let body = body.strip_suffix(b"\n").unwrap_or(body);
            let body_lines = body
                .split(|&b| b == b'\n')
                .filter(|_| !body.is_empty())
                .take(lines as usize)
                .map(|l| sanitize(l, 200))
                .collect();
            out.push(Peeked {
                msg: l.msg,
                uidl: l.uidl.clone(),
                size: l.size,
                seen: *was_seen,
                date: show("Date"),
                from: show("From"),
                subject: show("Subject"),
                lines: body_lines,
            });
        }
    }
    // TOP changes nothing: QUIT is safe.
    session.quit().await.map_err(SyncError::from)?;
    Ok(out)
}
