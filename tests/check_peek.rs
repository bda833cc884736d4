//! `popsync check`, `popsync peek`, and the RFC 2449 LOGIN-DELAY and
//! EXPIRE capabilities, through the real binary: against a real, throwaway
//! Dovecot where a real server matters (TOP on encoded headers, a 1 MB
//! message), and against the scripted server of `tests/fault/` for what
//! Dovecot cannot do (LOGIN-DELAY, EXPIRE, no TOP, hostile header bytes).
//! Asserted is what a user would check: the exit code, stdout and stderr,
//! the Maildir, what is left on the server. The contract is
//! /work/shared/DESIGN.md. The header filter is `filter.rs`.

mod common;
mod cpf;
mod fault;

use common::{
    Account, TestEnv, assert_contains, maildir_files, maildir_messages, require_dovecot, run_rows,
    sorted,
};
use cpf::*;
use fault::{Fault, FaultServer, On};

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_reports_new_messages_and_bytes_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let sent: Vec<Vec<u8>> = (1..=3).map(|i| plain(i, &format!("Hello {i}"))).collect();
    let (alice, env) = alice_with(&dovecot, &sent, "retention = \"0d\"");

    let out = env.run(&["check", "alice"]);
    out.assert_code_with(0, &dovecot);
    let bytes: u64 = sent.iter().map(|m| wire_size(m)).sum();
    assert_eq!(out.stdout, format!("alice: 3 new ({bytes} bytes)\n"));
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent.clone()),
        "check deletes nothing, even with retention 0d"
    );
    assert!(
        maildir_files(&env.maildir("alice")).is_empty(),
        "check downloads nothing"
    );
    assert!(
        seen_rows(&env, "alice").is_empty(),
        "check records nothing in the seen-store"
    );

    // Still new for fetch.
    let fetched = env.run(&["fetch", "alice", "--json"]);
    fetched.assert_code_with(0, &dovecot);
    assert_eq!(report(&fetched)["fetched"], 3);
}

#[test]
fn check_after_fetch_says_no_new_mail_with_exit_1_then_counts_new_arrivals() {
    let dovecot = require_dovecot!();
    let (alice, env) = alice_with(&dovecot, [&plain(1, "first")], "");
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    let none = env.run(&["check", "--all"]);
    none.assert_code_with(1, &dovecot);
    assert_eq!(none.stdout, "alice: 0 new (0 bytes)\n");

    let arrived = plain(2, "second");
    alice.deliver(&arrived);
    let one = env.run(&["check", "alice"]);
    one.assert_code_with(0, &dovecot);
    assert_eq!(
        one.stdout,
        format!("alice: 1 new ({} bytes)\n", wire_size(&arrived))
    );
}

#[test]
fn check_quiet_prints_nothing_and_answers_with_the_exit_code() {
    let dovecot = require_dovecot!();
    let (_alice, env) = alice_with(&dovecot, [&plain(1, "hello")], "");

    let yes = env.run(&["check", "--all", "-q"]);
    yes.assert_code_with(0, &dovecot);
    assert_eq!((yes.stdout.as_str(), yes.stderr.as_str()), ("", ""));

    env.run(&["fetch", "--all", "-q"])
        .assert_code_with(0, &dovecot);
    // -q before the subcommand works too (global option).
    let no = env.run(&["-q", "check", "--all"]);
    no.assert_code_with(1, &dovecot);
    assert_eq!((no.stdout.as_str(), no.stderr.as_str()), ("", ""));
}

#[test]
fn check_does_not_count_messages_that_max_size_would_skip() {
    let dovecot = require_dovecot!();
    let small = plain(1, "small");
    let large = big(2, "large", 20_000);
    let (_alice, env) = alice_with(&dovecot, [&small, &large], "max_size = \"10KB\"");

    let out = env.run(&["check", "alice"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(
        out.stdout,
        format!("alice: 1 new ({} bytes)\n", wire_size(&small)),
        "check counts what fetch would download, not what max_size skips"
    );

    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    let after = env.run(&["check", "alice"]);
    after.assert_code_with(1, &dovecot);
    assert_eq!(
        after.stdout, "alice: 0 new (0 bytes)\n",
        "a message only max_size keeps out is not new mail for check"
    );
}

#[test]
fn check_all_exits_0_when_any_account_has_new_mail_and_1_when_none_has() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let bob = dovecot.add_user("bob", "bobs secret");
    let env = dovecot_env(&dovecot, &[("alice", &alice, ""), ("bob", &bob, "")]);

    let empty = env.run(&["check", "--all"]);
    empty.assert_code_with(1, &dovecot);
    let mut lines: Vec<&str> = empty.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["alice: 0 new (0 bytes)", "bob: 0 new (0 bytes)"]);

    let m = plain(1, "for bob");
    bob.deliver(&m);
    let some = env.run(&["check", "--all"]);
    some.assert_code_with(0, &dovecot);
    let mut lines: Vec<String> = some.stdout.lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "alice: 0 new (0 bytes)".to_owned(),
            format!("bob: 1 new ({} bytes)", wire_size(&m))
        ]
    );
    // Naming the accounts works as --all does.
    env.run(&["check", "alice"]).assert_code_with(1, &dovecot);
    env.run(&["check", "alice", "bob"])
        .assert_code_with(0, &dovecot);
}

#[test]
fn check_account_failure_gives_that_failures_exit_code() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let bob = dovecot.add_user("bob", "bobs secret");
    alice.deliver(&plain(1, "for alice"));
    let env = TestEnv::new();
    env.write_accounts(&[
        Account::new("alice", &dovecot, &alice)
            .maildir(&env.maildir("alice"))
            .toml(),
        Account::new("bob", &dovecot, &bob)
            .password("wrong password")
            .maildir(&env.maildir("bob"))
            .toml(),
    ]);

    let out = env.run(&["check", "--all"]);
    out.assert_code_with(77, &dovecot);
    assert_contains(
        &out.stdout,
        "alice: 1 new (",
        "stdout (the other account is still checked)",
    );
    assert!(
        !out.stdout.contains("bob:"),
        "a failed account gets no count line:\n{}",
        out.stdout
    );
    assert_contains(&out.stderr, "bob", "stderr");
}

#[test]
fn check_does_not_count_what_the_filter_deletes_or_skips_and_deletes_nothing() {
    let dovecot = require_dovecot!();
    let ham = plain(1, "Lunch on Friday?");
    let spam = plain(2, "CHEAP V1AGRA");
    let later = plain(3, "Holiday photos [later]");
    let filter = filter_line(
        "h=$(cat); echo \"$h\" | grep -q V1AGRA && exit 1; echo \"$h\" | grep -q '\\[later\\]' && exit 2; exit 0",
    );
    let (alice, env) = alice_with(&dovecot, [&ham, &spam, &later], &filter);

    let out = env.run(&["check", "alice"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(
        out.stdout,
        format!("alice: 1 new ({} bytes)\n", wire_size(&ham)),
        "check counts only what fetch would download"
    );
    assert_eq!(
        alice.server_messages().len(),
        3,
        "check never deletes, not even what the filter condemns"
    );
    assert!(maildir_files(&env.maildir("alice")).is_empty());
}

// ---------------------------------------------------------------------------
// LOGIN-DELAY and EXPIRE (RFC 2449), scripted server
// ---------------------------------------------------------------------------

#[test]
fn login_delay_skips_a_run_before_the_delay_is_over_and_says_when_to_retry() {
    let srv = FaultServer::builder()
        .messages(small_mail(1))
        .capa(&capa_with(&["LOGIN-DELAY 900"]))
        .start();
    let env = TestEnv::new();

    run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:00:00Z"),
    )
    .assert_code(0);
    assert_eq!(srv.connections(), 1);
    let arrived = plain(2, "arrived later");
    srv.add_message(&arrived, "uid-2");

    let early = run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test", "--json"],
        Some("2026-03-01T12:10:00Z"),
    );
    early.assert_code(75);
    assert_eq!(report(&early)["status"], "temporary");
    assert_contains(&early.stderr, "LOGIN-DELAY", "stderr");
    assert_contains(&early.stderr, "12:15", "stderr (when to retry)");
    assert_eq!(
        srv.connections(),
        1,
        "the account is skipped without connecting"
    );
    assert_eq!(maildir_messages(&env.maildir(fault::ACCOUNT)).len(), 1);

    let check = run_fault(
        &env,
        &srv,
        "",
        &["check", "test"],
        Some("2026-03-01T12:14:59Z"),
    );
    check.assert_code(75);
    assert_eq!(srv.connections(), 1, "check honours LOGIN-DELAY too");
    assert_contains(&check.stderr, "12:15", "stderr (when to retry)");

    run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:15:00Z"),
    )
    .assert_code(0);
    assert_eq!(srv.connections(), 2);
    assert_eq!(
        maildir_messages(&env.maildir(fault::ACCOUNT)).len(),
        2,
        "after the delay the new message is fetched"
    );
}

#[test]
fn ignore_login_delay_logs_in_by_hand_and_the_refusal_names_it() {
    let srv = FaultServer::builder()
        .messages(small_mail(1))
        .capa(&capa_with(&["LOGIN-DELAY 900"]))
        .start();
    let env = TestEnv::new();
    run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:00:00Z"),
    )
    .assert_code(0);
    srv.add_message(&plain(2, "arrived later"), "uid-2");

    let early = run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:01:00Z"),
    );
    early.assert_code(75);
    assert_contains(
        &early.stderr,
        "--ignore-login-delay",
        "stderr (the way out by hand)",
    );
    assert_contains(
        &early.stderr,
        "popsync fetch test --ignore-login-delay",
        "stderr (the command to type)",
    );
    assert_eq!(srv.connections(), 1);

    for args in [
        &["peek", "test", "--ignore-login-delay"][..],
        &["check", "test", "--ignore-login-delay"],
        &["fetch", "test", "--ignore-login-delay"],
    ] {
        let by_hand = run_fault(&env, &srv, "", args, Some("2026-03-01T12:02:00Z"));
        assert_eq!(by_hand.code, 0, "{args:?}: {}", by_hand.stderr);
    }
    assert_eq!(srv.connections(), 4, "each run by hand logged in");
    assert_eq!(
        maildir_messages(&env.maildir(fault::ACCOUNT)).len(),
        2,
        "the run by hand fetched the new message"
    );
}

#[test]
fn with_ignore_login_delay_a_server_refusing_with_login_delay_is_still_75() {
    let srv = FaultServer::builder()
        .messages(small_mail(1))
        .fault(On::Pass, Fault::Err("[LOGIN-DELAY] wait 15 minutes".into()))
        .start();
    let env = TestEnv::new();
    let out = run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test", "--ignore-login-delay"],
        None,
    );
    out.assert_code(75);
    assert_contains(&out.stderr, "LOGIN-DELAY", "stderr");
}

/// One run of a `LoginDelay` row: `args` at `at` (`POPSYNC_NOW`), then
/// how many logins the server has seen in all, the exit code, and what
/// stderr says (when to retry).
struct Step {
    args: &'static [&'static str],
    at: &'static str,
    connections: Option<usize>,
    code: i32,
    says: &'static [&'static str],
}

/// Runs one after another against one server that announces
/// `LOGIN-DELAY 900` (or nothing, with `login_delay: false`).
struct LoginDelay {
    name: &'static str,
    login_delay: bool,
    steps: Vec<Step>,
}

impl LoginDelay {
    fn run(&self) {
        let capa = if self.login_delay {
            capa_with(&["LOGIN-DELAY 900"])
        } else {
            capa_with(&[])
        };
        let srv = FaultServer::builder()
            .messages(small_mail(1))
            .capa(&capa)
            .start();
        let env = TestEnv::new();
        for step in &self.steps {
            let out = run_fault(&env, &srv, "", step.args, Some(step.at));
            if let Some(n) = step.connections {
                assert_eq!(
                    srv.connections(),
                    n,
                    "{:?} at {}: logins so far (LOGIN-DELAY 900: {})\n\
                     exit {}\nstdout:\n{}\nstderr:\n{}",
                    step.args,
                    step.at,
                    self.login_delay,
                    out.code,
                    out.stdout,
                    out.stderr
                );
            }
            out.assert_code(step.code);
            for text in step.says {
                assert_contains(&out.stderr, text, "stderr (when to retry)");
            }
        }
    }
}

#[test]
fn login_delay_is_honoured_by_every_command_that_logs_in() {
    let fetch: &[&str] = &["fetch", "test"];
    let rows = vec![
        // README: "A server that announces LOGIN-DELAY is not logged into
        // more often than it allows": a check logs in as much as a fetch
        // does.
        LoginDelay {
            name: "login_delay_counts_the_login_of_check_too",
            login_delay: true,
            steps: vec![
                Step {
                    args: fetch,
                    at: "2026-03-01T12:00:00Z",
                    connections: None,
                    code: 0,
                    says: &[],
                },
                // The delay was over: check logs in.
                Step {
                    args: &["check", "test"],
                    at: "2026-03-01T12:15:00Z",
                    connections: Some(2),
                    code: 1,
                    says: &[],
                },
                // 5 minutes after check's login popsync must not log in again.
                Step {
                    args: fetch,
                    at: "2026-03-01T12:20:00Z",
                    connections: Some(2),
                    code: 75,
                    says: &["12:30"],
                },
            ],
        },
        // peek 5 minutes after a login does not log in again.
        LoginDelay {
            name: "peek_honours_login_delay",
            login_delay: true,
            steps: vec![
                Step {
                    args: fetch,
                    at: "2026-03-01T12:00:00Z",
                    connections: None,
                    code: 0,
                    says: &[],
                },
                Step {
                    args: &["peek", "test"],
                    at: "2026-03-01T12:05:00Z",
                    connections: Some(1),
                    code: 75,
                    says: &["12:15"],
                },
            ],
        },
        LoginDelay {
            name: "without_login_delay_runs_may_follow_each_other_at_once",
            login_delay: false,
            steps: vec![
                Step {
                    args: fetch,
                    at: "2026-03-01T12:00:00Z",
                    connections: None,
                    code: 0,
                    says: &[],
                },
                Step {
                    args: fetch,
                    at: "2026-03-01T12:00:01Z",
                    connections: Some(2),
                    code: 0,
                    says: &[],
                },
            ],
        },
    ];
    run_rows(rows, 2, |r| r.name, LoginDelay::run);
}

/// A server announcing `capa` (EXPIRE) and an account keeping mail for
/// `retention`: whether `fetch` warns on stderr (naming EXPIRE and its days)
/// and, with `quiet_too`, that `-q` then prints nothing at all.
struct Expire {
    name: &'static str,
    capa: &'static str,
    retention: &'static str,
    warns: Option<&'static str>,
    quiet_too: bool,
}

impl Expire {
    fn run(&self) {
        let srv = FaultServer::builder()
            .messages(small_mail(1))
            .capa(&capa_with(&[self.capa]))
            .start();
        let env = TestEnv::new();
        let retention = format!("retention = \"{}\"", self.retention);

        let out = run_fault(&env, &srv, &retention, &["fetch", "test"], None);
        out.assert_code(0);
        match self.warns {
            Some(days) => {
                assert_contains(&out.stderr, "EXPIRE", "stderr");
                assert_contains(&out.stderr, days, "stderr");
                assert!(
                    !out.stdout.contains("EXPIRE"),
                    "warnings go to stderr:\n{}",
                    out.stdout
                );
            }
            None => assert!(
                !out.stderr.contains("EXPIRE"),
                "{} with retention {}: no warning expected:\n{}",
                self.capa,
                self.retention,
                out.stderr
            ),
        }

        if self.quiet_too {
            let quiet = run_fault(&env, &srv, &retention, &["fetch", "test", "-q"], None);
            quiet.assert_code(0);
            assert_eq!(
                (quiet.stdout.as_str(), quiet.stderr.as_str()),
                ("", ""),
                "-q: nothing on success"
            );
        }
    }
}

#[test]
fn expire_shorter_than_retention_warns_and_a_retention_within_it_does_not() {
    let rows = vec![
        Expire {
            name: "expire_shorter_than_retention_forever_warns_on_stderr_but_not_with_quiet",
            capa: "EXPIRE 5",
            retention: "forever",
            warns: Some("5"),
            quiet_too: true,
        },
        Expire {
            name: "expire_shorter_than_14d_retention_warns",
            capa: "EXPIRE 5",
            retention: "14d",
            warns: Some("5"),
            quiet_too: false,
        },
        Expire {
            name: "expire_that_retention_stays_within_gives_no_warning (3d)",
            capa: "EXPIRE 5",
            retention: "3d",
            warns: None,
            quiet_too: false,
        },
        Expire {
            name: "expire_that_retention_stays_within_gives_no_warning (never)",
            capa: "EXPIRE NEVER",
            retention: "forever",
            warns: None,
            quiet_too: false,
        },
    ];
    run_rows(rows, 2, |r| r.name, Expire::run);
}

// ---------------------------------------------------------------------------
// peek
// ---------------------------------------------------------------------------

/// Messages with RFC 2047 encoded headers (UTF-8 Q, ISO-8859-1 B, folded).
fn encoded_mail() -> Vec<Vec<u8>> {
    vec![
        mail(
            1,
            "juergen@example.org",
            "=?ISO-8859-1?B?SvxyZ2VuIE38bGxlcg==?= <juergen@example.org>",
            "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
            4,
        ),
        mail(
            2,
            "zoe@example.org",
            "=?UTF-8?B?Wm/DqyDDmHN0ZXJnw6VyZA==?= <zoe@example.org>",
            "=?ISO-8859-1?Q?Caf=E9?= and\n =?UTF-8?Q?cr=C3=A8me_br=C3=BBl=C3=A9e?=",
            4,
        ),
        mail(
            3,
            "plain@example.org",
            "Plain Sender <plain@example.org>",
            "Plain ASCII subject",
            4,
        ),
    ]
}

const DECODED: [(&str, &str); 3] = [
    ("Jürgen Müller <juergen@example.org>", "Grüße aus Köln"),
    ("Zoë Østergård <zoe@example.org>", "Café and crème brûlée"),
    ("Plain Sender <plain@example.org>", "Plain ASCII subject"),
];

#[test]
fn peek_lists_every_message_with_decoded_headers_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let sent = encoded_mail();
    let (alice, env) = alice_with(&dovecot, &sent, "retention = \"0d\"");

    let out = env.run(&["peek", "alice"]);
    out.assert_code_with(0, &dovecot);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per message:\n{}", out.stdout);
    for (i, line) in lines.iter().enumerate() {
        let (from, subject) = DECODED[i];
        assert!(
            line.trim_start().starts_with(&format!("{} ", i + 1)),
            "line {} starts with the message number: {line:?}",
            i + 1
        );
        assert_contains(line, &wire_size(&sent[i]).to_string(), "peek line (size)");
        assert_contains(line, "new", "peek line (not fetched yet)");
        assert_contains(line, from, "peek line (decoded From)");
        assert_contains(line, subject, "peek line (decoded Subject)");
        assert_contains(line, "2 Jun 2025", "peek line (Date)");
    }
    assert!(
        !out.stdout.contains("=?"),
        "no encoded word is shown undecoded:\n{}",
        out.stdout
    );

    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "peek deletes nothing (even with retention 0d)"
    );
    assert!(
        maildir_files(&env.maildir("alice")).is_empty(),
        "peek downloads nothing"
    );
    assert!(seen_rows(&env, "alice").is_empty(), "peek records nothing");
}

#[test]
fn peek_new_lists_only_unfetched_messages_and_marks_fetched_ones_seen() {
    let dovecot = require_dovecot!();
    let first = encoded_mail();
    let (alice, env) = alice_with(&dovecot, &first[..2], "");
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    alice.deliver(&first[2]);
    let rows = seen_rows(&env, "alice");
    let delivered = snapshot(&env.maildir("alice"));

    let all = env.run(&["peek", "alice", "--json"]);
    all.assert_code_with(0, &dovecot);
    let seen: Vec<(u64, bool)> = json_lines(&all)
        .iter()
        .map(|m| (m["msg"].as_u64().unwrap(), m["seen"].as_bool().unwrap()))
        .collect();
    assert_eq!(seen, [(1, true), (2, true), (3, false)]);

    let text = env.run(&["peek", "alice"]);
    text.assert_code_with(0, &dovecot);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text.stdout);
    assert_contains(lines[0], "seen", "peek line of a fetched message");
    assert_contains(lines[2], " new ", "peek line of an unfetched message");

    let new = env.run(&["peek", "alice", "--new"]);
    new.assert_code_with(0, &dovecot);
    let lines: Vec<&str> = new.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "only the unfetched message:\n{}",
        new.stdout
    );
    assert_contains(lines[0], DECODED[2].1, "peek --new");
    assert!(lines[0].trim_start().starts_with("3 "), "{:?}", lines[0]);

    assert_eq!(
        seen_rows(&env, "alice"),
        rows,
        "peek leaves the store alone"
    );
    assert_eq!(snapshot(&env.maildir("alice")), delivered);
    assert_eq!(alice.server_messages().len(), 3);

    // Nothing new: --new lists nothing and succeeds.
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    let none = env.run(&["peek", "alice", "--new"]);
    none.assert_code_with(0, &dovecot);
    assert_eq!(none.stdout, "");
}

#[test]
fn peek_lines_shows_the_first_body_lines() {
    let dovecot = require_dovecot!();
    let (_alice, env) = alice_with(&dovecot, encoded_mail(), "");

    let out = env.run(&["peek", "alice", "--lines", "2"]);
    out.assert_code_with(0, &dovecot);
    for i in 1..=3 {
        assert_contains(
            &out.stdout,
            &format!("Body line 1 of message {i}"),
            "peek --lines 2",
        );
        assert_contains(
            &out.stdout,
            &format!("Body line 2 of message {i}"),
            "peek --lines 2",
        );
        assert!(
            !out.stdout.contains(&format!("Body line 3 of message {i}")),
            "only 2 body lines:\n{}",
            out.stdout
        );
    }

    let plain_out = env.run(&["peek", "alice"]);
    plain_out.assert_code_with(0, &dovecot);
    assert!(
        !plain_out.stdout.contains("Body line"),
        "without --lines no body is shown:\n{}",
        plain_out.stdout
    );
}

#[test]
fn peek_json_has_one_object_per_message_with_the_documented_fields() {
    let dovecot = require_dovecot!();
    let sent = encoded_mail();
    let (_alice, env) = alice_with(&dovecot, &sent, "");

    let out = env.run(&["peek", "alice", "--json", "--lines", "1"]);
    out.assert_code_with(0, &dovecot);
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 3, "{}", out.stdout);
    let mut uidls = Vec::new();
    for (i, m) in objects.iter().enumerate() {
        assert_eq!(m["msg"], (i + 1) as u64, "{m}");
        assert_eq!(m["size"], wire_size(&sent[i]), "{m}");
        assert_eq!(m["seen"], false, "{m}");
        assert_eq!(m["from"], DECODED[i].0, "{m}");
        assert_eq!(m["subject"], DECODED[i].1, "{m}");
        assert!(
            m["date"].as_str().is_some_and(|d| d.contains("2 Jun 2025")),
            "{m}"
        );
        assert_eq!(
            m["lines"],
            serde_json::json!([format!("Body line 1 of message {}", i + 1)]),
            "{m}"
        );
        let uidl = m["uidl"].as_str().expect("uidl is a string");
        assert!(!uidl.is_empty(), "{m}");
        uidls.push(uidl.to_owned());
    }
    uidls.sort();
    uidls.dedup();
    assert_eq!(uidls.len(), 3, "distinct UIDLs");

    // Global --json before the subcommand gives the same.
    let before = env.run(&["--json", "peek", "alice", "--lines", "1"]);
    before.assert_code_with(0, &dovecot);
    assert_eq!(json_lines(&before), objects);

    // The UIDLs are the ones fetch records.
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    let mut recorded: Vec<String> = seen_rows(&env, "alice")
        .iter()
        .map(|r| r["uidl"].as_str().unwrap().to_owned())
        .collect();
    recorded.sort();
    assert_eq!(recorded, uidls);
}

#[test]
fn peek_never_retrieves_or_deletes() {
    let sent = small_mail(3);
    let srv = FaultServer::builder().messages(sent.clone()).start();
    let env = TestEnv::new();

    let out = run_fault(
        &env,
        &srv,
        "retention = \"0d\"",
        &["peek", "test", "--lines", "2"],
        None,
    );
    out.assert_code(0);
    let commands = srv.commands();
    let verbs: Vec<String> = commands
        .iter()
        .map(|c| c.split(' ').next().unwrap_or_default().to_ascii_uppercase())
        .collect();
    assert!(verbs.iter().any(|v| v == "TOP"), "{commands:?}");
    assert!(
        !verbs.iter().any(|v| v == "RETR" || v == "DELE"),
        "peek sends no RETR and no DELE: {commands:?}"
    );
    assert_eq!(srv.mailbox(), sent);
    assert!(maildir_files(&env.maildir(fault::ACCOUNT)).is_empty());
}

#[test]
fn peek_neutralises_control_characters_and_escape_sequences_from_the_server() {
    let esc_b64 = "G1szMW1yZWQbWzBtIGFsZXJ0Bwdkb25l"; // "\x1b[31mred\x1b[0m alert\x07\x07done"
    let hostile = vec![
        "Return-Path: <a@b.example>\nFrom: Mallory \x1b]0;owned\x07<m@evil.example>\n\
         Subject: hi \x1b[2J\x1b[H there \x08\x08\x08\x7f\nDate: Mon, 2 Jun 2025 \x1b[5m10:00\n\n\
         body \x1b]52;c;Y2xpcGJvYXJk\x07 line\nsecond\n"
            .as_bytes()
            .to_vec(),
        format!(
            "From: =?UTF-8?B?{esc_b64}?= <x@evil.example>\nSubject: =?UTF-8?Q?evil=1B[2Jclear=0Dcr?=\n\n\
             x\n"
        )
        .into_bytes(),
        "From: bidi \u{202e}gnp.exe\u{202c} <b@evil.example>\nSubject: c1 \u{9b}31m csi \u{85} nel\n\nx\n"
            .as_bytes()
            .to_vec(),
        b"From: latin1 \xe9\xe8 raw\nSubject: raw \x00 nul and \x1b escape\n\nx\n".to_vec(),
    ];
    let srv = FaultServer::builder().messages(hostile.clone()).start();
    let env = TestEnv::new();

    let text = run_fault(&env, &srv, "", &["peek", "test", "--lines", "1"], None);
    text.assert_code(0);
    if let Some(c) = raw_control(&text.stdout) {
        panic!(
            "peek printed the raw control character {c:?} from the server:\n{:?}",
            text.stdout
        );
    }
    // One line per message plus the one body line each.
    assert_eq!(
        text.stdout.lines().count(),
        2 * hostile.len(),
        "every message stays on its own lines:\n{}",
        text.stdout
    );
    assert_contains(&text.stdout, "Mallory", "peek");
    assert_contains(&text.stdout, "red", "peek (decoded, then neutralised)");
    if let Some(c) = raw_control(&text.stderr) {
        panic!("raw control character {c:?} on stderr:\n{:?}", text.stderr);
    }

    let json = run_fault(
        &env,
        &srv,
        "",
        &["peek", "test", "--json", "--lines", "1"],
        None,
    );
    json.assert_code(0);
    let objects = json_lines(&json);
    assert_eq!(objects.len(), hostile.len());
    for m in &objects {
        for field in ["from", "subject", "date"] {
            let v = m[field].as_str().expect("a string field");
            assert!(
                raw_control(v).is_none(),
                "--json {field} carries a raw control character: {v:?}"
            );
        }
        for l in m["lines"].as_array().expect("lines is an array") {
            let l = l.as_str().expect("a body line is a string");
            assert!(
                raw_control(l).is_none(),
                "--json body line carries a raw control character: {l:?}"
            );
        }
    }
}

#[test]
fn peek_on_a_server_without_top_says_so_and_exits_69() {
    // A server that lists its capabilities without TOP, and one without
    // CAPA at all (RFC 1939 only); both answer TOP with -ERR.
    for capa in [vec!["USER", "UIDL", "PIPELINING", "RESP-CODES"], vec![]] {
        let srv = FaultServer::builder()
            .messages(small_mail(2))
            .capa(&capa)
            .fault(On::Top, Fault::err("unknown command"))
            .start();
        let env = TestEnv::new();
        let out = run_fault(&env, &srv, "", &["peek", "test"], None);
        out.assert_code(69);
        assert_contains(&out.stderr, "TOP", "stderr");
        assert_eq!(out.stdout, "", "capa {capa:?}: nothing listed");
        assert_eq!(srv.mailbox().len(), 2);
    }
}
