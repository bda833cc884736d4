//! Progress bars appear only on a terminal: under a pty (util-linux `script`)
//! a fetch draws them; through a pipe, with -q or with --json it never does.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Run popsync under a pseudo-terminal; returns everything the terminal saw.
fn run_on_a_terminal(env: &TestEnv, args: &[&str]) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let mut line = format!(
        "{} --config {}",
        shell_quote(env!("CARGO_BIN_EXE_popsync")),
        shell_quote(&env.config_path().to_string_lossy())
    );
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let typescript = env.path().join("typescript");
    let out = Command::new("script")
        .arg("-q")
        .arg("-e")
        .arg("-c")
        .arg(&line)
        .arg(&typescript)
        .env("HOME", env.path().join("home"))
        .env("TERM", "xterm")
        .env_remove("POPSYNC_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    assert!(out.status.success(), "popsync under a pty failed: {out:?}");
    Some(String::from_utf8_lossy(&std::fs::read(&typescript).unwrap_or_default()).into_owned())
}

fn mailbox_with_mail(messages: usize) -> Option<(Dovecot, TestEnv)> {
    let dovecot = Dovecot::start()?;
    let user = dovecot.add_user("bar", "secret");
    for i in 0..messages {
        user.deliver(&sample_message(i, 200));
    }
    let env = TestEnv::new();
    let maildir = env.maildir("bar");
    env.write_accounts(&[account_toml(
        "bar", &dovecot, &user, "implicit", &maildir, "",
    )]);
    Some((dovecot, env))
}

#[test]
fn a_terminal_gets_a_progress_bar_with_messages_and_bytes() {
    let Some((_dovecot, env)) = mailbox_with_mail(40) else {
        return;
    };
    let Some(screen) = run_on_a_terminal(&env, &["fetch", "--all"]) else {
        common::cannot_run("util-linux `script` not installed");
        return;
    };
    assert!(
        screen.contains("/40 messages"),
        "no message counter on the terminal:\n{screen}"
    );
    assert!(
        screen.contains("\u{1b}["),
        "no terminal drawing at all:\n{screen}"
    );
    assert!(
        screen.contains("bar: 40 new, 40 fetched"),
        "summary missing:\n{screen}"
    );
}

#[test]
fn quiet_and_json_runs_draw_nothing_even_on_a_terminal() {
    let Some((_dovecot, env)) = mailbox_with_mail(5) else {
        return;
    };
    let Some(screen) = run_on_a_terminal(&env, &["fetch", "--all", "-q"]) else {
        return;
    };
    assert!(
        !screen.contains("messages") && !screen.contains('\u{1b}'),
        "{screen:?}"
    );
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    let screen = run_on_a_terminal(&env, &["fetch", "--all", "--json"]).unwrap();
    assert!(
        !screen.contains('\u{1b}'),
        "--json drew on the terminal: {screen:?}"
    );
    assert!(screen.contains("\"fetched\":5"), "{screen}");
}

#[test]
fn a_pipe_never_gets_progress_output() {
    let Some((_dovecot, env)) = mailbox_with_mail(20) else {
        return;
    };
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(0);
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stderr.contains("messages"),
        "{:?}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
}
