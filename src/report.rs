//! What happened to one account: the report that becomes the `--json`
//! object and the summary line, and the counters a session fills in on the
//! way, so that a failed session still reports what it delivered.

use std::time::Instant;

use serde::Serialize;

use crate::config::Account;
use crate::exit::ExitCode;
use crate::sync::SyncError;

/// What happened to one account: the `--json` object and the summary line.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    pub account: String,
    pub status: &'static str,
    pub new: u64,
    pub fetched: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub error: Option<String>,
    pub elapsed_ms: u64,
    #[serde(skip)]
    pub code: ExitCode,
}

impl AccountReport {
    /// An account that was not worked on at all (stopped before its turn,
    /// or lost to an internal error).
    pub fn not_started(account: &str, code: ExitCode) -> AccountReport {
        let error = match code {
            ExitCode::Interrupted | ExitCode::Terminated => {
                "not started: popsync was asked to stop"
            }
            _ => "internal error: the account's task failed",
        };
        AccountReport {
            account: account.to_owned(),
            status: code.status_word(),
            new: 0,
            fetched: 0,
            bytes: 0,
            deleted: 0,
            skipped: 0,
            error: Some(error.to_owned()),
            elapsed_ms: 0,
            code,
        }
    }

    /// The default summary line on stderr.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} new, {} fetched ({}), {} deleted",
            self.account,
            self.new,
            self.fetched,
            crate::ui::human_bytes(self.bytes),
            self.deleted
        );
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }
}

/// Counters of one session, filled in as it goes so that a failed session
/// still reports what it did deliver.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) new: u64,
    pub(crate) fetched: u64,
    pub(crate) bytes: u64,
    pub(crate) deleted: u64,
    pub(crate) skipped: u64,
}

/// The report of a session that ended with `result`.
pub(crate) fn report(
    account: &Account,
    started: Instant,
    tally: Tally,
    result: Result<(), SyncError>,
) -> AccountReport {
    let (code, error) = match result {
        Ok(()) => (ExitCode::Ok, None),
        Err(e) => (e.exit_code(), Some(e.to_string())),
    };
    AccountReport {
        account: account.name.clone(),
        status: code.status_word(),
        new: tally.new,
        fetched: tally.fetched,
        bytes: tally.bytes,
        deleted: tally.deleted,
        skipped: tally.skipped,
        error,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        code,
    }
}
