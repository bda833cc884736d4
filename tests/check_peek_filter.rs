//! `popsync check`, `popsync peek`, the header `filter`, and the RFC 2449
//! LOGIN-DELAY and EXPIRE capabilities, through the real binary: against a
//! real, throwaway Dovecot where a real server matters (TOP on encoded
//! headers, deleting on the server, a 1 MB message), and against the scripted
//! server of `tests/fault/` for what Dovecot cannot do (LOGIN-DELAY, EXPIRE,
//! no TOP, hostile header bytes). Asserted is what a user would check: the
//! exit code, stdout and stderr, the Maildir, what is left on the server.
//! The contract is /work/shared/DESIGN.md.

mod common;
mod fault;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Account, Dovecot, Output, TestEnv, User, maildir_files, maildir_messages, require_dovecot,
    sorted, toml_string,
};
use fault::{Fault, FaultServer, On};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A message with LF line ends: Return-Path `<sender>`, the given From and
/// Subject (raw header values), `body_lines` numbered body lines.
fn mail(i: usize, sender: &str, from: &str, subject: &str, body_lines: usize) -> Vec<u8> {
    let mut m = format!(
        "Return-Path: <{sender}>\n\
         From: {from}\n\
         To: Alice <alice@example.net>\n\
         Subject: {subject}\n\
         Date: Mon, 2 Jun 2025 10:{min:02}:00 +0000\n\
         Message-ID: <{i}.check-peek-filter@example.org>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n",
        min = i % 60
    );
    for k in 1..=body_lines {
        m.push_str(&format!("Body line {k} of message {i}\n"));
    }
    m.into_bytes()
}

/// An ordinary message `i` from `sender{i}@example.org`.
fn plain(i: usize, subject: &str) -> Vec<u8> {
    mail(
        i,
        &format!("sender{i}@example.org"),
        &format!("Sender {i} <sender{i}@example.org>"),
        subject,
        3,
    )
}

/// A message of at least `size` octets (LF line ends).
fn big(i: usize, subject: &str, size: usize) -> Vec<u8> {
    let mut m = plain(i, subject);
    let mut k = 0;
    while m.len() < size {
        k += 1;
        m.extend_from_slice(
            format!("Filler line {k:06} of a big message: lorem ipsum dolor sit amet.\n")
                .as_bytes(),
        );
    }
    m
}

/// What POP3 LIST reports for a message kept with LF line ends: its size
/// with CRLF line ends (Dovecot and the scripted server agree).
fn wire_size(m: &[u8]) -> u64 {
    (m.len() + m.iter().filter(|&&b| b == b'\n').count()) as u64
}

/// A TestEnv with one account per (name, user, extra lines) on `dovecot`,
/// each delivering into DIR/mail/NAME over POP3S.
fn dovecot_env(dovecot: &Dovecot, accounts: &[(&str, &User, &str)]) -> TestEnv {
    let env = TestEnv::new();
    let blocks: Vec<String> = accounts
        .iter()
        .map(|(name, user, extra)| {
            Account::new(name, dovecot, user)
                .maildir(&env.maildir(name))
                .extra(extra)
                .toml()
        })
        .collect();
    env.write_accounts(&blocks);
    env
}

/// `filter = "COMMAND"` as a config line.
fn filter_line(command: &str) -> String {
    format!("filter = {}", toml_string(command))
}

/// (name, bytes) of every file of a Maildir.
fn snapshot(maildir: &Path) -> Vec<(String, Vec<u8>)> {
    maildir_files(maildir)
        .into_iter()
        .map(|f| (f.name, f.bytes))
        .collect()
}

/// `seen list ACCOUNT --json`, one object per row.
fn seen_rows(env: &TestEnv, account: &str) -> Vec<serde_json::Value> {
    let out = env.run(&["seen", "list", account, "--json"]);
    out.assert_code(0);
    json_lines(&out)
}

/// stdout parsed as JSON Lines.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}\nstderr:\n{}", out.stderr))
        })
        .collect()
}

/// The `--json` report of the only account.
fn report(out: &Output) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", out.stderr))
}

/// Lines of a log file a filter appends to (empty when it does not exist).
fn log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what} should contain {needle:?}; it was:\n{haystack}"
    );
}

/// A plan line `ACTION UIDL SIZE REASON`, split.
fn plan_lines(out: &Output) -> Vec<(String, String, u64, String)> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let action = p.next().unwrap_or_default().to_owned();
            let uidl = p.next().unwrap_or_default().to_owned();
            let size = p
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("plan line without SIZE: {l:?}"));
            (action, uidl, size, p.next().unwrap_or_default().to_owned())
        })
        .collect()
}

/// `popsync ARGS` against the scripted server `srv` (account `test`,
/// timeout 5 s, plus `extra`; `TestEnv::fault_config`), with
/// `POPSYNC_NOW=now` when given.
fn run_fault(
    env: &TestEnv,
    srv: &FaultServer,
    extra: &str,
    args: &[&str],
    now: Option<&str>,
) -> Output {
    env.run_fault(srv, 5, extra, args, now)
}

/// The default CAPA of the scripted server plus `more`.
fn capa_with(more: &[&'static str]) -> Vec<&'static str> {
    let mut capa = vec!["USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES"];
    capa.extend_from_slice(more);
    capa
}

/// Is there a raw control character (C0 but LF, DEL, C1) or a bidi
/// override/isolate in `s`?
fn raw_control(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(u32::from(c), 0x200b..=0x200f | 0x202a..=0x202e | 0x2066..=0x2069)
    })
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_reports_new_messages_and_bytes_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent: Vec<Vec<u8>> = (1..=3).map(|i| plain(i, &format!("Hello {i}"))).collect();
    for m in &sent {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, "retention = \"0d\"")]);

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
    let alice = dovecot.add_user("alice", "secret");
    alice.deliver(&plain(1, "first"));
    let env = dovecot_env(&dovecot, &[("alice", &alice, "")]);
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
    let alice = dovecot.add_user("alice", "secret");
    alice.deliver(&plain(1, "hello"));
    let env = dovecot_env(&dovecot, &[("alice", &alice, "")]);

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
    let alice = dovecot.add_user("alice", "secret");
    let small = plain(1, "small");
    let large = big(2, "large", 20_000);
    alice.deliver(&small);
    alice.deliver(&large);
    let env = dovecot_env(&dovecot, &[("alice", &alice, "max_size = \"10KB\"")]);

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
    let alice = dovecot.add_user("alice", "secret");
    let ham = plain(1, "Lunch on Friday?");
    let spam = plain(2, "CHEAP V1AGRA");
    let later = plain(3, "Holiday photos [later]");
    for m in [&ham, &spam, &later] {
        alice.deliver(m);
    }
    let filter = filter_line(
        "h=$(cat); echo \"$h\" | grep -q V1AGRA && exit 1; echo \"$h\" | grep -q '\\[later\\]' && exit 2; exit 0",
    );
    let env = dovecot_env(&dovecot, &[("alice", &alice, &filter)]);

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

fn small_mail(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| plain(i, &format!("message {i}"))).collect()
}

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
fn login_delay_counts_the_login_of_check_too() {
    // README: "A server that announces LOGIN-DELAY is not logged into more
    // often than it allows": a check logs in as much as a fetch does.
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
    run_fault(
        &env,
        &srv,
        "",
        &["check", "test"],
        Some("2026-03-01T12:15:00Z"),
    )
    .assert_code(1);
    assert_eq!(srv.connections(), 2, "the delay was over: check logs in");

    let out = run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:20:00Z"),
    );
    assert_eq!(
        srv.connections(),
        2,
        "5 minutes after check's login popsync must not log in again (LOGIN-DELAY 900)\n\
         exit {}\nstderr:\n{}",
        out.code,
        out.stderr
    );
    out.assert_code(75);
    assert_contains(&out.stderr, "12:30", "stderr (when to retry)");
}

#[test]
fn peek_honours_login_delay() {
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
    let out = run_fault(
        &env,
        &srv,
        "",
        &["peek", "test"],
        Some("2026-03-01T12:05:00Z"),
    );
    assert_eq!(
        srv.connections(),
        1,
        "peek 5 minutes after a login logs in again despite LOGIN-DELAY 900\n\
         exit {}\nstdout:\n{}\nstderr:\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    out.assert_code(75);
    assert_contains(&out.stderr, "12:15", "stderr (when to retry)");
}

#[test]
fn without_login_delay_runs_may_follow_each_other_at_once() {
    let srv = FaultServer::builder().messages(small_mail(1)).start();
    let env = TestEnv::new();
    run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:00:00Z"),
    )
    .assert_code(0);
    run_fault(
        &env,
        &srv,
        "",
        &["fetch", "test"],
        Some("2026-03-01T12:00:01Z"),
    )
    .assert_code(0);
    assert_eq!(srv.connections(), 2);
}

#[test]
fn expire_shorter_than_retention_forever_warns_on_stderr_but_not_with_quiet() {
    let srv = FaultServer::builder()
        .messages(small_mail(1))
        .capa(&capa_with(&["EXPIRE 5"]))
        .start();
    let env = TestEnv::new();

    let out = run_fault(
        &env,
        &srv,
        "retention = \"forever\"",
        &["fetch", "test"],
        None,
    );
    out.assert_code(0);
    assert_contains(&out.stderr, "EXPIRE", "stderr");
    assert_contains(&out.stderr, "5", "stderr");
    assert!(
        !out.stdout.contains("EXPIRE"),
        "warnings go to stderr:\n{}",
        out.stdout
    );

    let quiet = run_fault(
        &env,
        &srv,
        "retention = \"forever\"",
        &["fetch", "test", "-q"],
        None,
    );
    quiet.assert_code(0);
    assert_eq!(
        (quiet.stdout.as_str(), quiet.stderr.as_str()),
        ("", ""),
        "-q: nothing on success"
    );
}

#[test]
fn expire_shorter_than_14d_retention_warns() {
    let srv = FaultServer::builder()
        .messages(small_mail(1))
        .capa(&capa_with(&["EXPIRE 5"]))
        .start();
    let env = TestEnv::new();
    let out = run_fault(&env, &srv, "retention = \"14d\"", &["fetch", "test"], None);
    out.assert_code(0);
    assert_contains(&out.stderr, "EXPIRE", "stderr");
}

#[test]
fn expire_that_retention_stays_within_gives_no_warning() {
    for (capa, retention) in [("EXPIRE 5", "3d"), ("EXPIRE NEVER", "forever")] {
        let srv = FaultServer::builder()
            .messages(small_mail(1))
            .capa(&capa_with(&[capa]))
            .start();
        let env = TestEnv::new();
        let out = run_fault(
            &env,
            &srv,
            &format!("retention = \"{retention}\""),
            &["fetch", "test"],
            None,
        );
        out.assert_code(0);
        assert!(
            !out.stderr.contains("EXPIRE"),
            "{capa} with retention {retention}: no warning expected:\n{}",
            out.stderr
        );
    }
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
    let alice = dovecot.add_user("alice", "secret");
    let sent = encoded_mail();
    for m in &sent {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, "retention = \"0d\"")]);

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
    let alice = dovecot.add_user("alice", "secret");
    let first = encoded_mail();
    for m in &first[..2] {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, "")]);
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
    let alice = dovecot.add_user("alice", "secret");
    for m in encoded_mail() {
        alice.deliver(&m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, "")]);

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
    let alice = dovecot.add_user("alice", "secret");
    let sent = encoded_mail();
    for m in &sent {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, "")]);

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

// ---------------------------------------------------------------------------
// The header filter
// ---------------------------------------------------------------------------

/// ham, spam (subject), ham.
fn ham_spam_ham() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        plain(1, "Minutes of the Monday meeting"),
        mail(
            2,
            "bulk@pharma.example",
            "Best Deals <deals@pharma.example>",
            "Cheap V1AGRA - 90% OFF - BUY NOW",
            3,
        ),
        plain(3, "Re: Minutes of the Monday meeting"),
    )
}

const SPAM_FILTER: &str = "grep -qi '^Subject:.*v1agra' && exit 1; exit 0";

#[test]
fn filter_exit_1_deletes_spam_on_the_server_without_downloading_it() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (ham1, spam, ham2) = ham_spam_ham();
    for m in [&ham1, &spam, &ham2] {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, &filter_line(SPAM_FILTER))]);

    let out = env.run(&["fetch", "alice", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert_contains(
        &out.stderr,
        "without downloading it (filter)",
        "stderr with -v",
    );
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(vec![ham1.clone(), ham2.clone()]),
        "the spam is gone from the server, the rest stays (retention forever)"
    );
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ham1.clone(), ham2.clone()]),
        "the spam never reaches the Maildir"
    );
    assert!(
        !maildir_messages(&env.maildir("alice"))
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("V1AGRA")),
    );

    let again = env.run(&["fetch", "alice", "--json"]);
    again.assert_code_with(0, &dovecot);
    let r = report(&again);
    assert_eq!(
        (r["fetched"].clone(), r["deleted"].clone()),
        (0.into(), 0.into()),
        "{r}"
    );
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ham1, ham2])
    );
    assert_eq!(
        seen_rows(&env, "alice").len(),
        2,
        "after the next run the store no longer lists the deleted spam"
    );
}

#[test]
fn filter_deletions_are_counted_in_json_deleted() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (ham1, spam, ham2) = ham_spam_ham();
    for m in [&ham1, &spam, &ham2] {
        alice.deliver(m);
    }
    let env = dovecot_env(&dovecot, &[("alice", &alice, &filter_line(SPAM_FILTER))]);

    let out = env.run(&["fetch", "--all", "--json"]);
    out.assert_code_with(0, &dovecot);
    let r = report(&out);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["fetched"], 2, "{r}");
    assert_eq!(r["deleted"], 1, "the filter's DELE is counted: {r}");
    assert_eq!(
        r["bytes"],
        (ham1.len() + ham2.len()) as u64,
        "only delivered octets count: {r}"
    );
    assert_eq!(alice.server_messages().len(), 2);
}

#[test]
fn filter_using_size_leaves_a_1mb_message_on_the_server_and_asks_again_next_run() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let small = plain(1, "small");
    let huge = big(2, "a 1 MB attachment", 1_000_000);
    alice.deliver(&small);
    alice.deliver(&huge);
    let env = TestEnv::new();
    let log = env.path().join("filter.log");
    let skip_big = format!(
        "cat >/dev/null; echo %S >> {log}; test %S -gt 500000 && exit 2; exit 0",
        log = log.display()
    );
    let write = |filter: &str| {
        env.write_accounts(&[Account::new("alice", &dovecot, &alice)
            .maildir(&env.maildir("alice"))
            .extra(&filter_line(filter))
            .toml()])
    };
    write(&skip_big);

    let first = env.run(&["fetch", "alice", "--json"]);
    first.assert_code_with(0, &dovecot);
    let r = report(&first);
    assert_eq!(
        (r["fetched"].clone(), r["skipped"].clone()),
        (1.into(), 1.into()),
        "{r}"
    );
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small.clone()]);
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(vec![small.clone(), huge.clone()]),
        "a skipped message stays on the server"
    );
    let mut sizes = log_lines(&log);
    sizes.sort();
    let mut expected = vec![wire_size(&small).to_string(), wire_size(&huge).to_string()];
    expected.sort();
    assert_eq!(sizes, expected, "%S is the size of each message");

    let second = env.run(&["fetch", "alice"]);
    second.assert_code_with(0, &dovecot);
    assert_eq!(
        log_lines(&log)[2..],
        [wire_size(&huge).to_string()],
        "next run the filter is asked again about the skipped message only"
    );
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small.clone()]);

    let plan = env.run(&["fetch", "alice", "--dry-run"]);
    plan.assert_code_with(0, &dovecot);
    let lines = plan_lines(&plan);
    assert_eq!(lines.len(), 2, "{}", plan.stdout);
    let skip = lines
        .iter()
        .find(|(a, ..)| a == "skip")
        .unwrap_or_else(|| panic!("no skip line:\n{}", plan.stdout));
    assert_eq!(skip.2, wire_size(&huge));
    assert_eq!(skip.3, "filter: exit 2 (not now)");

    // On a faster link the filter lets it through.
    write(&format!("echo %S >> {}; exit 0", log.display()));
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![small, huge]),
        "the 1 MB message arrives byte for byte"
    );
}

#[test]
fn filter_gets_the_headers_on_stdin_and_sender_and_size_as_arguments() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let m = plain(7, "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=");
    alice.deliver(&m);
    let env = TestEnv::new();
    let dir = env.path().display().to_string();
    // Exit 2: the filter may be asked again; nothing is delivered.
    let filter = format!("cat > {dir}/headers; echo %F %S > {dir}/args; exit 2");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&filter))
        .toml()]);

    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    let headers = fs::read(env.path().join("headers")).expect("the filter saw stdin");
    let head_end = m
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("message has a header block")
        + 1;
    let text = String::from_utf8_lossy(&headers);
    assert!(
        headers.starts_with(&m[..head_end]),
        "stdin holds the message's header block:\n{text}"
    );
    assert!(
        !text.contains("Body line"),
        "stdin holds no body lines (TOP n 0):\n{text}"
    );
    assert_eq!(
        fs::read_to_string(env.path().join("args")).unwrap(),
        format!("sender7@example.org {}\n", wire_size(&m)),
        "%F is the envelope sender (Return-Path), %S the size"
    );
    assert!(maildir_files(&env.maildir("alice")).is_empty());
}

#[test]
fn spamassassin_style_filter_script_deletes_spam_and_lets_ham_through() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let ham = plain(1, "Quarterly report");
    let flagged = {
        let mut m = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=9.1 required=5.0\n".to_vec();
        m.extend(plain(2, "Important business proposal"));
        m
    };
    let lottery = plain(3, "You are a lottery WINNER!!!");
    let bulk = mail(
        4,
        "newsletter@spam.example",
        "News <newsletter@spam.example>",
        "Weekly news",
        3,
    );
    let encoded_ham = plain(5, "=?UTF-8?Q?R=C3=A9union_de_l=27=C3=A9quipe?=");
    let all = [&ham, &flagged, &lottery, &bulk, &encoded_ham];
    for m in all {
        alice.deliver(m);
    }
    let env = TestEnv::new();
    let log = env.path().join("spamfilter.log");
    let script = env.path().join("spamfilter");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # headers on stdin, $1 = envelope sender, $2 = size (as in the README)\n\
             headers=$(cat)\n\
             echo \"$1 $2\" >> {log}\n\
             [ \"$2\" -gt 20000000 ] && exit 2\n\
             if printf '%s\\n' \"$headers\" | grep -qi '^X-Spam-Flag: *YES'; then exit 1; fi\n\
             if printf '%s\\n' \"$headers\" | grep -qiE '^Subject:.*(lottery|viagra)'; then exit 1; fi\n\
             case \"$1\" in *@spam.example) exit 1;; esac\n\
             exit 0\n",
            log = log.display()
        ),
    )
    .expect("write the filter script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod filter");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&format!("{} %F %S", script.display())))
        .toml()]);

    let out = env.run(&["fetch", "alice", "--json"]);
    out.assert_code_with(0, &dovecot);
    let r = report(&out);
    assert_eq!(
        (r["fetched"].clone(), r["deleted"].clone()),
        (2.into(), 3.into()),
        "{r}"
    );
    let hams = sorted(vec![ham.clone(), encoded_ham.clone()]);
    assert_eq!(maildir_messages(&env.maildir("alice")), hams);
    assert_eq!(
        sorted(alice.server_messages()),
        hams,
        "spam deleted on the server"
    );
    let mut args = log_lines(&log);
    args.sort();
    let mut expected: Vec<String> = [
        ("sender1@example.org", &ham),
        ("sender2@example.org", &flagged),
        ("sender3@example.org", &lottery),
        ("newsletter@spam.example", &bulk),
        ("sender5@example.org", &encoded_ham),
    ]
    .iter()
    .map(|(s, m)| format!("{s} {}", wire_size(m)))
    .collect();
    expected.sort();
    assert_eq!(args, expected, "the script got sender and size of each");
}

#[test]
fn dry_run_shows_the_filter_decisions_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (ham, spam, _) = ham_spam_ham();
    let huge = big(3, "video", 200_000);
    for m in [&ham, &spam, &huge] {
        alice.deliver(m);
    }
    let filter = format!("test %S -gt 100000 && exit 2; {SPAM_FILTER}");
    let env = dovecot_env(&dovecot, &[("alice", &alice, &filter_line(&filter))]);

    let out = env.run(&["fetch", "alice", "--dry-run"]);
    out.assert_code_with(0, &dovecot);
    let lines = plan_lines(&out);
    assert_eq!(lines.len(), 3, "one line per message:\n{}", out.stdout);
    let by_size = |m: &[u8]| {
        lines
            .iter()
            .find(|l| l.2 == wire_size(m))
            .cloned()
            .unwrap_or_else(|| panic!("no plan line of size {}:\n{}", wire_size(m), out.stdout))
    };
    let (action, _, _, _) = by_size(&ham);
    assert_eq!(action, "fetch", "{}", out.stdout);
    let (action, _, _, reason) = by_size(&spam);
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("delete", "filter: exit 1"),
        "{}",
        out.stdout
    );
    let (action, _, _, reason) = by_size(&huge);
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("skip", "filter: exit 2 (not now)"),
        "{}",
        out.stdout
    );
    // The UIDLs are the server's.
    let peek = env.run(&["peek", "alice", "--json"]);
    peek.assert_code_with(0, &dovecot);
    let mut server_uidls: Vec<String> = json_lines(&peek)
        .iter()
        .map(|m| m["uidl"].as_str().unwrap().to_owned())
        .collect();
    server_uidls.sort();
    let mut planned: Vec<String> = lines.iter().map(|l| l.1.clone()).collect();
    planned.sort();
    assert_eq!(planned, server_uidls);

    assert_eq!(
        alice.server_messages().len(),
        3,
        "--dry-run deletes nothing"
    );
    assert!(maildir_files(&env.maildir("alice")).is_empty());
    assert!(seen_rows(&env, "alice").is_empty());
}

#[test]
fn filter_is_not_asked_about_messages_already_fetched() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    alice.deliver(&plain(1, "one"));
    let env = TestEnv::new();
    let log = env.path().join("filter.log");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&format!(
            "grep '^Subject:' >> {}; exit 0",
            log.display()
        )))
        .toml()]);
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log), ["Subject: one"]);
    alice.deliver(&plain(2, "two"));
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log), ["Subject: one", "Subject: two"]);
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log).len(), 2, "nothing new, nothing asked");
}

/// Three messages; the filter misbehaves (`bad`) on the one whose subject
/// is "TRIGGER" and accepts the others.
fn filter_failure_case(bad: &str, extra: &str, expected_code: i32) -> (Output, Duration) {
    let dovecot = Dovecot::start().expect("dovecot is installed (checked by the caller)");
    let alice = dovecot.add_user("alice", "secret");
    let ok1 = plain(1, "fine");
    let trigger = plain(2, "TRIGGER");
    let ok2 = plain(3, "also fine");
    for m in [&ok1, &trigger, &ok2] {
        alice.deliver(m);
    }
    let filter = format!("if grep -q '^Subject: TRIGGER'; then {bad}; fi; exit 0");
    let env = dovecot_env(
        &dovecot,
        &[(
            "alice",
            &alice,
            &format!("{}\n{extra}", filter_line(&filter)),
        )],
    );
    let started = Instant::now();
    let out = env.run(&["fetch", "alice", "--json"]);
    let elapsed = started.elapsed();
    out.assert_code_with(expected_code, &dovecot);
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ok1.clone(), ok2.clone()]),
        "the other messages are fetched; the one the filter failed on is not"
    );
    assert_eq!(
        alice.server_messages().len(),
        3,
        "the message stays on the server"
    );
    assert_contains(&out.stderr, "filter", "stderr");
    let r = report(&out);
    assert_eq!(r["fetched"], 2, "{r}");

    // The filter heals: the message arrives, the others are not fetched twice.
    let healed = Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(extra)
        .toml();
    env.write_accounts(&[healed]);
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ok1, trigger, ok2])
    );
    (out, elapsed)
}

#[test]
fn filter_exit_75_leaves_the_message_and_exits_75_after_fetching_the_rest() {
    if !common::dovecot_installed() {
        common::cannot_run(common::DOVECOT_MISSING);
        return;
    }
    let (out, _) = filter_failure_case("exit 75", "", 75);
    assert_eq!(report(&out)["status"], "temporary");
}

#[test]
fn filter_failing_exit_status_leaves_the_message_and_exits_74_after_fetching_the_rest() {
    if !common::dovecot_installed() {
        common::cannot_run(common::DOVECOT_MISSING);
        return;
    }
    let (out, _) = filter_failure_case("echo spamd unreachable >&2; exit 3", "", 74);
    assert_eq!(report(&out)["status"], "failed");
    assert_contains(
        &out.stderr,
        "spamd unreachable",
        "stderr (the filter's own words)",
    );
}

#[test]
fn filter_killed_by_a_signal_exits_74() {
    if !common::dovecot_installed() {
        common::cannot_run(common::DOVECOT_MISSING);
        return;
    }
    filter_failure_case("kill -9 $$", "", 74);
}

#[test]
fn filter_past_command_timeout_is_killed_and_exits_74() {
    if !common::dovecot_installed() {
        common::cannot_run(common::DOVECOT_MISSING);
        return;
    }
    let (out, elapsed) = filter_failure_case("exec sleep 30", "command_timeout = 2", 74);
    assert!(
        elapsed < Duration::from_secs(20),
        "the filter is killed after command_timeout (2 s); the run took {elapsed:?}"
    );
    assert_contains(&out.stderr, "command_timeout", "stderr");
}

#[test]
fn filter_past_command_timeout_leaves_no_process_of_it_running() {
    let srv = FaultServer::builder().messages(small_mail(1)).start();
    let env = TestEnv::new();
    let pidfile = env.path().join("filter.pid");
    // The filter starts a child (as a pipeline or a script would) and hangs.
    let filter = format!("sleep 30 & echo $! > {}; wait; exit 0", pidfile.display());
    let out = run_fault(
        &env,
        &srv,
        &format!("command_timeout = 1\n{}", filter_line(&filter)),
        &["fetch", "test"],
        None,
    );
    out.assert_code(74);
    let pid = fs::read_to_string(&pidfile)
        .expect("the filter wrote its child's pid")
        .trim()
        .to_owned();
    // Give a kill a moment to land.
    std::thread::sleep(Duration::from_millis(300));
    // Dead means gone or a zombie: an orphan waits for PID 1 to reap it,
    // which some containers' PID 1 never does.
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let alive = state
        .split(") ")
        .nth(1)
        .is_some_and(|rest| !rest.starts_with('Z'));
    if alive {
        // Clean up the process this test started, by its id.
        let _ = std::process::Command::new("kill").arg(&pid).status();
    }
    assert!(
        !alive,
        "the timed-out filter's child (pid {pid}) still runs after popsync exited"
    );
    assert_eq!(srv.mailbox().len(), 1, "the message stays on the server");
}

#[test]
fn filter_arguments_are_shell_quoted_so_a_sender_cannot_inject_commands() {
    let srv = FaultServer::builder()
        .messages(vec![
            b"Return-Path: <a';touch${IFS}injected1;'b@evil.example>\nSubject: x\n\nx\n".to_vec(),
            b"Return-Path: <$(touch${IFS}injected2)@evil.example>\nSubject: y\n\ny\n".to_vec(),
            b"Return-Path: <`touch${IFS}injected3`\"x\"@evil.example>\nSubject: z\n\nz\n".to_vec(),
        ])
        .start();
    let env = TestEnv::new();
    let log = env.path().join("senders");
    let filter = format!("echo %F >> {}; exit 0", log.display());
    let out = run_fault(&env, &srv, &filter_line(&filter), &["fetch", "test"], None);
    out.assert_code(0);
    for n in 1..=3 {
        for dir in [env.path().to_path_buf(), env.path().join("home")] {
            assert!(
                !dir.join(format!("injected{n}")).exists(),
                "the envelope sender ran a command through the filter's shell"
            );
        }
    }
    let senders = log_lines(&log);
    assert_eq!(senders.len(), 3, "{senders:?}");
    assert!(
        senders.iter().any(|s| s.contains("touch${IFS}injected1")),
        "the sender reaches the filter literally: {senders:?}"
    );
    assert_eq!(maildir_messages(&env.maildir(fault::ACCOUNT)).len(), 3);
}

#[test]
fn filter_delete_never_retrieves_the_message_and_quiet_success_prints_nothing() {
    let (ham1, spam, ham2) = ham_spam_ham();
    let srv = FaultServer::builder()
        .messages(vec![ham1.clone(), spam, ham2.clone()])
        .start();
    let env = TestEnv::new();
    let out = run_fault(
        &env,
        &srv,
        &filter_line(SPAM_FILTER),
        &["fetch", "test", "-q"],
        None,
    );
    out.assert_code(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "-q: nothing on success"
    );
    let commands = srv.commands();
    assert!(
        commands.iter().any(|c| c == "TOP 2 0"),
        "headers read with TOP 2 0: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c == "RETR 2"),
        "the condemned message is never downloaded: {commands:?}"
    );
    assert!(commands.iter().any(|c| c == "DELE 2"), "{commands:?}");
    assert!(commands.iter().any(|c| c == "QUIT"), "{commands:?}");
    assert_eq!(srv.mailbox(), vec![ham1.clone(), ham2.clone()]);
    assert_eq!(
        maildir_messages(&env.maildir(fault::ACCOUNT)),
        sorted(vec![ham1, ham2])
    );
}
