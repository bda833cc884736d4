//! `popsync check`: the plan `fetch` would follow, counted; beside `peek`,
//! the other command that looks at the server without downloading. It logs
//! in through `sync`'s own first steps (LOGIN-DELAY, secret, connect, login,
//! listing, filter), so it counts exactly what a fetch would download.

use std::time::Instant;

use crate::config::Account;
use crate::policy::Action;
use crate::report::{AccountReport, Tally, report};
use crate::store::Store;
use crate::sync::{Planned, RunOptions, SyncError, connect_and_plan};

/// `popsync check`: how much new mail `fetch` would download. Changes
/// nothing on the server or on disk.
pub async fn check_account(account: &Account, opts: &RunOptions) -> AccountReport {
    let started = Instant::now();
    let mut tally = Tally::default();
    let result = async {
        let mut store = crate::command::blocking(|| Store::open_in(&opts.state_dir))?;
        let Planned {
            session,
            plan,
            filter_error,
        } = connect_and_plan(account, opts, &mut store, &mut tally).await?;
        // `check` counts what `fetch` would download, not what max_size skips.
        tally.new = 0;
        for p in &plan.messages {
            match p.action {
                Action::Fetch { .. } => {
                    tally.new += 1;
                    tally.bytes = tally.bytes.saturating_add(p.listed.size);
                }
                Action::Skip(_) => tally.skipped += 1,
                _ => {}
            }
        }
        session.quit().await?;
        match filter_error {
            Some(e) => Err(SyncError::Filter(e)),
            None => Ok::<(), SyncError>(()),
        }
    }
    .await;
    report(account, started, tally, result)
}
