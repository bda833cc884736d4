//! How popsync behaves as an operator sees it, through the real binary:
//! overlapping runs and the per-account lock, `--jobs` and how the exit codes
//! of several accounts merge, SIGINT/SIGTERM in the middle of a fetch, every
//! exit code once, what is printed where (`-q`, default, `-v`, `--json`),
//! `popsync accounts`, and `seen list` / `seen forget`.
//!
//! Most tests run against a throwaway Dovecot (`tests/common`); the ones that
//! need a server to misbehave on cue (a stall, `[IN-USE]`, a malformed reply)
//! use the scripted server of `tests/fault`. The contract is
//! /work/shared/DESIGN.md.

mod common;
mod fault;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Account, Dovecot, Output, Running, TestEnv, User, account_toml, maildir_messages,
    require_dovecot, sample_message, sorted, toml_string,
};
use fault::{Fault, FaultServer, On};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How long a background run may take before the test kills it and fails.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(90);

/// How many files `maildir`/new and cur hold (cheap: names only).
fn maildir_count(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| fs::read_dir(maildir.join(sub)).map_or(0, |d| d.count()))
        .sum()
}

/// Polls until at least `n` deliveries into `maildir` have started (files in
/// tmp/, new/ and cur/); false if `run` ended first or `limit` passed.
fn wait_for_deliveries(run: &mut Running, maildir: &Path, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let started =
            maildir_count(maildir) + fs::read_dir(maildir.join("tmp")).map_or(0, |d| d.count());
        if started >= n {
            return true;
        }
        if run.exited() {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Delivers `n` sample messages numbered from `first`, each with
/// `body_lines` extra lines, and returns them.
fn deliver(user: &User, first: usize, n: usize, body_lines: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let m = sample_message(i, body_lines);
            user.deliver(&m);
            m
        })
        .collect()
}

/// An account block for a scripted server: plain TCP (the fault server has
/// no STLS), user alice / secret, delivery into `maildir`, a short timeout.
fn fault_account(name: &str, srv: &FaultServer, maildir: &Path, extra: &str) -> String {
    format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         allow_plaintext = true\nuser = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\ntimeout = 10\n{extra}\n",
        port = srv.port(),
        maildir = toml_string(&maildir.to_string_lossy()),
    )
}

/// A small LF message for the scripted server.
fn fault_message(i: usize) -> Vec<u8> {
    format!(
        "From: sender{i}@example.org\nTo: alice@example.org\nSubject: message {i}\n\
         Message-ID: <{i}@ops.test>\n\nHello {i}.\n.a dot line\nFrom the start\n"
    )
    .into_bytes()
}

/// The `--json` objects on stdout, by account name.
fn json_by_account(out: &Output) -> std::collections::BTreeMap<String, serde_json::Value> {
    out.stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON: {line:?}: {e}\n{out:?}"));
            let name = v["account"]
                .as_str()
                .unwrap_or_else(|| panic!("no \"account\" in {line}"))
                .to_owned();
            (name, v)
        })
        .collect()
}

/// The UIDLs `popsync seen list ACCOUNT` prints (first field of each line),
/// with the location (last field).
fn seen_list(env: &TestEnv, account: &str) -> Vec<(String, String)> {
    let out = env.run(&["seen", "list", account]);
    out.assert_code(0);
    out.stdout
        .lines()
        .map(|l| {
            let uidl = l.split(' ').next().unwrap_or_default().to_owned();
            let location = l.rsplit(' ').next().unwrap_or_default().to_owned();
            (uidl, location)
        })
        .collect()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn assert_mentions(text: &str, needle: &str, what: &str) {
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "{what} should mention {needle:?}; it was:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// Overlapping runs: the per-account lock
// ---------------------------------------------------------------------------

#[test]
fn second_run_on_a_busy_account_exits_75_at_once_and_the_first_completes() {
    // RETR 2 stalls for 3 s: the first run holds the lock meanwhile.
    let mail: Vec<Vec<u8>> = (1..=4).map(fault_message).collect();
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .capa(&["USER", "UIDL", "TOP", "RESP-CODES"]) // no pipelining: one RETR at a time
        .fault(On::Retr(2), Fault::Stall(Duration::from_secs(3)))
        .times(1)
        .start();
    let env = TestEnv::new();
    let maildir = env.maildir("slow");
    env.write_config(&format!(
        "{}\n{}",
        env.defaults_toml(),
        fault_account("slow", &srv, &maildir, "")
    ));

    let mut first = env.spawn(&["fetch", "slow"]);
    assert!(
        wait_for_deliveries(&mut first, &maildir, 2, Duration::from_secs(20)),
        "the first run should fetch message 1 and then wait for message 2"
    );

    let started = Instant::now();
    let second = env.run(&["fetch", "slow"]);
    let took = started.elapsed();
    second.assert_code(75);
    assert!(
        took < Duration::from_secs(2),
        "the second run must not wait for the lock; it took {took:?}"
    );
    assert_mentions(&second.stderr, "lock", "the second run's stderr");
    assert_mentions(&second.stderr, "slow", "the second run's stderr");

    let first = first.finish_within(BACKGROUND_TIMEOUT);
    first.assert_code(0);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(mail),
        "each exactly once"
    );
    assert_eq!(
        srv.connections(),
        1,
        "the skipped run must not even connect to the server"
    );
}

#[test]
fn concurrent_full_runs_never_deliver_a_message_twice() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let env = TestEnv::new();
    let maildir = env.maildir("alice");
    env.write_accounts(&[account_toml(
        "alice", &dovecot, &alice, "implicit", &maildir, "",
    )]);

    let mut sent = Vec::new();
    for round in 0..3 {
        sent.extend(deliver(&alice, round * 100 + 1, 100, 5));
        let a = env.spawn(&["fetch", "--all"]);
        let b = env.spawn(&["fetch", "alice"]);
        let (a, b) = (
            a.finish_within(BACKGROUND_TIMEOUT),
            b.finish_within(BACKGROUND_TIMEOUT),
        );
        for out in [&a, &b] {
            assert!(
                out.code == 0 || out.code == 75,
                "round {round}: each run exits 0, or 75 when the other holds the lock\n{out:?}"
            );
            if out.code == 75 {
                assert_mentions(&out.stderr, "lock", "a skipped run's stderr");
            }
        }
        assert!(
            a.code == 0 || b.code == 0,
            "round {round}: one of the runs must do the work\n{a:?}\n{b:?}"
        );
        assert_eq!(
            maildir_messages(&maildir),
            sorted(alice.server_messages()),
            "round {round}: the Maildir must hold each message on the server exactly once"
        );
    }
    assert_eq!(maildir_messages(&maildir), sorted(sent));
}

#[test]
fn exit_75_when_another_process_holds_the_account_lock() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    deliver(&alice, 1, 2, 3);
    let env = TestEnv::new();
    let maildir = env.maildir("alice");
    env.write_accounts(&[account_toml(
        "alice", &dovecot, &alice, "implicit", &maildir, "",
    )]);

    // The lock DESIGN.md describes: $state_dir/locks/ACCOUNT.lock, flock.
    let locks = env.state_dir().join("locks");
    fs::create_dir_all(&locks).expect("create locks dir");
    let file = fs::File::create(locks.join("alice.lock")).expect("create lock file");
    file.try_lock().expect("take the account lock");

    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(75, &dovecot);
    assert_mentions(&out.stderr, "lock", "stderr");
    assert_eq!(maildir_count(&maildir), 0, "nothing fetched while locked");

    drop(file);
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(maildir_count(&maildir), 2);
}

// ---------------------------------------------------------------------------
// --jobs and merged exit codes
// ---------------------------------------------------------------------------

#[test]
fn jobs_fetch_several_accounts_correctly() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    let mut users = Vec::new();
    let mut blocks = Vec::new();
    for k in 0..6 {
        let name = format!("user{k}");
        let user = dovecot.add_user(&name, &format!("pw-{k}"));
        let mail = deliver(&user, k * 10 + 1, 3 + k, 4);
        blocks.push(account_toml(
            &name,
            &dovecot,
            &user,
            "implicit",
            &env.maildir(&name),
            "",
        ));
        users.push((name, mail));
    }
    env.write_accounts(&blocks);

    let out = env.run(&["fetch", "--all", "--jobs", "3", "--json"]);
    out.assert_code_with(0, &dovecot);
    let reports = json_by_account(&out);
    assert_eq!(reports.len(), 6, "{out:?}");
    for (name, mail) in &users {
        assert_eq!(
            maildir_messages(&env.maildir(name)),
            sorted(mail.clone()),
            "{name}: every message exactly once"
        );
        assert_eq!(reports[name]["fetched"], mail.len(), "{name}: {out:?}");
    }
}

#[test]
fn one_failing_account_does_not_stop_the_others_and_sets_the_exit_code() {
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    let mut users = Vec::new();
    let mut blocks = Vec::new();
    for k in 0..6 {
        let name = format!("user{k}");
        let user = dovecot.add_user(&name, &format!("pw-{k}"));
        let mail = deliver(&user, k * 10 + 1, 3, 4);
        let mut account = Account::new(&name, &dovecot, &user).maildir(&env.maildir(&name));
        if k == 2 {
            account = account.password("wrong password");
        }
        blocks.push(account.toml());
        users.push((name, mail));
    }
    env.write_accounts(&blocks);

    let out = env.run(&["fetch", "--all", "--jobs", "4"]);
    out.assert_code_with(77, &dovecot);
    assert_mentions(&out.stderr, "user2", "stderr");
    for (k, (name, mail)) in users.iter().enumerate() {
        let expected = if k == 2 {
            Vec::new()
        } else {
            sorted(mail.clone())
        };
        assert_eq!(
            maildir_messages(&env.maildir(name)),
            expected,
            "{name}: the others are fetched completely"
        );
    }
}

#[test]
fn temporary_and_refused_failures_merge_as_designed() {
    let dovecot = require_dovecot!();
    let good = dovecot.add_user("good", "pw-good");
    let good_mail = deliver(&good, 1, 3, 4);
    let bad = dovecot.add_user("bad", "pw-bad");
    deliver(&bad, 11, 1, 4);
    let in_use = || {
        FaultServer::builder()
            .messages(vec![fault_message(1)])
            .fault(
                On::Pass,
                Fault::err("[IN-USE] mailbox locked by another session"),
            )
            .start()
    };
    let busy1 = in_use();
    let busy2 = in_use();
    let env = TestEnv::new();
    let good_block = Account::new("good", &dovecot, &good)
        .maildir(&env.maildir("good"))
        .toml();
    let bad_block = Account::new("bad", &dovecot, &bad)
        .password("not the password")
        .maildir(&env.maildir("bad"))
        .toml();

    // Temporary first in config order, then a refused one: 77.
    env.write_accounts(&[
        fault_account("busy1", &busy1, &env.maildir("busy1"), ""),
        good_block.clone(),
        bad_block,
    ]);
    let out = env.run(&["fetch", "--all", "--json"]);
    out.assert_code_with(77, &dovecot);
    let reports = json_by_account(&out);
    assert_eq!(reports["busy1"]["status"], "temporary", "{out:?}");
    assert_eq!(reports["bad"]["status"], "failed", "{out:?}");
    assert_eq!(reports["good"]["status"], "ok", "{out:?}");
    assert_eq!(maildir_messages(&env.maildir("good")), sorted(good_mail));

    // Only temporary failures (and a success): 75.
    env.write_accounts(&[
        fault_account("busy1", &busy1, &env.maildir("busy1"), ""),
        good_block,
        fault_account("busy2", &busy2, &env.maildir("busy2"), ""),
    ]);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(75, &dovecot);
    assert_mentions(&out.stderr, "busy1", "stderr");
    assert_mentions(&out.stderr, "busy2", "stderr");
}

#[test]
fn jobs_run_accounts_at_the_same_time() {
    // Four servers that each take 1.5 s to greet: with --jobs 4 the run takes
    // about 1.5 s, one after the other it would take at least 6 s.
    let servers: Vec<FaultServer> = (0..4)
        .map(|_| {
            FaultServer::builder()
                .messages(vec![fault_message(1)])
                .fault(On::Greeting, Fault::Stall(Duration::from_millis(1500)))
                .start()
        })
        .collect();
    let env = TestEnv::new();
    let mut config = env.defaults_toml();
    for (k, srv) in servers.iter().enumerate() {
        config.push('\n');
        config.push_str(&fault_account(
            &format!("s{k}"),
            srv,
            &env.maildir(&format!("s{k}")),
            "",
        ));
    }
    env.write_config(&config);

    let started = Instant::now();
    env.run(&["fetch", "--all", "--jobs", "4"]).assert_code(0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(5000),
        "--jobs 4 should fetch the four accounts in parallel; took {took:?}"
    );
    for k in 0..4 {
        assert_eq!(maildir_count(&env.maildir(&format!("s{k}"))), 1);
    }
}

// ---------------------------------------------------------------------------
// SIGINT and SIGTERM mid-fetch
// ---------------------------------------------------------------------------

/// Starts `fetch --all` on a mailbox of 400 × 220 KB, waits until five
/// deliveries have started, sends `signal` (twice if `twice`), and returns the outcome with what
/// was delivered by then. 88 MB is more than popsync ever keeps in flight
/// (64 MiB), so the stop comes part-way however fast the fetch is.
fn fetch_and_signal(
    dovecot: &Dovecot,
    alice: &User,
    retention: &str,
    signal: i32,
    twice: bool,
) -> (TestEnv, Vec<Vec<u8>>, Output) {
    let sent = deliver(alice, 1, 400, 4000);
    let env = TestEnv::new();
    let maildir = env.maildir("alice");
    env.write_accounts(&[account_toml(
        "alice",
        dovecot,
        alice,
        "implicit",
        &maildir,
        &format!("retention = {}", toml_string(retention)),
    )]);
    let mut run = env.spawn(&["fetch", "--all"]);
    // Deliveries start in tmp/ and are moved into new/ when a batch is
    // committed; signal as soon as five have started, well before the end.
    assert!(
        wait_for_deliveries(&mut run, &maildir, 5, Duration::from_secs(30)),
        "popsync should be delivering messages; it ended or stalled:\n{:?}",
        run.finish_within(BACKGROUND_TIMEOUT)
    );
    run.signal(signal);
    if twice {
        thread::sleep(Duration::from_millis(20));
        run.signal(signal);
    }
    let out = run.finish_within(BACKGROUND_TIMEOUT);
    (env, sent, out)
}

#[test]
fn sigint_mid_fetch_commits_what_was_delivered_deletes_it_and_exits_130() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (env, sent, out) = fetch_and_signal(&dovecot, &alice, "0d", libc::SIGINT, false);
    out.assert_code_with(130, &dovecot);
    let maildir = env.maildir("alice");
    let delivered = maildir_messages(&maildir);
    let k = delivered.len();
    assert!(
        (1..400).contains(&k),
        "the run should have stopped part-way; it delivered {k} of 400"
    );
    eprintln!("delivered {k} of 400 before the stop");

    // QUIT happened: what was delivered is gone from the server, the rest stays.
    let left = alice.server_messages();
    assert_eq!(
        left.len(),
        400 - k,
        "retention 0d: the {k} delivered messages must be DELEted and QUIT sent"
    );
    let mut union = delivered.clone();
    union.extend(left);
    assert_eq!(sorted(union), sorted(sent.clone()), "nothing lost");

    // A rerun fetches exactly the rest.
    let rerun = env.run(&["fetch", "--all", "--json"]);
    rerun.assert_code_with(0, &dovecot);
    assert_eq!(json_by_account(&rerun)["alice"]["fetched"], 400 - k);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(sent),
        "each exactly once"
    );
    assert!(alice.server_messages().is_empty());
}

#[test]
fn sigterm_mid_fetch_records_every_delivered_message_and_exits_143() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (env, sent, out) = fetch_and_signal(&dovecot, &alice, "forever", libc::SIGTERM, false);
    out.assert_code_with(143, &dovecot);
    let maildir = env.maildir("alice");
    let k = maildir_count(&maildir);
    assert!(
        (1..400).contains(&k),
        "the run should have stopped part-way; it delivered {k} of 400"
    );
    eprintln!("delivered {k} of 400 before the stop");
    assert_eq!(
        seen_list(&env, "alice").len(),
        k,
        "every delivered message is recorded in the seen-store"
    );
    assert_eq!(alice.server_messages().len(), 400, "retention forever");

    let rerun = env.run(&["fetch", "--all", "--json"]);
    rerun.assert_code_with(0, &dovecot);
    assert_eq!(json_by_account(&rerun)["alice"]["fetched"], 400 - k);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(sent),
        "each exactly once"
    );
}

#[test]
fn sigterm_while_a_retr_stalls_delivers_what_was_asked_for_then_deletes_and_quits() {
    // Message 10's reply stalls for 2 s; SIGTERM arrives meanwhile. Every RETR
    // already sent must be delivered and committed, no RETR may follow the
    // signal, and the delivered messages are DELEted before QUIT.
    // More messages than popsync keeps in flight (1024 commands at most),
    // so the stop comes mid-fetch.
    let total = 1500;
    let mail: Vec<Vec<u8>> = (1..=total).map(fault_message).collect();
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .fault(On::Retr(10), Fault::Stall(Duration::from_secs(2)))
        .times(1)
        .start();
    let env = TestEnv::new();
    let maildir = env.maildir("stalled");
    env.write_config(&format!(
        "{}\n{}",
        env.defaults_toml(),
        fault_account("stalled", &srv, &maildir, "retention = \"0d\"")
    ));

    let mut run = env.spawn(&["fetch", "--all"]);
    assert!(
        wait_for_deliveries(&mut run, &maildir, 10, Duration::from_secs(20)),
        "popsync should be waiting for message 10"
    );
    thread::sleep(Duration::from_millis(200));
    run.signal(libc::SIGTERM);
    let out = run.finish_within(BACKGROUND_TIMEOUT);
    out.assert_code(143);

    let commands = srv.commands();
    let verb_args = |verb: &str| -> BTreeSet<u32> {
        commands
            .iter()
            .filter_map(|c| c.strip_prefix(verb)?.trim().parse().ok())
            .collect()
    };
    let retrieved = verb_args("RETR ");
    let deleted = verb_args("DELE ");
    let k = maildir_count(&maildir);
    assert!(
        retrieved.contains(&10) && retrieved.len() < total,
        "the stop must come mid-fetch: {commands:?}"
    );
    assert_eq!(
        k,
        retrieved.len(),
        "every RETR sent is delivered: {commands:?}"
    );
    assert_eq!(
        deleted, retrieved,
        "retention 0d: each delivered one is DELEted"
    );
    assert_eq!(
        commands.last().map(String::as_str),
        Some("QUIT"),
        "the session ends with QUIT"
    );
    assert_eq!(
        maildir_messages(&maildir),
        sorted(mail[..k].to_vec()),
        "the first {k} messages, each once"
    );
    assert_eq!(
        srv.mailbox(),
        mail[k..].to_vec(),
        "the rest stays on the server"
    );

    // The next run fetches exactly the rest.
    env.run(&["fetch", "--all"]).assert_code(0);
    assert_eq!(maildir_messages(&maildir), sorted(mail));
    assert!(srv.mailbox().is_empty());
}

#[test]
fn a_second_sigint_exits_at_once_and_nothing_is_delivered_twice() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let (env, sent, out) = fetch_and_signal(&dovecot, &alice, "0d", libc::SIGINT, true);
    out.assert_code_with(130, &dovecot);

    let rerun = env.run(&["fetch", "--all"]);
    rerun.assert_code_with(0, &dovecot);
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(sent),
        "after an abrupt stop the next run finishes the job: each message exactly once"
    );
    assert!(alice.server_messages().is_empty());
}

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
    env.run(&["fetch", "--all"]).assert_code_with(78, &dovecot);
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
