//! The binary's edge: parse the command line, run, print errors (the only
//! place that does), and exit with the code `exit::merge` decided.

use std::process::ExitCode as ProcessExit;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;

use popsync::cli::{
    AuthCmd, CheckArgs, Cli, Cmd, FetchArgs, PeekArgs, ProbeArgs, SeenCmd, Selection,
};
use popsync::config::{self, Config};
use popsync::exit::{self, ExitCode};
use popsync::report::AccountReport;
use popsync::runner::{self, Job};
use popsync::seen;
use popsync::stop;
use popsync::sync::RunOptions;
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
        Cmd::Auth(cmd) => auth(&config, cmd, ui),
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
    let accounts: Vec<_> = selected.into_iter().cloned().collect();
    let opts = RunOptions {
        state_dir: config.state_dir.clone(),
        now: now()?,
        dry_run,
        accept_uidl_reset,
        ui,
    };
    runner::run_accounts(accounts, jobs, opts, job, report_account)
        .map_err(|e| fail(e.exit_code(), e))
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
    let report = runtime.block_on(popsync::probe::probe(
        &account,
        &config.state_dir,
        args.login,
        &ui,
    ));
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
    for a in &config.accounts {
        print_line(&popsync::accounts::line(a, ui.json))?;
    }
    Ok(ExitCode::Ok)
}

fn print_line(line: &str) -> Result<(), Failure> {
    ui::stdout_line(line)
        .context("cannot write to stdout")
        .map_err(|e| fail(ExitCode::IoError, e))
}

fn seen(config: &Config, cmd: &SeenCmd, ui: Ui) -> Result<ExitCode, Failure> {
    let failed = |e: seen::SeenError| fail(e.exit_code(), e);
    let state_dir = &config.state_dir;
    match cmd {
        SeenCmd::List { account } => {
            let account = one_account(config, account)?;
            for line in seen::list(state_dir, &account, ui.json).map_err(failed)? {
                print_line(&line)?;
            }
        }
        SeenCmd::Forget { account, uidls } => {
            let account = one_account(config, account)?;
            let n = seen::forget(state_dir, &account, uidls).map_err(failed)?;
            ui.info(&format!(
                "{}: forgot {n} message(s); the next fetch downloads them again if they are still on the server",
                account.name
            ));
        }
        SeenCmd::Import {
            account,
            from,
            file,
        } => {
            let account = one_account(config, account)?;
            let line = seen::import(state_dir, &account, *from, file, now()?).map_err(failed)?;
            print_line(&line)?;
        }
    }
    Ok(ExitCode::Ok)
}

fn auth(config: &Config, cmd: &AuthCmd, ui: Ui) -> Result<ExitCode, Failure> {
    use popsync::config::Credential;
    use popsync::oauth::{OAuthError, command};
    let state_dir = &config.state_dir;
    let failed = |name: &str| {
        let name = name.to_owned();
        move |e: OAuthError| fail(e.exit_code(), anyhow::anyhow!("{name}: {e}"))
    };
    match cmd {
        AuthCmd::Login { account, browser } => {
            let account = one_account(config, account)?;
            // The URL and the code are what the person needs: shown even with -q.
            let tell = |line: &str| ui::stderr_line(line);
            let line = command::login(&account, state_dir, *browser, &tell)
                .map_err(failed(&account.name))?;
            ui.info(&line);
        }
        AuthCmd::Status { accounts } => {
            let selected: Vec<_> = if accounts.is_empty() {
                config
                    .accounts
                    .iter()
                    .filter(|a| matches!(a.credential, Credential::OAuth(_)))
                    .collect()
            } else {
                config
                    .select(accounts, false)
                    .map_err(|e| fail(ExitCode::Usage, e))?
            };
            for account in selected {
                let line =
                    command::status(account, state_dir, ui.json).map_err(failed(&account.name))?;
                print_line(&line)?;
            }
        }
        AuthCmd::Logout { account } => {
            let account = one_account(config, account)?;
            let line = command::logout(&account, state_dir).map_err(failed(&account.name))?;
            ui.info(&line);
        }
    }
    Ok(ExitCode::Ok)
}
