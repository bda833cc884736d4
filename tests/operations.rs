//! How popsync behaves as an operator sees it, through the real binary:
//! overlapping runs and the per-account lock, `--jobs` and how the exit codes
//! of several accounts merge, and SIGINT/SIGTERM in the middle of a fetch.
//! Every exit code once, what is printed where, `accounts` and `seen` are
//! `exit_codes_and_output.rs`.
//!
//! Most tests run against a throwaway Dovecot (`tests/common`); the ones that
//! need a server to misbehave on cue (a stall, `[IN-USE]`, a malformed reply)
//! use the scripted server of `tests/fault`. The contract is
//! /work/shared/DESIGN.md.

mod common;
mod fault;
mod ops;

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Account, Dovecot, Output, TestEnv, User, account_toml, assert_mentions, maildir_messages,
    require_dovecot, sorted, toml_string,
};
use fault::{Fault, FaultServer, On};
use ops::*;

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
