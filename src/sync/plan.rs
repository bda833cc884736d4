//! From nothing to a plan: log in (through `login`), list the server,
//! ask the header filter, and decide with `policy` what to fetch, skip and
//! delete. Shared by `fetch` and `check`, so that `check` counts exactly
//! what a fetch would download.

use crate::config::{Account, Retention};
use crate::deliver;
use crate::exit::ExitCode;
use crate::filter::{self, FilterError};
use crate::login;
use crate::net::Transport;
use crate::policy::{self, Plan, PlanSettings, Verdicts};
use crate::pop3::codec::Expire;
use crate::pop3::session::Transaction;
use crate::report::Tally;
use crate::store::Store;
use crate::window;

use super::{RunOptions, SyncError};

/// Most header bytes handed to a filter.
const MAX_FILTER_HEADERS: usize = 1 << 20;

/// A logged-in session and its plan.
pub(crate) struct Planned {
    pub(crate) session: Transaction<Transport>,
    pub(crate) plan: Plan,
    /// A header filter failed for some message (it stays on the server).
    pub(crate) filter_error: Option<FilterError>,
}

/// Everything up to the plan: LOGIN-DELAY, secret, connect, log in, list.
pub(crate) async fn connect_and_plan(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
    tally: &mut Tally,
) -> Result<Planned, SyncError> {
    let mut session = login::open_session(account, opts, store).await?;
    let server = session.conn.server().to_owned();
    let listing = session.listing().await?;
    crate::command::blocking(|| login::record_login(account, opts, store, &session))?;
    warn_about_expire(account, &session, opts);
    let seen = crate::command::blocking(|| store.rows(&account.name))?;
    let settings = PlanSettings {
        retention: account.retention,
        max_size: account.max_size,
        accept_uidl_reset: opts.accept_uidl_reset,
    };
    let mut plan = policy::plan(&listing, &seen, opts.now, settings, &Verdicts::new());
    if let Some(reset) = plan.uidl_reset {
        return Err(SyncError::UidlReset {
            server,
            account: account.name.clone(),
            on_server: reset.on_server,
            known: reset.known,
        });
    }
    let mut filter_error = None;
    if let Some(command) = &account.filter {
        let verdicts = run_filter(account, command, &plan, &mut session).await?;
        filter_error = first_filter_error(&verdicts);
        plan = policy::plan(&listing, &seen, opts.now, settings, &verdicts);
    }
    tally.new = plan.new_count() as u64;
    Ok(Planned {
        session,
        plan,
        filter_error,
    })
}

/// Commands to keep in flight: a window with PIPELINING, else one at a time.
pub fn command_window(session: &Transaction<Transport>) -> usize {
    if session.capa.pipelining() {
        window::MAX_COMMANDS
    } else {
        1
    }
}

/// Ask the header filter about every message the plan would fetch: TOP n 0
/// (pipelined when the server allows), the headers to the filter's stdin.
async fn run_filter(
    account: &Account,
    command: &str,
    plan: &Plan,
    session: &mut Transaction<Transport>,
) -> Result<Verdicts, SyncError> {
    let candidates = plan.to_fetch();
    let window = command_window(session);
    let mut verdicts = Verdicts::new();
    for batch in candidates.chunks(window) {
        let msgs: Vec<u32> = batch.iter().map(|p| p.listed.msg).collect();
        session.send_top(&msgs, 0).await?;
        for p in batch {
            let headers = session
                .read_top(p.listed.msg, p.listed.size, MAX_FILTER_HEADERS)
                .await?;
            let sender = deliver::envelope_sender(&headers);
            let verdict = crate::command::blocking(|| {
                filter::judge(
                    command,
                    &headers,
                    &sender,
                    p.listed.size,
                    account.command_timeout,
                )
            });
            verdicts.insert(p.key(), verdict);
        }
    }
    Ok(verdicts)
}

fn first_filter_error(verdicts: &Verdicts) -> Option<FilterError> {
    // A temporary failure counts only if every failure was temporary.
    let mut errors: Vec<&FilterError> =
        verdicts.values().filter_map(|v| v.as_ref().err()).collect();
    errors.sort_by_key(|e| e.exit_code() == ExitCode::TempFail);
    errors.first().map(|e| (*e).clone())
}

/// RFC 2449 EXPIRE: the server deletes mail itself after N days; say so when
/// retention asks to keep it longer.
fn warn_about_expire(account: &Account, session: &Transaction<Transport>, opts: &RunOptions) {
    let Some(Expire::Days(days)) = session.capa.expire() else {
        return;
    };
    let longer = match account.retention {
        Retention::Forever => true,
        Retention::Days(n) => u64::from(n) > days,
    };
    if longer {
        opts.ui.warn(&format!(
            "{}: the server deletes mail after {days} days (EXPIRE), sooner than retention = \"{}\" asks",
            account.name, account.retention
        ));
    }
}
