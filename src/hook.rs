//! `on_new_mail`: a command run once per account after a `fetch` that
//! delivered mail (after every run with `on_new_mail_always`), to tell a
//! person or another program: `notify-send`, `notmuch new`, a metrics file.
//! It gets the run's numbers in `POPSYNC_*` variables and the account's
//! `--json` line on its standard input, is bounded by `command_timeout`, and
//! whatever it does, what was delivered stays delivered: its failure is
//! reported, never the run's exit code.

use crate::command::{self, RunError};
use crate::config::Account;
use crate::report::AccountReport;
use crate::sanitize::sanitize;
use crate::ui::Ui;

/// Run the account's `on_new_mail` command for `report`, if it has one and
/// the run calls for it. A failure is reported on stderr even with `-q`
/// (something the user set up is broken), but changes no exit code.
pub fn after_run(account: &Account, report: &AccountReport, ui: &Ui) {
    let Some(cmd) = &account.on_new_mail else {
        return;
    };
    if report.fetched == 0 && !account.on_new_mail_always {
        return;
    }
    let env = [
        ("POPSYNC_ACCOUNT", account.name.clone()),
        ("POPSYNC_FETCHED", report.fetched.to_string()),
        ("POPSYNC_BYTES", report.bytes.to_string()),
        ("POPSYNC_DELETED", report.deleted.to_string()),
        ("POPSYNC_TARGET", account.deliver.describe()),
        ("POPSYNC_STATUS", report.status.to_owned()),
    ];
    let mut json = serde_json::to_string(report).unwrap_or_default();
    json.push('\n');
    let outcome = command::blocking(|| {
        command::run_shell_with_env(cmd, json.as_bytes(), &env, account.command_timeout)
    });
    let problem = match outcome {
        Ok(done) if done.status.success() => return,
        Ok(done) => {
            let stderr = sanitize(done.stderr.trim().as_bytes(), 300);
            if stderr.is_empty() {
                format!("failed ({})", done.status)
            } else {
                format!("failed ({}): {stderr}", done.status)
            }
        }
        Err(RunError::Stopped) => "was stopped with popsync".to_owned(),
        Err(e) => e.to_string(),
    };
    ui.error(&format!(
        "{}: on_new_mail `{}` {problem}; the mail it was told about is delivered all the same",
        account.name,
        sanitize(cmd.as_bytes(), 200)
    ));
}
