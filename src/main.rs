//! The binary's edge: parse the command line, run, print errors (the only
//! place that does), and exit with the code `exit::merge` decided.

use std::process::ExitCode as ProcessExit;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;

use popsync::cli::{CheckArgs, Cli, Cmd, FetchArgs, PeekArgs, ProbeArgs, SeenCmd, Selection};
use popsync::config::{self, Config};
use popsync::exit::{self, ExitCode};
use popsync::report::AccountReport;
use popsync::stop;
use popsync::sync::{self, RunOptions};
use popsync::ui::{self, Ui, Verbosity};

fn main() -> ProcessExit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Ok
            };
            let _ = e.print();
            return ProcessExit::from(code.code() as u8);
        }
    };
    let ui = Ui {
        verbosity: match (cli.global.quiet, cli.global.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Trace,
        },
        json: cli.global.json,
    };
    let code = match run(&cli, ui) {
        Ok(code) => code,
        Err(failure) => {
            ui.error(&format!("{:#}", failure.error));
            failure.code
        }
    };
    ProcessExit::from(code.code() as u8)
}

/// An error that ends the whole run, with its exit code.
struct Failure {
    code: ExitCode,
    error: anyhow::Error,
}

fn fail(code: ExitCode, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

fn run(cli: &Cli, ui: Ui) -> Result<ExitCode, Failure> {
    let path =
        config::default_path(cli.global.config.as_deref()).map_err(|e| fail(e.exit_code(), e))?;
    let config = config::load(&path).map_err(|e| fail(e.exit_code(), e))?;
    match &cli.command {
        Cmd::Fetch(args) => fetch(&config, args, ui),
        Cmd::Check(args) => check(&config, args, ui),
        Cmd::Probe(args) => probe(&config, args, ui),
        Cmd::Peek(args) => peek(&config, args, ui),
        Cmd::Accounts => accounts(&config, ui),
        Cmd::Seen(cmd) => seen(&config, cmd, ui),
    }
}

/// `POPSYNC_NOW` replaces the clock (tests, "what would retention do then?").
fn now() -> Result<DateTime<Utc>, Failure> {
    match std::env::var("POPSYNC_NOW") {
        Ok(s) if !s.is_empty() => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| {
                format!("POPSYNC_NOW={s:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z")
            })
            .map_err(|e| fail(ExitCode::Usage, e)),
        _ => Ok(Utc::now()),
    }
}

/// Which per-account job a command runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    Fetch,
    Check,
}

fn fetch(config: &Config, args: &FetchArgs, ui: Ui) -> Result<ExitCode, Failure> {
    let reports = run_accounts(
        config,
        &args.selection,
        args.jobs,
        args.dry_run,
        args.accept_uidl_reset,
        Job::Fetch,
        ui,
    )?;
    // A stop request decides the exit code: the run did not do all it was asked.
    Ok(stop::requested().unwrap_or_else(|| exit::merge(reports.iter().map(|r| r.code))))
}

fn check(config: &Config, args: &CheckArgs, ui: Ui) -> Result<ExitCode, Failure> {
    let reports = run_accounts(
        config,
        &args.selection,
        args.jobs,
        false,
        false,
        Job::Check,
        ui,
    )?;
    let failed = exit::merge(reports.iter().map(|r| r.code));
    Ok(if failed != ExitCode::Ok {
        failed
    } else if reports.iter().any(|r| r.new > 0) {
        ExitCode::Ok
    } else {
        ExitCode::NoNewMail
    })
}

/// Run `job` for every selected account, `jobs` at a time; reports come back
/// in config order.
fn run_accounts(
    config: &Config,
    selection: &Selection,
    jobs: u16,
    dry_run: bool,
    accept_uidl_reset: bool,
    job: Job,
    ui: Ui,
) -> Result<Vec<AccountReport>, Failure> {
    let selected = config
        .select(&selection.accounts, selection.all)
        .map_err(|e| fail(ExitCode::Usage, e))?;
    if selected
        .iter()
        .any(|a| a.tls != popsync::config::TlsMode::None)
    {
        popsync::net::preload_system_roots();
    }
    // Create the seen-store (and its schema) once, before the accounts run
    // in parallel and would all try at the same moment.
    popsync::store::Store::open_in(&config.state_dir).map_err(|e| fail(e.exit_code(), e))?;
    let opts = Arc::new(RunOptions {
        state_dir: config.state_dir.clone(),
        now: now()?,
        dry_run,
        accept_uidl_reset,
        ui,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(jobs).min(8))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(|e| fail(ExitCode::Software, e))?;
    let accounts: Vec<_> = selected.into_iter().cloned().collect();
    let jobs = usize::from(jobs);
    if job == Job::Fetch && !dry_run {
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
        let limit = Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, account) in accounts.into_iter().enumerate() {
            let limit = limit.clone();
            let opts = opts.clone();
            tasks.spawn(async move {
                // The semaphore is never closed, so acquire only fails if it
                // were; then run without a slot rather than not at all.
                let _slot = limit.acquire_owned().await.ok();
                let report = match (stop::requested(), job) {
                    (Some(code), _) => AccountReport::not_started(&account.name, code),
                    (None, Job::Fetch) => sync::run_account(&account, &opts).await,
                    (None, Job::Check) => popsync::check::check_account(&account, &opts).await,
                };
                report_account(&report, &opts.ui, job);
                (index, report)
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => reports.push(r),
                Err(e) => {
                    ui.error(&format!("internal error: an account's task failed: {e}"));
                    reports.push((usize::MAX, internal_report()));
                }
            }
        }
        reports.sort_by_key(|(i, _)| *i);
        reports
    });
    Ok(reports.into_iter().map(|(_, r)| r).collect())
}

fn internal_report() -> AccountReport {
    AccountReport::not_started("", ExitCode::Software)
}

/// Print one account's outcome as DESIGN.md says: JSON on stdout, the summary
/// or the error on stderr.
fn report_account(report: &AccountReport, ui: &Ui, job: Job) {
    if let Some(err) = &report.error {
        ui.error(&format!("{}: {err}", report.account));
    } else if !ui.json {
        match job {
            // What `check` was asked for goes to stdout; `-q` silences it.
            Job::Check if ui.verbosity > Verbosity::Quiet => {
                let _ = ui::stdout_line(&format!(
                    "{}: {} new ({} bytes)",
                    report.account, report.new, report.bytes
                ));
            }
            Job::Check => {}
            Job::Fetch => ui.info(&report.summary()),
        }
    }
    if ui.json {
        match serde_json::to_string(report) {
            Ok(line) => {
                let _ = ui::stdout_line(&line);
            }
            Err(e) => ui.error(&format!("cannot encode JSON report: {e}")),
        }
    }
}

/// The one account a single-account command names.
fn one_account(config: &Config, name: &str) -> Result<popsync::config::Account, Failure> {
    config
        .select(&[name.to_owned()], false)
        .map_err(|e| fail(ExitCode::Usage, e))?
        .into_iter()
        .next()
        .cloned()
        .ok_or_else(|| fail(ExitCode::Usage, anyhow::anyhow!("no account {name:?}")))
}

fn single_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(|e| fail(ExitCode::Software, e))
}

fn peek(config: &Config, args: &PeekArgs, ui: Ui) -> Result<ExitCode, Failure> {
    let account = one_account(config, &args.account)?;
    let opts = RunOptions {
        state_dir: config.state_dir.clone(),
        now: now()?,
        dry_run: true,
        accept_uidl_reset: false,
        ui,
    };
    let listed =
        single_runtime()?.block_on(popsync::peek::peek(&account, &opts, args.new, args.lines));
    let listed =
        listed.map_err(|e| fail(e.exit_code(), anyhow::anyhow!("{}: {e}", account.name)))?;
    for m in &listed {
        let line = if ui.json {
            serde_json::to_string(m)
                .context("cannot encode JSON")
                .map_err(|e| fail(ExitCode::Software, e))?
        } else {
            m.text()
        };
        ui::stdout_line(&line)
            .context("cannot write to stdout")
            .map_err(|e| fail(ExitCode::IoError, e))?;
    }
    Ok(ExitCode::Ok)
}

fn probe(config: &Config, args: &ProbeArgs, ui: Ui) -> Result<ExitCode, Failure> {
    let account = one_account(config, &args.account)?;
    let runtime = single_runtime()?;
    let report = runtime.block_on(popsync::probe::probe(&account, args.login, &ui));
    let out = if ui.json {
        serde_json::to_string(&report)
            .context("cannot encode JSON report")
            .map_err(|e| fail(ExitCode::Software, e))?
    } else {
        report.text().trim_end().to_owned()
    };
    ui::stdout_line(&out)
        .context("cannot write to stdout")
        .map_err(|e| fail(ExitCode::IoError, e))?;
    if let Some(err) = &report.error {
        ui.error(&format!("{}: {err}", report.account));
    }
    Ok(report.code)
}

fn accounts(config: &Config, ui: Ui) -> Result<ExitCode, Failure> {
    use popsync::config::SecretSource;
    for a in &config.accounts {
        // Where the secret comes from, never the secret itself.
        let secret = match &a.secret {
            SecretSource::Password(_) => "password (in the config)".to_owned(),
            SecretSource::File(p) => format!("password_file {}", p.display()),
            SecretSource::Command(c) => format!("password_command {c}"),
        };
        let auth = if a.auth.is_empty() {
            "strongest offered".to_owned()
        } else {
            a.auth
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let line = if ui.json {
            serde_json::json!({
                "account": a.name,
                "host": a.host,
                "port": a.port,
                "tls": a.tls.as_str(),
                "user": a.user,
                "secret": secret,
                "auth": auth,
                "deliver": a.deliver.describe(),
                "retention": a.retention.to_string(),
                "max_size": a.max_size,
                "filter": a.filter,
            })
            .to_string()
        } else {
            format!(
                "{}: {}@{}:{} tls={} auth={} secret={} deliver={} retention={}{}",
                a.name,
                a.user,
                a.host,
                a.port,
                a.tls.as_str(),
                auth,
                secret,
                a.deliver.describe(),
                a.retention,
                a.max_size
                    .map(|m| format!(" max_size={m}"))
                    .unwrap_or_default()
            )
        };
        ui::stdout_line(&line)
            .context("cannot write to stdout")
            .map_err(|e| fail(ExitCode::IoError, e))?;
    }
    Ok(ExitCode::Ok)
}

fn seen(config: &Config, cmd: &SeenCmd, ui: Ui) -> Result<ExitCode, Failure> {
    let store_path = config.state_dir.join(popsync::store::FILE_NAME);
    let io = |e: popsync::store::StoreError| fail(e.exit_code(), e);
    let out = |line: &str| {
        ui::stdout_line(line)
            .context("cannot write to stdout")
            .map_err(|e| fail(ExitCode::IoError, e))
    };
    match cmd {
        SeenCmd::List { account } => {
            let account = one_account(config, account)?;
            let store = popsync::store::Store::open(&store_path).map_err(io)?;
            let mut rows: Vec<_> = store
                .rows(&account.name)
                .map_err(io)?
                .into_values()
                .collect();
            rows.sort_by(|a, b| {
                (a.first_seen, &a.uidl, a.copy).cmp(&(b.first_seen, &b.uidl, b.copy))
            });
            let t = |t: Option<chrono::DateTime<Utc>>| {
                t.map_or("-".to_owned(), |t| popsync::timestamp::utc_seconds(&t))
            };
            for r in rows {
                let line = if ui.json {
                    let j = |t: Option<chrono::DateTime<Utc>>| {
                        t.map(|t| popsync::timestamp::utc_seconds(&t))
                    };
                    serde_json::json!({
                        "uidl": r.uidl, "copy": r.copy, "size": r.size,
                        "first_seen": j(Some(r.first_seen)), "delivered": j(r.delivered_at),
                        "deleted": j(r.deleted_at), "location": r.location,
                    })
                    .to_string()
                } else {
                    format!(
                        "{} {} {} delivered={} deleted={} {}",
                        popsync::sanitize::sanitize(r.uidl.as_bytes(), 80),
                        r.size,
                        t(Some(r.first_seen)),
                        t(r.delivered_at),
                        t(r.deleted_at),
                        r.location.unwrap_or_default()
                    )
                };
                out(&line)?;
            }
            Ok(ExitCode::Ok)
        }
        SeenCmd::Forget { account, uidls } => {
            let account = one_account(config, account)?;
            let _lock = sync::lock_account(&config.state_dir, &account.name)
                .map_err(|e| fail(e.exit_code(), anyhow::anyhow!("{}: {e}", account.name)))?;
            let mut store = popsync::store::Store::open(&store_path).map_err(io)?;
            let n = store.forget(&account.name, uidls).map_err(io)?;
            ui.info(&format!(
                "{}: forgot {n} message(s); the next fetch downloads them again if they are still on the server",
                account.name
            ));
            Ok(ExitCode::Ok)
        }
        SeenCmd::Import {
            account,
            from,
            file,
        } => {
            let account = one_account(config, account)?;
            let imported = popsync::import::import_file(*from, file, &account.user, &account.host)
                .map_err(|e| fail(ExitCode::IoError, e))?;
            let _lock = sync::lock_account(&config.state_dir, &account.name)
                .map_err(|e| fail(e.exit_code(), anyhow::anyhow!("{}: {e}", account.name)))?;
            let mut store = popsync::store::Store::open(&store_path).map_err(io)?;
            let (taken, known) = store
                .import(&account.name, &imported.uidls, from.name(), now()?)
                .map_err(io)?;
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
            out(&line)?;
            Ok(ExitCode::Ok)
        }
    }
}
