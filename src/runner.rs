//! Running a per-account job (`fetch` or `check`) for many accounts at once:
//! one async runtime, at most `--jobs` accounts at a time, SIGINT/SIGTERM
//! turned into a graceful stop, and the reports handed back in config order.

use std::sync::Arc;

use crate::check::check_account;
use crate::config::{Account, TlsMode};
use crate::exit::ExitCode;
use crate::report::AccountReport;
use crate::stop;
use crate::store::{Store, StoreError};
use crate::sync::{RunOptions, run_account};
use crate::ui::{self, Ui, Verbosity};

/// Which per-account job a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Fetch,
    Check,
}

/// Why the accounts could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl RunnerError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunnerError::Store(e) => e.exit_code(),
            RunnerError::Runtime(_) => ExitCode::Software,
        }
    }
}

/// Run `job` for every account, `jobs` at a time. `print` is called with
/// each report as soon as its account is done; the reports come back in
/// the order of `accounts`.
pub fn run_accounts(
    accounts: Vec<Account>,
    jobs: u16,
    opts: RunOptions,
    job: Job,
    print: fn(&AccountReport, &Ui, Job),
) -> Result<Vec<AccountReport>, RunnerError> {
    if accounts.iter().any(|a| a.tls != TlsMode::None) {
        crate::net::preload_system_roots();
    }
    // Create the seen-store (and its schema) once, before the accounts run
    // in parallel and would all try at the same moment.
    Store::open_in(&opts.state_dir)?;
    let ui = opts.ui;
    let opts = Arc::new(opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(jobs).min(8))
        .enable_all()
        .build()
        .map_err(RunnerError::Runtime)?;
    let jobs = usize::from(jobs);
    if job == Job::Fetch && !opts.dry_run {
        ui.enable_progress();
    }
    let reports = runtime.block_on(async move {
        if let Err(e) = stop::install(move |code| {
            if ui.verbosity > Verbosity::Quiet {
                ui::stderr_line(&format!(
                    "popsync: stopping ({}): finishing the messages in flight; signal again to quit at once",
                    if code == ExitCode::Interrupted { "SIGINT" } else { "SIGTERM" }
                ));
            }
        }) {
            ui.warn(&format!("cannot listen for SIGINT/SIGTERM: {e}"));
        }
        // An account's task is spawned only when a slot is free: each holds
        // the whole future of a sync (some 12 KB), which spawning every
        // account up front would keep for all of them at once.
        let mut waiting = accounts.into_iter().enumerate();
        let mut tasks = tokio::task::JoinSet::new();
        let mut spawn_next = |tasks: &mut tokio::task::JoinSet<(usize, AccountReport)>| {
            let Some((index, account)) = waiting.next() else {
                return;
            };
            let opts = opts.clone();
            tasks.spawn(async move {
                let report = match (stop::requested(), job) {
                    (Some(code), _) => AccountReport::not_started(&account.name, code),
                    (None, Job::Fetch) => {
                        let report = run_account(&account, &opts).await;
                        if !opts.dry_run {
                            crate::hook::after_run(&account, &report, &opts.ui);
                        }
                        report
                    }
                    (None, Job::Check) => check_account(&account, &opts).await,
                };
                print(&report, &opts.ui, job);
                (index, report)
            });
        };
        for _ in 0..jobs.max(1) {
            spawn_next(&mut tasks);
        }
        let mut reports = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            spawn_next(&mut tasks);
            match joined {
                Ok(r) => reports.push(r),
                Err(e) => {
                    ui.error(&format!("internal error: an account's task failed: {e}"));
                    reports.push((
                        usize::MAX,
                        AccountReport::not_started("", ExitCode::Software),
                    ));
                }
            }
        }
        reports.sort_by_key(|(i, _)| *i);
        reports
    });
    Ok(reports.into_iter().map(|(_, r)| r).collect())
}
