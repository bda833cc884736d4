//! What an operator sees of popsync, through the real binary: every exit
//! code once, what is printed where (`-q`, default, `-v`, `--json`),
//! `popsync accounts`, and `seen list` / `seen forget`.
//!
//! Most tests run against a throwaway Dovecot (`tests/common`); the ones that
//! need a server to misbehave on cue (a malformed reply) use the scripted
//! server of `tests/fault`. The contract is /work/shared/DESIGN.md.

mod common;
mod fault;
mod ops;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use common::{
    Account, Dovecot, TestEnv, account_toml, assert_mentions, maildir_messages, require_dovecot,
    sample_message, sorted, toml_string,
};
use fault::{Fault, FaultServer, On};
use ops::*;

// ---------------------------------------------------------------------------
// Exit codes, each once through the binary.
//
// 70 (internal error) is not tested: it is reachable only through a bug (a
// panicked account task, a runtime that cannot start), and a test that could
// provoke it would be testing the bug.
// ---------------------------------------------------------------------------

#[test]
fn exit_0_after_a_sync_and_for_check_with_new_mail() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    deliver(&alice, 1, 2, 3);
    let env = TestEnv::new();
    env.write_accounts(&[account_toml(
        "alice",
        &dovecot,
        &alice,
        "implicit",
        &env.maildir("alice"),
        "",
    )]);
    let check = env.run(&["check", "--all"]);
    check.assert_code_with(0, &dovecot);
    assert_mentions(&check.stdout, "alice: 2 new", "check's stdout");
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    // Nothing new is still success for fetch.
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
}

#[test]
fn exit_1_check_without_new_mail() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    deliver(&alice, 1, 1, 3);
    let env = TestEnv::new();
    env.write_accounts(&[account_toml(
        "alice",
        &dovecot,
        &alice,
        "implicit",
        &env.maildir("alice"),
        "",
    )]);
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    let out = env.run(&["check", "alice"]);
    out.assert_code_with(1, &dovecot);
    assert_mentions(&out.stdout, "alice: 0 new", "check's stdout");
}

#[test]
fn exit_64_usage_errors() {
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}\n[accounts.a]\nhost = \"127.0.0.1\"\nuser = \"u\"\npassword = \"p\"\n\
         deliver = {{ maildir = \"/tmp/unused\" }}\n",
        env.defaults_toml()
    ));
    for args in [
        &["fetch"][..],
        &["fetch", "--all", "--jobs", "0"],
        &["fetch", "a", "--all"],
        &["fetch", "--no-such-option", "--all"],
        &["fetch", "no-such-account"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, 64, "popsync {args:?}: {out:?}");
        assert!(
            !out.stderr.trim().is_empty(),
            "popsync {args:?} must say why"
        );
    }
}

#[test]
fn exit_66_config_file_not_found() {
    let env = TestEnv::new();
    let missing = env.path().join("no-such-config.toml");
    let mut cmd = env.command();
    cmd.arg("--config").arg(&missing).args(["fetch", "--all"]);
    let out = cmd.output().expect("run popsync");
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(&stderr, &missing.to_string_lossy(), "stderr");

    // The default location (XDG_CONFIG_HOME) missing is 66 too.
    let out = env
        .command()
        .args(["fetch", "--all"])
        .output()
        .expect("run popsync");
    assert_eq!(out.status.code(), Some(66), "{out:?}");
}

#[test]
fn exit_69_connection_refused() {
    let env = TestEnv::new();
    let port = closed_port();
    env.write_config(&format!(
        "{}\n[accounts.nowhere]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\n\
         user = \"u\"\npassword = \"p\"\ndeliver = {{ maildir = {} }}\ntimeout = 5\n",
        env.defaults_toml(),
        toml_string(&env.maildir("nowhere").to_string_lossy())
    ));
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(69);
    assert_mentions(&out.stderr, &format!("127.0.0.1:{port}"), "stderr");
}

#[test]
fn exit_74_unwritable_maildir() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver(&alice, 1, 2, 3);
    let env = TestEnv::new();
    let target = if is_root() {
        // root writes through any mode bits: use a path under a regular file.
        let file = env.path().join("a-file");
        fs::write(&file, "not a directory\n").expect("write a-file");
        file.join("Maildir")
    } else {
        use std::os::unix::fs::PermissionsExt;
        let parent = env.path().join("locked");
        fs::create_dir(&parent).expect("mkdir locked");
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o500)).expect("chmod 0500");
        parent.join("Maildir")
    };
    env.write_accounts(&[account_toml(
        "alice",
        &dovecot,
        &alice,
        "implicit",
        &target,
        "retention = \"0d\"",
    )]);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(74, &dovecot);
    assert_mentions(&out.stderr, "Maildir", "stderr");
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "nothing may be deleted when delivery failed"
    );
}

#[test]
fn exit_76_malformed_server_reply() {
    let srv = FaultServer::builder()
        .messages(vec![fault_message(1)])
        .fault(
            On::Greeting,
            Fault::malformed("HELLO I am not a POP3 server"),
        )
        .start();
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}\n{}",
        env.defaults_toml(),
        fault_account("odd", &srv, &env.maildir("odd"), "")
    ));
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(76);
    assert_mentions(&out.stderr, &srv.addr(), "stderr");
}

#[test]
fn exit_77_wrong_password() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    deliver(&alice, 1, 1, 3);
    let env = TestEnv::new();
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .password("wrong")
        .maildir(&env.maildir("alice"))
        .toml()]);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(77, &dovecot);
    assert!(!out.stderr.contains("wrong\n"), "{}", out.stderr);
}

#[test]
fn exit_78_invalid_configuration() {
    let env = TestEnv::new();
    let config = env.write_config(&format!(
        "{}\n[accounts.a]\nhost = \"127.0.0.1\"\ntls = \"sometimes\"\nuser = \"u\"\n\
         password = \"p\"\ndeliver = {{ maildir = \"/tmp/unused\" }}\n",
        env.defaults_toml()
    ));
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(78);
    assert_mentions(&out.stderr, &config.to_string_lossy(), "stderr");
    assert_mentions(&out.stderr, "tls", "stderr");

    // A secret that cannot be obtained is 78 too.
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let block = Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .toml()
        .replace("password = \"secret\"", "password_command = \"exit 3\"");
    env.write_accounts(&[block]);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(78, &dovecot);
    assert_mentions(&out.stderr, "password_command", "stderr");
}

// ---------------------------------------------------------------------------
// What is printed where
// ---------------------------------------------------------------------------

/// Two accounts on one Dovecot with `n` messages each.
fn two_accounts(dovecot: &Dovecot, env: &TestEnv, n: usize) -> Vec<Vec<u8>> {
    let alice = dovecot.add_user("alice", "secret-a");
    let bob = dovecot.add_user("bob", "secret-b");
    let mut sent = deliver(&alice, 1, n, 3);
    sent.extend(deliver(&bob, 101, n, 3));
    env.write_accounts(&[
        account_toml(
            "alice",
            dovecot,
            &alice,
            "implicit",
            &env.maildir("alice"),
            "",
        ),
        account_toml("bob", dovecot, &bob, "implicit", &env.maildir("bob"), ""),
    ]);
    sent
}

#[test]
fn quiet_prints_nothing_on_success_and_still_prints_errors() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    two_accounts(&dovecot, &env, 3);

    let out = env.run(&["-q", "fetch", "--all"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(out.stdout, "", "-q: nothing on stdout");
    assert_eq!(out.stderr, "", "-q: nothing on stderr");
    assert_eq!(maildir_count(&env.maildir("alice")), 3);

    // Nothing new, still silent.
    let out = env.run(&["fetch", "--all", "-q"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));

    // An error is printed even with -q.
    let carol = dovecot.add_user("carol", "secret-c");
    env.write_accounts(&[Account::new("carol", &dovecot, &carol)
        .password("wrong")
        .maildir(&env.maildir("carol"))
        .toml()]);
    let out = env.run(&["fetch", "--all", "-q"]);
    out.assert_code_with(77, &dovecot);
    assert_eq!(out.stdout, "");
    assert_mentions(&out.stderr, "carol", "-q stderr on error");
}

#[test]
fn default_output_is_one_summary_line_per_account_on_stderr() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    two_accounts(&dovecot, &env, 3);

    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(out.stdout, "", "a fetch prints nothing on stdout");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "one summary line per account:\n{}",
        out.stderr
    );
    let names: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(names, BTreeSet::from(["alice", "bob"]), "{}", out.stderr);
    for line in &lines {
        assert!(
            line.contains('3'),
            "the summary counts the 3 messages: {line}"
        );
    }
}

#[test]
fn verbose_adds_one_line_per_message() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    two_accounts(&dovecot, &env, 3);

    let out = env.run(&["fetch", "--all", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(out.stdout, "", "-v output goes to stderr");
    for account in ["alice", "bob"] {
        for (uidl, _) in seen_list(&env, account) {
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.contains(&uidl) && l.contains(account)),
                "-v should print a line for {account}'s message {uidl}:\n{}",
                out.stderr
            );
        }
    }
    assert!(
        out.stderr.lines().count() >= 6 + 2,
        "six message lines and two summaries at least:\n{}",
        out.stderr
    );
}

#[test]
fn json_reports_each_account_with_exactly_the_designed_fields() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let small = deliver(&alice, 1, 3, 3);
    let big = sample_message(4, 400); // about 22 KB, over max_size
    alice.deliver(&big);
    let env = TestEnv::new();
    env.write_accounts(&[
        account_toml(
            "alice",
            &dovecot,
            &alice,
            "implicit",
            &env.maildir("alice"),
            "retention = \"0d\"\nmax_size = \"10KB\"",
        ),
        Account::new("broken", &dovecot, &alice)
            .password("wrong")
            .maildir(&env.maildir("broken"))
            .toml(),
    ]);

    let out = env.run(&["fetch", "--all", "--json"]);
    out.assert_code_with(77, &dovecot);
    assert_eq!(
        out.stdout.lines().count(),
        2,
        "one object per account:\n{}",
        out.stdout
    );
    let reports = json_by_account(&out);
    let fields: BTreeSet<&str> = [
        "account",
        "status",
        "new",
        "fetched",
        "bytes",
        "deleted",
        "skipped",
        "error",
        "elapsed_ms",
    ]
    .into();
    for (name, v) in &reports {
        let keys: BTreeSet<&str> = v
            .as_object()
            .expect("a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{name}: exactly the DESIGN.md fields");
        assert!(v["elapsed_ms"].is_u64(), "{name}: elapsed_ms is a number");
    }
    let a = &reports["alice"];
    let bytes: usize = small.iter().map(Vec::len).sum();
    assert_eq!(a["status"], "ok");
    assert_eq!(a["new"], 4, "new counts skipped messages too");
    assert_eq!(a["fetched"], 3);
    assert_eq!(a["bytes"], bytes);
    assert_eq!(a["deleted"], 3, "retention 0d deletes the three fetched");
    assert_eq!(a["skipped"], 1, "the big one is over max_size");
    assert!(a["error"].is_null());
    let b = &reports["broken"];
    assert_eq!(b["status"], "failed");
    assert_eq!(b["fetched"], 0);
    assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b}");

    // Only the big message is left, and nothing new to fetch next time.
    assert_eq!(alice.server_messages(), vec![big]);
}

#[test]
fn global_options_work_after_the_subcommand() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    two_accounts(&dovecot, &env, 2);
    let config = env.config_path();

    // `popsync fetch --all --config X -q`
    let out = env
        .command()
        .args(["fetch", "--all", "--config"])
        .arg(&config)
        .arg("-q")
        .output()
        .expect("run popsync");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(maildir_count(&env.maildir("alice")), 2);

    // `popsync check --all --json --config X`
    let out = env
        .command()
        .args(["check", "--all", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run popsync");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(v["new"], 0);
    }

    // `popsync accounts --config X -v`
    let out = env
        .command()
        .args(["accounts", "--config"])
        .arg(&config)
        .output()
        .expect("run popsync");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob"));
}

// ---------------------------------------------------------------------------
// popsync accounts
// ---------------------------------------------------------------------------

#[test]
fn accounts_lists_every_account_and_never_the_password() {
    let env = TestEnv::new();
    let password = "Pa55-w0rd-that-must-not-leak";
    // The command's output (the secret) is "cmd-out-42-x"; the command text,
    // which says where the secret comes from, may be shown.
    let command_secret = "cmd-out-42-x";
    env.write_config(&format!(
        "{}\n[accounts.work]\nhost = \"pop.example.com\"\nuser = \"me@example.com\"\n\
         password = \"{password}\"\ndeliver = {{ maildir = \"/tmp/work-mail\" }}\n\
         retention = \"14d\"\n\n\
         [accounts.home]\nhost = \"mail.example.net\"\ntls = \"starttls\"\nuser = \"me\"\n\
         password = \"{password}\"\ndeliver = {{ mbox = \"/tmp/home.mbox\" }}\n\n\
         [accounts.cmd]\nhost = \"pop.example.org\"\nuser = \"u\"\n\
         password_command = \"echo cmd-out-$((6*7))-x\"\n\
         deliver = {{ mda = \"procmail -f %F\" }}\n",
        env.defaults_toml()
    ));
    for args in [
        &["accounts"][..],
        &["accounts", "--json"],
        &["--json", "-v", "accounts"],
    ] {
        let out = env.run(args);
        out.assert_code(0);
        for secret in [password, command_secret] {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "popsync {args:?} printed a secret:\n{out:?}"
            );
        }
        for needle in [
            "work",
            "home",
            "pop.example.com",
            "mail.example.net",
            "me@example.com",
        ] {
            assert!(
                out.stdout.contains(needle),
                "popsync {args:?}: {needle}\n{out:?}"
            );
        }
        assert_eq!(
            out.stdout.lines().count(),
            3,
            "one line per account:\n{}",
            out.stdout
        );
    }
    let out = env.run(&["accounts", "--json"]);
    for line in out.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert!(v.get("password").is_none(), "{line}");
    }
}

// ---------------------------------------------------------------------------
// seen list / seen forget
// ---------------------------------------------------------------------------

#[test]
fn seen_forget_makes_the_next_fetch_download_exactly_that_message_again() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver(&alice, 1, 5, 3);
    let env = TestEnv::new();
    let maildir = env.maildir("alice");
    env.write_accounts(&[account_toml(
        "alice", &dovecot, &alice, "implicit", &maildir, "",
    )]);
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    let seen = seen_list(&env, "alice");
    assert_eq!(seen.len(), 5, "seen list shows one line per message");
    let uidls: BTreeSet<&String> = seen.iter().map(|(u, _)| u).collect();
    assert_eq!(uidls.len(), 5, "distinct UIDLs: {seen:?}");
    let (forgotten, location) = &seen[2];
    let again = fs::read(PathBuf::from(location))
        .unwrap_or_else(|e| panic!("seen list's location {location}: {e}"));

    let out = env.run(&["seen", "forget", "alice", forgotten]);
    out.assert_code(0);
    let seen_after: Vec<String> = seen_list(&env, "alice")
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    assert_eq!(seen_after.len(), 4);
    assert!(!seen_after.contains(forgotten));

    let out = env.run(&["fetch", "--all", "--json"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(json_by_account(&out)["alice"]["fetched"], 1, "{out:?}");
    let mut expected = sent;
    expected.push(again);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(expected),
        "exactly the forgotten message is downloaded again"
    );
    assert_eq!(seen_list(&env, "alice").len(), 5);
}

#[test]
fn help_lists_every_exit_code_of_the_design() {
    let env = TestEnv::new();
    let out = env.run(&["--help"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for code in [
        "0", "64", "66", "69", "70", "74", "75", "76", "77", "78", "130", "143",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == code)),
            "--help does not list exit code {code}:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("SIGINT") && out.stdout.contains("SIGTERM"));
}
