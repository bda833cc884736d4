//! The same user-level checks against every real POP3 server of the matrix
//! (Dovecot, Courier, Cyrus), each started once for this test binary; every
//! test brings its own mailbox, so tests stay independent. What a user would
//! check: the bytes in the Maildir against the originals and the server's own
//! copy, what is left on the server, the exit code, stdout and stderr.
//!
//! Test names read `SERVER::behaviour`, e.g. `cyrus::fetch_over_stls_is_byte_exact`.
//! The contract is /work/shared/DESIGN.md (Promises 1 and 2, Retention,
//! Protocol coverage).

mod common;
mod mailcheck;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use common::servers::{Mailbox, PopServer};
use common::{Account, Output, TestEnv, maildir_messages, sample_message, sorted};
use mailcheck::{
    assert_same_messages, count_entries, kill9, message_of_size, spawn, wait_while_running,
};

fn dovecot() -> Option<&'static dyn PopServer> {
    common::Dovecot::shared().map(|s| s as &dyn PopServer)
}

fn courier() -> Option<&'static dyn PopServer> {
    common::courier::Courier::shared().map(|s| s as &dyn PopServer)
}

fn cyrus() -> Option<&'static dyn PopServer> {
    common::cyrus::Cyrus::shared().map(|s| s as &dyn PopServer)
}

/// One test function per server for each scenario below.
macro_rules! matrix {
    ($($scenario:ident),* $(,)?) => {
        matrix!(@server dovecot, $($scenario),*);
        matrix!(@server courier, $($scenario),*);
        matrix!(@server cyrus, $($scenario),*);
    };
    (@server $server:ident, $($scenario:ident),*) => {
        mod $server {
            $(
                #[test]
                fn $scenario() {
                    match super::$server() {
                        Some(server) => super::$scenario(server),
                        // `cannot_run` failed the test or said "skipped".
                        None => {}
                    }
                }
            )*
        }
    };
}

matrix!(
    fetch_over_pop3s_is_byte_exact,
    fetch_over_stls_is_byte_exact,
    every_offered_login_mechanism_fetches,
    retention_0d_leaves_the_server_empty,
    retention_14d_deletes_only_after_fourteen_days,
    killed_mid_fetch_then_rerun_delivers_each_message_once,
    check_peek_probe_and_dry_run_change_nothing,
);

static MAILBOXES: AtomicUsize = AtomicUsize::new(0);

/// A new mailbox with a name unique in this test binary.
fn mailbox(server: &dyn PopServer) -> Box<dyn Mailbox> {
    let n = MAILBOXES.fetch_add(1, Ordering::Relaxed);
    server.add_mailbox(&format!("m{n}"), &format!("pw{n}x"))
}

/// A message whose headers hold raw UTF-8 (RFC 6532), which a server may
/// rewrite unless the client asked for UTF8 (RFC 6856).
fn utf8_header_message() -> Vec<u8> {
    "From: Jörg Müller <joerg@example.org>\n\
     To: Zoë <zoe@example.net>\n\
     Subject: Grüße aus Köln\n\
     Date: Tue, 3 Jun 2025 09:00:00 +0200\n\
     Message-ID: <utf8.popsync-test@example.org>\n\
     MIME-Version: 1.0\n\
     Content-Type: text/plain; charset=utf-8\n\
     Content-Transfer-Encoding: 8bit\n\
     \n\
     Straße, naïve café.\n"
        .as_bytes()
        .to_vec()
}

/// The sample mail every scenario starts from: the awkward lines of
/// `sample_message`, sizes from small to a few hundred KB, raw UTF-8 headers.
fn originals() -> Vec<Vec<u8>> {
    let mut mail: Vec<Vec<u8>> = (1..=4).map(|i| sample_message(i, i * i * 40)).collect();
    mail.push(message_of_size(9, 300_000, true));
    mail.push(utf8_header_message());
    mail
}

/// Delivers `mail` and returns the server's own copy of each message, in
/// order, after checking that each holds its original unchanged (a server
/// may put a trace header in front; nothing else may differ).
fn deliver(server: &dyn PopServer, mailbox: &dyn Mailbox, mail: &[Vec<u8>]) -> Vec<Vec<u8>> {
    for m in mail {
        mailbox.deliver(m);
    }
    let copy = mailbox.server_messages();
    assert_eq!(
        copy.len(),
        mail.len(),
        "{}: the server holds {} messages, {} were delivered",
        server.kind(),
        copy.len(),
        mail.len()
    );
    for (i, (stored, original)) in copy.iter().zip(mail).enumerate() {
        if server.stores_verbatim() {
            assert!(
                stored == original,
                "{}: message {i} is not stored as delivered:\n{}",
                server.kind(),
                String::from_utf8_lossy(stored)
            );
            continue;
        }
        // Every header line but Return-Path kept, and the body unchanged.
        let text = String::from_utf8_lossy(original);
        let (head, body) = text.split_once("\n\n").expect("a header and a body");
        let stored = String::from_utf8_lossy(stored);
        assert!(
            stored.ends_with(&format!("\n\n{body}"))
                && head
                    .lines()
                    .filter(|l| !l.starts_with("Return-Path:"))
                    .all(|l| stored.contains(l)),
            "{}: message {i} is not stored as delivered:\n{stored}",
            server.kind(),
        );
    }
    copy
}

/// A TestEnv with one account "acct" on `mailbox`, fetching into its Maildir.
fn env_for(server: &dyn PopServer, mailbox: &dyn Mailbox, tls: &str, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let account = Account::on("acct", server, mailbox)
        .tls(tls)
        .maildir(&env.maildir("acct"))
        .extra(extra);
    env.write_accounts(&[account.toml()]);
    env
}

static MINUTES: AtomicI64 = AtomicI64::new(0);

/// `popsync ARGS` with a clock a minute on from the last run's: Courier
/// announces LOGIN-DELAY 10, which popsync honours, so runs as close
/// together as a test's would be refused.
fn run(env: &TestEnv, args: &[&str]) -> Output {
    let minute = MINUTES.fetch_add(1, Ordering::Relaxed);
    let now = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").expect("a valid time")
        + chrono::Duration::minutes(minute);
    env.run_with_env(args, &[("POPSYNC_NOW", &now.to_rfc3339())])
}

fn expect(out: &Output, code: i32, server: &dyn PopServer) {
    assert_eq!(
        out.code,
        code,
        "{}: popsync exited {} (expected {code})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server log ---\n{}",
        server.kind(),
        out.code,
        out.stdout,
        out.stderr,
        server.log()
    );
}

fn fetch_is_byte_exact(server: &dyn PopServer, tls: &str) {
    let mb = mailbox(server);
    let mail = originals();
    let copy = deliver(server, &*mb, &mail);
    let env = env_for(server, &*mb, tls, "");

    let out = run(&env, &["fetch", "--all", "-q"]);
    expect(&out, 0, server);
    assert_eq!(out.stderr, "", "-q prints nothing on success");
    assert_same_messages(
        &maildir_messages(&env.maildir("acct")),
        &sorted(copy),
        &format!("{} over {tls}", server.kind()),
    );
    assert_eq!(mb.server_messages().len(), mail.len(), "retention forever");

    let again = run(&env, &["fetch", "--all", "--json"]);
    expect(&again, 0, server);
    assert!(
        again.stdout.contains("\"fetched\":0"),
        "a second run fetches nothing: {}",
        again.stdout
    );
    assert_eq!(maildir_messages(&env.maildir("acct")).len(), mail.len());
}

fn fetch_over_pop3s_is_byte_exact(server: &dyn PopServer) {
    fetch_is_byte_exact(server, "implicit");
}

fn fetch_over_stls_is_byte_exact(server: &dyn PopServer) {
    fetch_is_byte_exact(server, "starttls");
}

fn every_offered_login_mechanism_fetches(server: &dyn PopServer) {
    let mb = mailbox(server);
    let mail = vec![sample_message(1, 3)];
    let copy = deliver(server, &*mb, &mail);
    for mech in server.mechanisms() {
        for tls in ["implicit", "starttls"] {
            let env = env_for(server, &*mb, tls, &format!("auth = [\"{mech}\"]"));
            let out = run(&env, &["fetch", "--all", "-v"]);
            if mech == "apop" && tls == "starttls" {
                // Its timestamp came in the clear-text greeting (RFC 2595).
                expect(&out, 77, server);
                assert!(out.stderr.contains("RFC 2595"), "{}", out.stderr);
                continue;
            }
            expect(&out, 0, server);
            assert!(
                out.stderr
                    .to_ascii_lowercase()
                    .contains(&format!("with {mech}")),
                "{}: {mech} over {tls} was not the mechanism used:\n{}",
                server.kind(),
                out.stderr
            );
            assert_eq!(
                maildir_messages(&env.maildir("acct")),
                copy,
                "{}: {mech} over {tls}",
                server.kind()
            );
        }
    }
}

fn retention_0d_leaves_the_server_empty(server: &dyn PopServer) {
    let mb = mailbox(server);
    // Enough messages that removing them takes the server a moment after
    // its +OK to QUIT (Courier answers first, then removes; over TLS it
    // stopped half-way when the client hung up at once).
    let mut mail = originals();
    mail.extend((0..150).map(|i| message_of_size(100 + i, 3000, false)));
    let copy = deliver(server, &*mb, &mail);
    let env = env_for(server, &*mb, "implicit", "retention = \"0d\"");
    let out = run(&env, &["fetch", "--all", "--json"]);
    expect(&out, 0, server);
    assert!(
        out.stdout.contains(&format!("\"deleted\":{}", mail.len())),
        "{}",
        out.stdout
    );
    assert_same_messages(
        &maildir_messages(&env.maildir("acct")),
        &sorted(copy),
        server.kind(),
    );
    assert_eq!(
        mb.server_messages().len(),
        0,
        "{}: retention 0d must leave the server empty",
        server.kind()
    );
}

fn retention_14d_deletes_only_after_fourteen_days(server: &dyn PopServer) {
    let mb = mailbox(server);
    let mail = originals();
    let copy = deliver(server, &*mb, &mail);
    let env = env_for(server, &*mb, "starttls", "retention = \"14d\"");
    let at = |now: &str| env.run_with_env(&["fetch", "--all"], &[("POPSYNC_NOW", now)]);

    expect(&at("2030-03-01T12:00:00Z"), 0, server);
    assert_eq!(mb.server_messages().len(), mail.len(), "kept on day 0");
    expect(&at("2030-03-14T12:00:00Z"), 0, server);
    assert_eq!(mb.server_messages().len(), mail.len(), "kept on day 13");
    expect(&at("2030-03-15T12:00:01Z"), 0, server);
    assert_eq!(
        mb.server_messages().len(),
        0,
        "{}: deleted after 14 days",
        server.kind()
    );
    // Downloaded once, on day 0; the DELE did not download again.
    assert_same_messages(
        &maildir_messages(&env.maildir("acct")),
        &sorted(copy),
        server.kind(),
    );
}

fn killed_mid_fetch_then_rerun_delivers_each_message_once(server: &dyn PopServer) {
    const COUNT: usize = 200;
    let mb = mailbox(server);
    let mail: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| message_of_size(i, 2000 + (i * 37) % 3000, i % 2 == 0))
        .collect();
    let copy = deliver(server, &*mb, &mail);
    let env = env_for(server, &*mb, "implicit", "retention = \"0d\"");
    let maildir = env.maildir("acct");

    let mut child = spawn(&env, &["fetch", "--all"], "killed");
    let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
        count_entries(&maildir.join("tmp")) + count_entries(&maildir.join("new")) >= 60
    });
    let interrupted = kill9(&mut child);
    assert!(
        reached && interrupted,
        "{}: the run ended before it could be killed:\n{}",
        server.kind(),
        mailcheck::spawned_stderr(&env, "killed")
    );
    let killed_at = maildir_messages(&maildir).len();
    assert!(killed_at < COUNT, "killed mid-fetch, not after it");

    let out = run(&env, &["fetch", "--all"]);
    expect(&out, 0, server);
    assert_same_messages(&maildir_messages(&maildir), &sorted(copy), server.kind());
    assert_eq!(
        count_entries(&maildir.join("tmp")),
        0,
        "nothing left in tmp/"
    );
    assert_eq!(
        mb.server_messages().len(),
        0,
        "{}: retention 0d, everything delivered",
        server.kind()
    );
}

fn check_peek_probe_and_dry_run_change_nothing(server: &dyn PopServer) {
    let mb = mailbox(server);
    let mail = originals();
    let copy = deliver(server, &*mb, &mail);
    let env = env_for(server, &*mb, "starttls", "retention = \"0d\"");
    let total: usize = copy.iter().map(Vec::len).sum();

    let check = run(&env, &["check", "acct"]);
    expect(&check, 0, server);
    assert!(
        check
            .stdout
            .starts_with(&format!("acct: {} new (", mail.len())),
        "{}",
        check.stdout
    );
    // LIST counts CRLF line ends: more than the LF bytes stored.
    let listed: usize = check
        .stdout
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {:?}", check.stdout));
    assert!(listed >= total, "check counts {listed} bytes of {total}");

    let peek = run(&env, &["peek", "acct"]);
    expect(&peek, 0, server);
    for subject in ["Test message 1", "Test message 4", "bulk message 9"] {
        assert!(
            peek.stdout.contains(subject),
            "peek lacks {subject:?}:\n{}",
            peek.stdout
        );
    }

    let probe = run(&env, &["probe", "acct", "--login"]);
    expect(&probe, 0, server);
    assert!(probe.stdout.contains("ok ("), "{}", probe.stdout);

    let dry = run(&env, &["fetch", "acct", "--dry-run"]);
    expect(&dry, 0, server);
    let planned: Vec<&str> = dry.stdout.lines().collect();
    assert_eq!(planned.len(), mail.len(), "{}", dry.stdout);
    assert!(
        planned.iter().all(|l| l.starts_with("fetch ")),
        "{}",
        dry.stdout
    );

    assert!(maildir_messages(&env.maildir("acct")).is_empty());
    assert_eq!(
        mb.server_messages(),
        copy,
        "{}: check, peek, probe and --dry-run leave the server as it was",
        server.kind()
    );
    // And the real fetch still finds everything new.
    expect(&run(&env, &["fetch", "acct"]), 0, server);
    assert_same_messages(
        &maildir_messages(&env.maildir("acct")),
        &sorted(copy),
        server.kind(),
    );
    assert!(mb.server_messages().is_empty());
}

/// Cyrus with `popminpoll`: CAPA says LOGIN-DELAY 60, and the server itself
/// refuses a login that comes too soon. popsync skips a run it knows to be
/// too soon without logging in; a run that does not know (a new seen-store)
/// is refused by the server: 75 either way, nothing delivered, no mail lost.
#[test]
fn cyrus_popminpoll_refusals_are_temporary() {
    let Some(cyrus) = common::cyrus::Cyrus::start(&["--popminpoll", "1"]) else {
        return;
    };
    let mb = mailbox(&cyrus);
    let copy = deliver(&cyrus, &*mb, &[sample_message(1, 2)]);
    let env = env_for(&cyrus, &*mb, "implicit", "");
    expect(&env.run(&["fetch", "--all"]), 0, &cyrus);
    assert_eq!(maildir_messages(&env.maildir("acct")), copy);

    mb.deliver(&sample_message(2, 2));
    let known = env.run(&["fetch", "--all"]);
    expect(&known, 75, &cyrus);
    assert!(
        known
            .stderr
            .contains("allows a login only every 60 s (LOGIN-DELAY)"),
        "{}",
        known.stderr
    );

    let stranger = env_for(&cyrus, &*mb, "implicit", "");
    let refused = stranger.run(&["fetch", "--all"]);
    expect(&refused, 75, &cyrus);
    assert!(
        refused.stderr.contains("[LOGIN-DELAY"),
        "{}",
        refused.stderr
    );
    assert!(maildir_messages(&stranger.maildir("acct")).is_empty());
    assert_eq!(mb.server_messages().len(), 2, "nothing deleted");
}

/// Courier announces LOGIN-DELAY 10 (without enforcing it): popsync honours
/// it for a run right after another, with exit 75 and when to try again.
#[test]
fn courier_login_delay_is_honoured() {
    let Some(courier) = courier() else {
        return;
    };
    let mb = mailbox(courier);
    deliver(courier, &*mb, &[sample_message(1, 2)]);
    let env = env_for(courier, &*mb, "starttls", "");
    expect(&env.run(&["fetch", "--all"]), 0, courier);
    let again = env.run(&["check", "--all"]);
    expect(&again, 75, courier);
    assert!(
        again
            .stderr
            .contains("allows a login only every 10 s (LOGIN-DELAY)"),
        "{}",
        again.stderr
    );
}
