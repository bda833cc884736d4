//! `on_new_mail` through the real binary against the scripted server: run
//! once per account after a fetch that delivered mail, with the run's
//! numbers in `POPSYNC_*` and the account's JSON line on stdin; not run when
//! nothing came (unless `on_new_mail_always`), nor by `--dry-run` or
//! `check`; bounded by `command_timeout`; its failure is reported and changes
//! neither the exit code nor what was delivered.

mod common;
mod fault;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{TestEnv, assert_contains, sorted, toml_string};
use fault::FaultServer;

/// A hook that writes its POPSYNC_* variables and its stdin beside the config.
fn recorder(dir: &Path) -> String {
    let out = dir.join("hook");
    format!(
        "on_new_mail = {}\n",
        toml_string(&format!(
            "env | grep ^POPSYNC_ | sort > {0}.env; cat > {0}.stdin",
            out.display()
        ))
    )
}

/// What the recorder saw, if it ran: its variables and its stdin.
fn recorded(dir: &Path) -> Option<(BTreeMap<String, String>, serde_json::Value)> {
    let env = fs::read_to_string(dir.join("hook.env")).ok()?;
    let vars = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let stdin = fs::read_to_string(dir.join("hook.stdin")).expect("hook stdin");
    let json = serde_json::from_str(stdin.trim()).expect("stdin is one JSON line");
    Some((vars, json))
}

fn forget_recording(dir: &Path) {
    let _ = fs::remove_file(dir.join("hook.env"));
    let _ = fs::remove_file(dir.join("hook.stdin"));
}

#[test]
fn runs_after_a_fetch_that_delivered_with_the_numbers_and_the_json_line() {
    let mail = fault::messages(2);
    let bytes: usize = mail.iter().map(Vec::len).sum();
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let hook = recorder(env.path());
    let out = fault::fetch(&env, &srv, &format!("retention = \"0d\"\n{hook}"), &["-q"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "", "quiet when the hook succeeds");
    assert_eq!(fault::delivered(&env), sorted(mail));

    let (vars, json) = recorded(env.path()).expect("the hook ran");
    assert_eq!(vars["POPSYNC_ACCOUNT"], fault::ACCOUNT);
    assert_eq!(vars["POPSYNC_FETCHED"], "2");
    assert_eq!(vars["POPSYNC_BYTES"], bytes.to_string());
    assert_eq!(vars["POPSYNC_DELETED"], "2");
    assert_eq!(vars["POPSYNC_STATUS"], "ok");
    assert_contains(&vars["POPSYNC_TARGET"], "maildir ", "POPSYNC_TARGET");
    assert_eq!(json["account"], fault::ACCOUNT);
    assert_eq!(json["fetched"], 2);
    assert_eq!(json["bytes"], bytes as u64);

    // Nothing new: the hook stays quiet.
    forget_recording(env.path());
    let again = fault::fetch(&env, &srv, &hook, &["-q"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        recorded(env.path()).is_none(),
        "the hook ran without new mail"
    );
}

#[test]
fn with_on_new_mail_always_it_runs_after_every_run() {
    let srv = FaultServer::builder().messages(Vec::new()).start();
    let env = TestEnv::new();
    let extra = format!("{}on_new_mail_always = true\n", recorder(env.path()));
    let out = fault::fetch(&env, &srv, &extra, &["-q"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (vars, _) = recorded(env.path()).expect("the hook ran although nothing came");
    assert_eq!(vars["POPSYNC_FETCHED"], "0");
}

#[test]
fn dry_runs_and_check_never_run_it() {
    let srv = FaultServer::builder().messages(fault::messages(1)).start();
    let env = TestEnv::new();
    let extra = format!("{}on_new_mail_always = true\n", recorder(env.path()));
    let dry = fault::fetch(&env, &srv, &extra, &["--dry-run", "-q"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let check = env.run_fault(
        &srv,
        fault::FETCH_TIMEOUT_SECS,
        &extra,
        &["check", "test", "-q"],
        None,
    );
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        recorded(env.path()).is_none(),
        "a dry run or check ran the hook"
    );
}

#[test]
fn a_failing_hook_is_reported_and_changes_nothing_else() {
    let mail = fault::messages(2);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let out = fault::fetch(
        &env,
        &srv,
        "on_new_mail = \"echo boom >&2; exit 3\"\n",
        &["-q"],
    );
    assert_eq!(
        out.code, 0,
        "the hook's failure is not the run's: {}",
        out.stderr
    );
    assert_contains(&out.stderr, "on_new_mail", "stderr");
    assert_contains(&out.stderr, "boom", "stderr (the hook's own words)");
    assert_contains(&out.stderr, "exit status: 3", "stderr (how it failed)");
    assert_eq!(fault::delivered(&env), sorted(mail));
}

#[test]
fn a_hook_that_hangs_is_killed_at_command_timeout() {
    let srv = FaultServer::builder().messages(fault::messages(1)).start();
    let env = TestEnv::new();
    let out = fault::fetch(
        &env,
        &srv,
        "on_new_mail = \"sleep 60\"\ncommand_timeout = 1\n",
        &["-q"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_contains(&out.stderr, "did not finish within 1s", "stderr");
    assert_eq!(fault::delivered(&env).len(), 1);
}
