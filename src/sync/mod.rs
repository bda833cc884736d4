//! One account, end to end: lock, resolve interrupted deliveries, connect,
//! log in, list, plan, then deliver → commit → DELE → QUIT. That order, which
//! keeps DESIGN.md's promises, lives here and only here; the steps live in
//! `login` (session setup), `plan`, `pending` and `fetch`.

mod error;
mod fetch;
mod pending;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Account;
use crate::deliver::Target;
use crate::policy::{self, Action, DeleteReason, Plan, SkipReason};
use crate::pop3::session::Transaction;
use crate::report::{AccountReport, Tally, report};
use crate::sanitize::sanitize;
use crate::store::{self, Store};
use crate::ui::Ui;

pub use error::SyncError;
pub use plan::command_window;
pub(crate) use plan::{Planned, connect_and_plan};

/// Settings of one run that are not per account.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub now: DateTime<Utc>,
    pub dry_run: bool,
    pub accept_uidl_reset: bool,
    /// Log in although the server's LOGIN-DELAY has not passed (by hand).
    pub ignore_login_delay: bool,
    pub ui: Ui,
}

/// Sync one account. Never panics on server or disk input; every failure
/// becomes the report's error and exit code.
pub async fn run_account(account: &Account, opts: &RunOptions) -> AccountReport {
    let started = Instant::now();
    let mut tally = Tally::default();
    let result = sync(account, opts, &mut tally).await;
    report(account, started, tally, result)
}

async fn sync(account: &Account, opts: &RunOptions, tally: &mut Tally) -> Result<(), SyncError> {
    let _lock = lock_account(&opts.state_dir, &account.name)?;
    let mut store = crate::command::blocking(|| Store::open_in(&opts.state_dir))?;
    let mut target = pending::open_target(&account.deliver, account, opts);
    if !opts.dry_run {
        crate::command::blocking(|| pending::resolve_pending(account, &mut store, opts))?;
    }
    let Planned {
        session,
        plan,
        filter_error,
    } = connect_and_plan(account, opts, &mut store, tally).await?;
    if opts.dry_run {
        for p in &plan.messages {
            let _ = crate::ui::stdout_line(&p.to_string());
        }
        // Nothing was RETRieved or DELEted: QUIT changes nothing.
        session.quit().await?;
    } else {
        deliver_then_delete(
            account,
            opts,
            session,
            &plan,
            &mut store,
            target.as_mut(),
            tally,
        )
        .await?;
    }
    filter_error.map_or(Ok(()), |e| Err(SyncError::Filter(e)))
}

/// The plan carried out: every new message delivered and committed, then
/// DELE for what is committed (and what retention or the filter condemns),
/// then QUIT, then the store's bookkeeping. Any failure before QUIT leaves
/// the server as it was: without QUIT, no DELE takes effect.
async fn deliver_then_delete<S: AsyncRead + AsyncWrite + Unpin>(
    account: &Account,
    opts: &RunOptions,
    mut session: Transaction<S>,
    plan: &Plan,
    store: &mut Store,
    target: &mut dyn Target,
    tally: &mut Tally,
) -> Result<(), SyncError> {
    report_skipped(account, opts, plan, tally);
    let fetch::Fetched {
        mut to_delete,
        refused,
    } = fetch::fetch_new(account, opts, plan, &mut session, store, target, tally).await?;
    let mut filtered = Vec::new();
    for p in &plan.messages {
        match p.action {
            Action::Delete(DeleteReason::Retention { .. }) => {
                to_delete.push((p.listed.msg, p.key()))
            }
            Action::Delete(DeleteReason::Filter) => filtered.push(p),
            _ => {}
        }
    }

    // Only committed deliveries (and what the filter condemned unread) reach
    // this point: DELE them, then QUIT.
    let mut msgs: Vec<u32> = to_delete.iter().map(|(m, _)| *m).collect();
    msgs.extend(filtered.iter().map(|p| p.listed.msg));
    session.dele(&msgs).await?;
    session.quit().await?;
    let keys: Vec<_> = to_delete.into_iter().map(|(_, k)| k).collect();
    crate::command::blocking(|| store.mark_deleted(&account.name, &keys, opts.now))?;
    let filtered_keys: Vec<_> = filtered.iter().map(|p| (p.key(), p.listed.size)).collect();
    crate::command::blocking(|| store.record_filtered(&account.name, &filtered_keys, opts.now))?;
    tally.deleted = (keys.len() + filtered_keys.len()) as u64;
    for store::MessageKey { uidl, .. } in &keys {
        opts.ui.verbose(&format!(
            "{}: deleted {} on the server",
            account.name,
            sanitize(uidl.as_bytes(), 80)
        ));
    }
    for (store::MessageKey { uidl, .. }, size) in &filtered_keys {
        opts.ui.verbose(&format!(
            "{}: deleted {} ({size} bytes) on the server without downloading it (filter)",
            account.name,
            sanitize(uidl.as_bytes(), 80)
        ));
    }
    // An empty listing keeps the rows of mail retention still keeps on the
    // server (see `policy::kept_when_absent`).
    let on_server: HashSet<_> = if plan.messages.is_empty() {
        crate::command::blocking(|| store.rows(&account.name))?
            .into_iter()
            .filter(|(_, row)| policy::kept_when_absent(row, opts.now, account.retention))
            .map(|(key, _)| key)
            .collect()
    } else {
        plan.keys()
    };
    crate::command::blocking(|| store.prune(&account.name, &on_server))?;
    refused.map_or(Ok(()), Err)
}

/// Count, and with `-v` name, what the plan leaves on the server unread.
fn report_skipped(account: &Account, opts: &RunOptions, plan: &Plan, tally: &mut Tally) {
    for p in &plan.messages {
        if let Action::Skip(why) = &p.action {
            tally.skipped += 1;
            let why = match why {
                SkipReason::TooBig { .. } => "larger than max_size".to_owned(),
                SkipReason::Filter => "the filter said not now".to_owned(),
                SkipReason::FilterFailed(e) => e.clone(),
            };
            opts.ui.verbose(&format!(
                "{}: skipped {} ({} bytes): {why}",
                account.name,
                sanitize(p.listed.uidl.as_bytes(), 80),
                p.listed.size
            ));
        }
    }
}

/// An exclusive, non-waiting lock per account: a second run skips at once.
pub fn lock_account(state_dir: &Path, name: &str) -> Result<File, SyncError> {
    let dir = state_dir.join("locks");
    store::create_private_dir(&dir)?;
    let path = dir.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SyncError::LockFile {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SyncError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(SyncError::LockFile { path, source }),
    }
}
