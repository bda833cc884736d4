//! `popsync seen list|forget|import`: reading and changing one account's
//! rows in the seen-store by hand. Changes take the account's lock, so they
//! never race a fetch.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::Account;
use crate::exit::ExitCode;
use crate::import::{self, ImportError, Source};
use crate::sanitize::sanitize;
use crate::store::{Store, StoreError};
use crate::sync::{SyncError, lock_account};
use crate::timestamp::utc_seconds;

/// Why a `seen` command failed.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // Not `source`: the message already includes the lock error's text.
    #[error("{account}: {error}")]
    Lock {
        account: String,
        error: Box<SyncError>,
    },
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl SeenError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SeenError::Store(e) => e.exit_code(),
            SeenError::Lock { error, .. } => error.exit_code(),
            SeenError::Import(_) => ExitCode::IoError,
        }
    }
}

/// `seen list`: one line (or JSON object) per row, oldest first.
pub fn list(state_dir: &Path, account: &Account, json: bool) -> Result<Vec<String>, SeenError> {
    let store = Store::open(&state_dir.join(crate::store::FILE_NAME))?;
    let mut rows: Vec<_> = store.rows(&account.name)?.into_values().collect();
    rows.sort_by(|a, b| (a.first_seen, &a.uidl, a.copy).cmp(&(b.first_seen, &b.uidl, b.copy)));
    let t = |t: Option<DateTime<Utc>>| t.map_or("-".to_owned(), |t| utc_seconds(&t));
    Ok(rows
        .into_iter()
        .map(|r| {
            if json {
                let j = |t: Option<DateTime<Utc>>| t.map(|t| utc_seconds(&t));
                serde_json::json!({
                    "uidl": r.uidl, "copy": r.copy, "size": r.size,
                    "first_seen": j(Some(r.first_seen)), "delivered": j(r.delivered_at),
                    "deleted": j(r.deleted_at), "location": r.location,
                })
                .to_string()
            } else {
                format!(
                    "{} {} {} delivered={} deleted={} {}",
                    sanitize(r.uidl.as_bytes(), 80),
                    r.size,
                    t(Some(r.first_seen)),
                    t(r.delivered_at),
                    t(r.deleted_at),
                    r.location.unwrap_or_default()
                )
            }
        })
        .collect())
}

/// `seen forget`: drop these UIDLs' rows; returns how many went.
pub fn forget(state_dir: &Path, account: &Account, uidls: &[String]) -> Result<usize, SeenError> {
    let _lock = lock(state_dir, account)?;
    let mut store = Store::open(&state_dir.join(crate::store::FILE_NAME))?;
    Ok(store.forget(&account.name, uidls)?)
}

/// `seen import`: take another tool's UIDLs as seen; returns the line that
/// says what was taken.
pub fn import(
    state_dir: &Path,
    account: &Account,
    from: Source,
    file: &Path,
    now: DateTime<Utc>,
) -> Result<String, SeenError> {
    let imported = import::import_file(from, file, &account.user, &account.host)?;
    let _lock = lock(state_dir, account)?;
    let mut store = Store::open(&state_dir.join(crate::store::FILE_NAME))?;
    let (taken, known) = store.import(&account.name, &imported.uidls, from.name(), now)?;
    let mut line = format!(
        "{}: took {taken} UIDL(s) from {}",
        account.name,
        file.display()
    );
    if known > 0 {
        line.push_str(&format!(", {known} already known"));
    }
    line.push_str(&format!(", ignored {}", imported.ignored));
    if !imported.others.is_empty() {
        line.push_str(&format!(
            " (they belong to {}, not {}@{})",
            imported.others.join(", "),
            account.user,
            account.host
        ));
    }
    Ok(line)
}

fn lock(state_dir: &Path, account: &Account) -> Result<std::fs::File, SeenError> {
    lock_account(state_dir, &account.name).map_err(|error| SeenError::Lock {
        account: account.name.clone(),
        error: Box::new(error),
    })
}
