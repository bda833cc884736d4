//! `kill -9` at awkward instants, then a normal run: every server message
//! must end up in the Maildir or mbox exactly once, nothing partial may be
//! left behind, and with retention "0d" nothing may be deleted on the server
//! that was not delivered (DESIGN.md, Promises 1 and 2).
//!
//! The killed runs are the real binary, spawned with `TestEnv::command()`,
//! against a throwaway Dovecot.
//!
//! About the mbox dotlock: a run killed while it holds `FILE.lock` leaves the
//! dotlock behind, and DESIGN.md calls a dotlock stale only when it is older
//! than 300 s; a run started sooner waits for it and exits 75. The tests
//! therefore age a left-behind dotlock past 300 s before the recovery run, as
//! the next cron run five minutes later would find it.

mod common;
mod mailcheck;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    Dovecot, TestEnv, User, maildir_files, maildir_messages, maildir_tmp_files, require_dovecot,
};
use mailcheck::{
    Rng, age_file, assert_same_messages, assert_subset, count_entries, dotlock_of, file_len, kill9,
    large_message, maildir_account, mbox_account, mbox_messages_sorted, message_of_size, spawn,
    wait_while_running,
};

/// Messages per mailbox in the "kill after k messages" tests.
const COUNT: usize = 300;

/// What "k messages" counts in a Maildir.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Poll {
    /// Messages written: files in tmp/ and new/.
    Written,
    /// Messages moved into new/.
    Linked,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Maildir,
    Mbox,
}

/// One account fetching one Dovecot user into a Maildir or an mbox.
struct Case {
    env: TestEnv,
    user: User,
    target: Target,
    /// Every message ever put on the server for this user.
    sent: Vec<Vec<u8>>,
    retention_0d: bool,
}

impl Case {
    fn new(dovecot: &Dovecot, name: &str, target: Target, retention_0d: bool) -> Case {
        let user = dovecot.add_user(name, "secret");
        let env = TestEnv::new();
        let extra = if retention_0d {
            "retention = \"0d\""
        } else {
            ""
        };
        let account = match target {
            Target::Maildir => maildir_account("work", dovecot, &user, &env.maildir("work"), extra),
            Target::Mbox => mbox_account("work", dovecot, &user, &mbox_path(&env), extra),
        };
        env.write_accounts(&[account]);
        Case {
            env,
            user,
            target,
            sent: Vec::new(),
            retention_0d,
        }
    }

    fn deliver(&mut self, messages: Vec<Vec<u8>>) {
        for m in &messages {
            self.user.deliver(m);
        }
        self.sent.extend(messages);
    }

    fn maildir(&self) -> PathBuf {
        self.env.maildir("work")
    }

    fn mbox(&self) -> PathBuf {
        mbox_path(&self.env)
    }

    /// How far the delivery has got: messages in the Maildir (see `Poll`)
    /// or bytes in the mbox.
    fn progress(&self, poll: Poll) -> u64 {
        let md = self.maildir();
        match (self.target, poll) {
            (Target::Maildir, Poll::Linked) => count_entries(&md.join("new")) as u64,
            (Target::Maildir, Poll::Written) => {
                (count_entries(&md.join("new")) + count_entries(&md.join("tmp"))) as u64
            }
            (Target::Mbox, _) => file_len(&self.mbox()),
        }
    }

    /// Starts `popsync fetch --all` in the background.
    fn spawn(&self, name: &str) -> std::process::Child {
        spawn(&self.env, &["fetch", "--all"], name)
    }

    /// Checks what a killed run left: in the Maildir's new/ and cur/ (or
    /// the mbox, but for its last message, which may be torn) only whole
    /// messages, each at most once; and every message still on the server or
    /// delivered. tmp/ may hold the batch being written.
    fn check_after_kill(&self, what: &str) {
        let delivered = match self.target {
            Target::Maildir => maildir_messages(&self.maildir()),
            Target::Mbox => {
                let bytes = fs::read(self.mbox()).unwrap_or_default();
                let mut whole = mbox_messages_before_torn_tail(&bytes);
                // The last one counts only if it is whole.
                if whole.last().is_some_and(|m| !self.sent.contains(m)) {
                    whole.pop();
                }
                whole
            }
        };
        assert_subset(
            &delivered,
            &self.sent,
            &format!("{what}: delivered before the kill"),
        );
        let mut covered = self.user.server_messages();
        covered.extend(delivered);
        covered.sort();
        covered.dedup();
        for m in &self.sent {
            assert!(
                covered.binary_search(m).is_ok(),
                "{what}: a message is neither on the server nor delivered (lost): {}",
                mailcheck::preview(m)
            );
        }
    }

    /// What a user does next: runs popsync again (after the five minutes that
    /// make a left-behind mbox dotlock stale). Returns its stderr.
    fn recover(&self, dovecot: &Dovecot, what: &str) -> String {
        let lock = dotlock_of(&self.mbox());
        if self.target == Target::Mbox && lock.exists() {
            age_file(&lock, Duration::from_secs(301));
        }
        let out = self.env.run(&["fetch", "--all"]);
        assert_eq!(
            out.code,
            0,
            "{what}: the run after the kill must succeed\nstderr:\n{}\n--- dovecot log ---\n{}",
            out.stderr,
            dovecot.log()
        );
        out.stderr
    }

    /// Every message is delivered exactly once, nothing partial is left,
    /// and the server holds what retention says.
    ///
    /// Files left in the Maildir's tmp/ are returned, described, rather than
    /// failing at once, so the test checks every round before it fails.
    #[must_use = "leftovers in tmp/ are a failure: pass them to assert_no_leftovers"]
    fn check_exactly_once(&self, what: &str) -> Vec<String> {
        let mut leftovers = Vec::new();
        match self.target {
            Target::Maildir => {
                assert_same_messages(
                    &maildir_messages(&self.maildir()),
                    &self.sent,
                    &format!("{what}: the Maildir"),
                );
                leftovers = tmp_leftovers(&self.maildir(), what);
            }
            Target::Mbox => {
                // mbox_messages_sorted parses strictly: a torn or
                // interleaved message fails here.
                assert_same_messages(
                    &mbox_messages_sorted(&self.mbox()),
                    &self.sent,
                    &format!("{what}: the mbox"),
                );
                assert!(
                    !dotlock_of(&self.mbox()).exists(),
                    "{what}: the dotlock must be gone"
                );
            }
        }
        let server = self.user.server_messages();
        if self.retention_0d {
            assert!(
                server.is_empty(),
                "{what}: retention 0d deletes every delivered message; {} left",
                server.len()
            );
        } else {
            assert_same_messages(&server, &self.sent, &format!("{what}: the server"));
        }
        leftovers
    }
}

/// Describes each file in `maildir`/tmp: its link count, and whether it is
/// another name of a message in new/ or cur/.
fn tmp_leftovers(maildir: &std::path::Path, what: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let delivered: Vec<(u64, String)> = maildir_files(maildir)
        .iter()
        .filter_map(|f| {
            let p = maildir.join(f.subdir).join(&f.name);
            Some((
                fs::metadata(&p).ok()?.ino(),
                format!("{}/{}", f.subdir, f.name),
            ))
        })
        .collect();
    maildir_tmp_files(maildir)
        .into_iter()
        .map(|name| {
            let meta = fs::metadata(maildir.join("tmp").join(&name)).expect("stat a tmp/ file");
            let twin = delivered
                .iter()
                .find(|(ino, _)| *ino == meta.ino())
                .map_or_else(
                    || "no name in new/ or cur/".to_owned(),
                    |(_, n)| format!("also {n}"),
                );
            format!(
                "{what}: tmp/{name} ({} bytes, nlink {}, {twin})",
                meta.len(),
                meta.nlink()
            )
        })
        .collect()
}

/// A finished, recovered Maildir has nothing in tmp/.
fn assert_no_leftovers(leftovers: &[String]) {
    assert!(
        leftovers.is_empty(),
        "files left in the Maildir's tmp/ after the recovery run (a run killed between \
         link() into new/ and unlink() of tmp/ leaves the tmp/ name; the next run finds the \
         message in new/, records it as delivered, but does not remove tmp/NAME):\n{}",
        leftovers.join("\n")
    );
}

/// The messages of an mbox that a killed run may have left with a torn
/// last message: split at the `From ` separators; all but the last must be
/// followed by the blank line; the last is returned as it is (without a
/// trailing blank line, if any), for the caller to judge.
fn mbox_messages_before_torn_tail(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let cut = (1..bytes.len())
        .rev()
        .find(|&i| bytes[i - 1] == b'\n' && bytes[i..].starts_with(b"From "));
    let mut messages = match cut {
        Some(i) => mailcheck::parse_mbox(&bytes[..i])
            .iter()
            .map(|m| m.unquoted())
            .collect(),
        None => Vec::new(),
    };
    let last = &bytes[cut.unwrap_or(0)..];
    assert!(
        last.starts_with(b"From "),
        "the mbox does not start with a From line"
    );
    let body = &last[last
        .iter()
        .position(|&b| b == b'\n')
        .map_or(last.len(), |p| p + 1)..];
    messages.push(mailcheck::mboxrd_unquote(
        body.strip_suffix(b"\n").unwrap_or(body),
    ));
    messages
}

fn mbox_path(env: &TestEnv) -> PathBuf {
    env.path().join("mail").join("inbox.mbox")
}

fn bulk(first: usize, count: usize) -> Vec<Vec<u8>> {
    (first..first + count)
        .map(|i| message_of_size(i, 1500 + (i * 37) % 1000, i % 3 != 0))
        .collect()
}

/// Per target: for several k, kill the run after about k messages were
/// delivered, run again, check exactly once.
fn kill_after_k_messages(target: Target) {
    let dovecot = require_dovecot!();
    // (k, what k counts). A Maildir message is first written into tmp/ and
    // then, with the rest of its batch, linked into new/: counting both kills
    // while messages are being written, counting new/ kills while a batch
    // is being moved into place. An mbox grows by about 2 KB per message.
    let rounds = [
        (1usize, Poll::Written),
        (40, Poll::Linked),
        (150, Poll::Written),
        (280, Poll::Written),
        (270, Poll::Linked),
    ];
    // Alternating retention: with "0d" the recovery run must also DELE what
    // the killed run delivered, without downloading it again. Every user is
    // added before the first login: Dovecot may miss a user added to its
    // passwd-file in the same second as its last read of it.
    let cases: Vec<Case> = (0..rounds.len())
        .map(|round| Case::new(&dovecot, &format!("u{round}"), target, round % 2 == 0))
        .collect();
    let mut leftovers = Vec::new();
    for ((round, (k, poll)), mut case) in rounds.into_iter().enumerate().zip(cases) {
        if target == Target::Mbox && poll == Poll::Linked {
            continue;
        }
        case.deliver(bulk(round * 1000, COUNT));
        let what = format!(
            "{target:?}, kill after {k} of {COUNT} ({poll:?}), retention 0d: {}",
            case.retention_0d
        );
        let threshold = match target {
            Target::Maildir => k as u64,
            Target::Mbox => case.sent[..k].iter().map(|m| m.len() as u64 + 60).sum(),
        };

        let mut child = case.spawn("killed");
        let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
            case.progress(poll) >= threshold
        });
        let interrupted = kill9(&mut child);
        assert!(
            reached && interrupted,
            "{what}: the run ended before it could be killed (progress {}):\n{}",
            case.progress(poll),
            mailcheck::spawned_stderr(&case.env, "killed")
        );
        case.check_after_kill(&what);
        case.recover(&dovecot, &what);
        leftovers.extend(case.check_exactly_once(&what));
        // And nothing more happens on a further run.
        case.recover(&dovecot, &what);
        let _ = case.check_exactly_once(&format!("{what}, after one more run"));
    }
    assert_no_leftovers(&leftovers);
}

#[test]
fn maildir_killed_after_k_messages_then_rerun_has_each_message_once() {
    kill_after_k_messages(Target::Maildir);
}

#[test]
fn mbox_killed_after_k_messages_then_rerun_has_each_message_once() {
    kill_after_k_messages(Target::Mbox);
}

/// A kill while a batch of finished messages is being linked from tmp/ into
/// new/ lands, about half the time, between a message's link() and the
/// unlink() of its tmp/ name. Tried several times (users added up front), the
/// recovery run must leave tmp/ empty each time.
#[test]
fn maildir_killed_while_moving_a_batch_into_new_leaves_nothing_in_tmp() {
    let dovecot = require_dovecot!();
    const TRIES: usize = 8;
    let cases: Vec<Case> = (0..TRIES)
        .map(|t| Case::new(&dovecot, &format!("m{t}"), Target::Maildir, t % 2 == 0))
        .collect();
    let mut leftovers = Vec::new();
    let mut in_link_phase = 0;
    for (t, mut case) in cases.into_iter().enumerate() {
        case.deliver(bulk(50_000 + t * 1000, 120));
        let what = format!("try {t}, kill while moving into new/");
        let mut child = case.spawn("killed");
        let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
            case.progress(Poll::Linked) > (t as u64 * 13) % 100
        });
        let interrupted = kill9(&mut child);
        if reached && interrupted {
            in_link_phase += 1;
        }
        case.check_after_kill(&what);
        case.recover(&dovecot, &what);
        leftovers.extend(case.check_exactly_once(&what));
        if !leftovers.is_empty() {
            break;
        }
    }
    assert_no_leftovers(&leftovers);
    assert!(
        in_link_phase >= TRIES / 2,
        "most kills should land while messages are moved into new/ ({in_link_phase} of {TRIES})"
    );
}

/// A 30 MB message between two small ones; kill once a few MB of it are on
/// disk.
fn kill_during_large_message(target: Target) {
    let dovecot = require_dovecot!();
    let mut case = Case::new(&dovecot, "big", target, true);
    case.deliver(vec![
        message_of_size(1, 2000, true),
        large_message("one", 30_000_000),
        message_of_size(2, 2000, false),
    ]);
    let what = format!("{target:?}, kill during a 30 MB message");
    let (maildir, mbox) = (case.maildir(), case.mbox());
    let grown = || match target {
        Target::Maildir => mailcheck::largest_file(&maildir.join("tmp")) > 4_000_000,
        Target::Mbox => file_len(&mbox) > 4_000_000,
    };

    let mut child = case.spawn("killed");
    let reached = wait_while_running(&mut child, Duration::from_secs(60), grown);
    let interrupted = kill9(&mut child);
    assert!(
        reached && interrupted,
        "{what}: the run ended before it could be killed:\n{}",
        mailcheck::spawned_stderr(&case.env, "killed")
    );
    if target == Target::Maildir {
        assert!(
            maildir_files(&maildir)
                .iter()
                .all(|f| f.bytes.len() < 1_000_000),
            "{what}: the partial large message must not be in new/ or cur/"
        );
    }
    case.check_after_kill(&what);
    case.recover(&dovecot, &what);
    assert_no_leftovers(&case.check_exactly_once(&what));
}

#[test]
fn maildir_killed_during_a_large_message_then_rerun_delivers_it_once() {
    kill_during_large_message(Target::Maildir);
}

#[test]
fn mbox_killed_during_a_large_message_then_rerun_delivers_it_once() {
    kill_during_large_message(Target::Mbox);
}

/// Kill at random instants: each round puts new mail on the server, starts a
/// run, kills it after a random delay, runs again, and checks that every
/// message ever sent is there exactly once.
fn kill_at_random_instants(target: Target) {
    let dovecot = require_dovecot!();
    let mut rng = Rng::from_env_or_clock(&format!("random kills ({target:?})"));
    let mut case = Case::new(&dovecot, "rnd", target, true);
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 40;
    // How long an uninterrupted run over PER_ROUND messages takes bounds the
    // delays, so the kills land anywhere from startup to the final QUIT. The
    // first run also creates the seen-store: take the faster of two.
    let mut full_run = Duration::MAX;
    for c in 0..2 {
        case.deliver(bulk(9_000 + c * PER_ROUND, PER_ROUND));
        let started = Instant::now();
        case.recover(&dovecot, "calibration run");
        full_run = full_run.min(started.elapsed());
        assert_no_leftovers(&case.check_exactly_once("calibration run"));
    }
    let mut leftovers = Vec::new();
    let mut interrupted_runs = 0;
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        case.deliver(bulk(10_000 + round * PER_ROUND, PER_ROUND));
        let delay = Duration::from_micros(rng.below(full_run.as_micros() as u64));
        let what = format!(
            "{target:?}, round {round}, kill after {delay:?} (POPSYNC_TEST_SEED printed above)"
        );

        let mut child = case.spawn("killed");
        std::thread::sleep(delay);
        let running = kill9(&mut child);
        if running {
            interrupted_runs += 1;
        }
        delays.push((delay.as_millis(), running));
        case.check_after_kill(&what);
        case.recover(&dovecot, &what);
        // A leftover stays in tmp/ for the later rounds: report it once.
        for l in case.check_exactly_once(&what) {
            let name = |d: &str| d.split(": tmp/").nth(1).map(str::to_owned);
            if !leftovers.iter().any(|seen: &String| name(seen) == name(&l)) {
                leftovers.push(l);
            }
        }
    }
    eprintln!(
        "{target:?}: a full run took {full_run:?}; {interrupted_runs} of {ROUNDS} runs \
         interrupted; (delay ms, interrupted): {delays:?}"
    );
    assert_no_leftovers(&leftovers);
    assert!(
        interrupted_runs >= 3,
        "too few kills landed while popsync ran (the delays were too long for this \
         machine's speed): {delays:?}"
    );
}

#[test]
fn maildir_killed_at_random_instants_never_loses_or_duplicates() {
    kill_at_random_instants(Target::Maildir);
}

#[test]
fn mbox_killed_at_random_instants_never_loses_or_duplicates() {
    kill_at_random_instants(Target::Mbox);
}

/// After a kill, the dotlock goes stale and another program (procmail, a
/// mail reader) appends a message of its own, well-formed: starting on a new
/// line after a blank one. The recovery run must keep the other program's
/// message (Promise 1). It cuts only what is proven popsync's and nothing
/// when anything else follows it (issue 14): a torn append followed by the
/// other program's mail stays, is reported naming the mbox, and the message
/// is fetched again.
#[test]
fn mbox_message_appended_by_another_program_after_a_kill_survives_recovery() {
    let dovecot = require_dovecot!();
    let mut case = Case::new(&dovecot, "other", Target::Mbox, true);
    case.deliver(bulk(70_000, COUNT));
    let mbox = case.mbox();
    let threshold: u64 = case.sent[..60].iter().map(|m| m.len() as u64 + 60).sum();
    let mut child = case.spawn("killed");
    let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
        file_len(&mbox) >= threshold
    });
    assert!(
        kill9(&mut child) && reached,
        "the run ended before it could be killed:\n{}",
        mailcheck::spawned_stderr(&case.env, "killed")
    );
    case.check_after_kill("before the other program appends");

    // The other program finds the lock stale, takes it, and appends.
    let lock = dotlock_of(&mbox);
    let _ = fs::remove_file(&lock);
    let mut bytes = fs::read(&mbox).unwrap();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    if !bytes.ends_with(b"\n\n") {
        bytes.push(b'\n');
    }
    let local = b"Return-Path: <cron@localhost>\nFrom: cron@localhost\n\
                  Subject: local mail delivered while popsync was down\n\nhello\n"
        .to_vec();
    bytes.extend_from_slice(b"From cron@localhost Mon Jun  2 10:00:00 2025\n");
    bytes.extend_from_slice(&local);
    bytes.extend_from_slice(b"\n");
    fs::write(&mbox, &bytes).unwrap();

    let stderr = case.recover(&dovecot, "recovery after another program appended");

    let mut want = case.sent.clone();
    want.push(local);
    let (mut whole, mut torn) = (Vec::new(), Vec::new());
    for m in mailcheck::parse_mbox(&fs::read(&mbox).unwrap()) {
        let unquoted = m.unquoted();
        if want.contains(&unquoted) {
            whole.push(unquoted);
        } else {
            torn.push(m.raw);
        }
    }
    assert_same_messages(
        &whole,
        &want,
        "the mbox after recovery: popsync's messages once, and the other program's message",
    );
    let is_torn_start = |raw: &Vec<u8>| {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        case.sent.iter().any(|s| {
            let quoted = mailcheck::mboxrd_quote(s);
            raw.len() < quoted.len() && quoted.starts_with(raw)
        })
    };
    assert!(
        torn.len() <= 1 && torn.iter().all(is_torn_start),
        "besides whole messages, only the torn start of one may remain; {} other(s)",
        torn.len()
    );
    if !torn.is_empty() {
        mailcheck::assert_stderr_contains(&stderr, &mbox.to_string_lossy());
    }
}

/// The recovery run says what it did with the interrupted delivery.
#[test]
fn rerun_after_kill_reports_stale_mbox_lock() {
    let dovecot = require_dovecot!();
    let mut case = Case::new(&dovecot, "warn", Target::Mbox, false);
    case.deliver(vec![large_message("warn", 20_000_000)]);
    let mbox = case.mbox();
    let mut child = case.spawn("killed");
    let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
        file_len(&mbox) > 2_000_000
    });
    assert!(
        kill9(&mut child) && reached,
        "the run ended before it could be killed"
    );
    let lock = dotlock_of(&mbox);
    assert!(
        lock.exists(),
        "a run killed while appending leaves its dotlock (the contract's stale-lock rule covers it)"
    );
    let stderr = case.recover(&dovecot, "stale lock after kill");
    mailcheck::assert_stderr_contains(&stderr, "stale");
    mailcheck::assert_stderr_contains(&stderr, &lock.to_string_lossy());
    assert_no_leftovers(&case.check_exactly_once("stale lock after kill"));
}
