//! A user's commands (MDA, filter, `password_command`) cannot hold popsync
//! past `command_timeout` or a stop, cannot be handed half a message, and do
//! not stall the other accounts of a `--jobs` run (issue 14, items 6, 7, 10).
//! Real binary against a throwaway Dovecot; the contract is
//! /work/shared/DESIGN.md (Delivery: MDA, Exit codes, `command_timeout`).
//!
//! The commands below leave a child holding their pipes
//! (`cat >/dev/null; sleep 30 & exit 0`): the shell is gone at once, the
//! sleeper keeps stderr (and stdout) open for 30 s.

mod common;
mod mailcheck;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{
    Account, Dovecot, TestEnv, User, maildir_messages, require_dovecot, sample_message, sorted,
    toml_string,
};
use mailcheck::{assert_stderr_contains, kill9, message_of_size, spawn, spawned_stderr};

/// A command whose shell exits 0 at once while a child it started keeps
/// its output pipes open for 30 s; the child's pid is appended to `pids`.
fn leaves_a_sleeper(first: &str, pids: &Path) -> String {
    format!("{first}; sleep 30 & echo $! >> {}; exit 0", sh_quote(pids))
}

fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// The outcome of a spawned run: exit code (128 + signal when killed) and
/// how long it took.
struct Ran {
    code: i32,
    took: Duration,
    stderr: String,
}

/// Waits up to `limit` for `child` to exit, SIGKILLing it then (the caller's
/// time assertion reports that). `since` is when the wait is measured from.
fn wait_bounded(
    env: &TestEnv,
    name: &str,
    mut child: Child,
    since: Instant,
    limit: Duration,
) -> Ran {
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if since.elapsed() >= limit {
            kill9(&mut child);
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = since.elapsed();
    use std::os::unix::process::ExitStatusExt;
    Ran {
        code: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        took,
        stderr: spawned_stderr(env, name),
    }
}

/// `popsync fetch ARGS` in the background, waited for at most `limit`.
fn fetch_bounded(env: &TestEnv, args: &[&str], limit: Duration) -> Ran {
    let started = Instant::now();
    let child = spawn(env, args, "run");
    wait_bounded(env, "run", child, started, limit)
}

/// Polls until `condition` holds; false after `limit`.
fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// Is any process of `pids` (one per line) still alive (not a zombie)?
fn any_alive(pids: &Path) -> Vec<String> {
    let text = fs::read_to_string(pids).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.split(") ").nth(1).map(|r| !r.starts_with('Z')))
                .unwrap_or(false)
        })
        .map(str::to_owned)
        .collect()
}

/// Files in `dir` whose names start with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn deliver_samples(user: &User, n: usize) -> Vec<Vec<u8>> {
    let sent: Vec<Vec<u8>> = (1..=n).map(|i| sample_message(i, 5)).collect();
    for m in &sent {
        user.deliver(m);
    }
    sent
}

/// `block` (an account whose password is "secret") with `password_command
/// = command` in place of its `password`.
fn with_password_command(block: String, command: &str) -> String {
    let password_line = format!("password = {}\n", toml_string("secret"));
    assert!(block.contains(&password_line), "{block}");
    block.replace(
        &password_line,
        &format!("password_command = {}\n", toml_string(command)),
    )
}

fn mda_block(name: &str, dovecot: &Dovecot, user: &User, mda: &str, extra: &str) -> String {
    Account::new(name, dovecot, user)
        .extra(&format!("deliver = {{ mda = {} }}", toml_string(mda)))
        .extra(extra)
        .toml()
}

// ---------------------------------------------------------------------------
// Item 7: command_timeout bounds the whole command, children included.
// ---------------------------------------------------------------------------

#[test]
fn mda_whose_child_holds_its_pipes_is_killed_at_command_timeout_and_the_mail_stays() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 3);
    let env = TestEnv::new();
    let pids = env.path().join("pids");
    let mda = leaves_a_sleeper("cat >/dev/null", &pids);
    env.write_accounts(&[mda_block(
        "work",
        &dovecot,
        &alice,
        &mda,
        "command_timeout = 3\nretention = \"0d\"",
    )]);

    // Before the fix: 30 s per message (the sleeper's stderr was read to its
    // end), exit 0 after 90 s.
    let ran = fetch_bounded(&env, &["fetch", "--all"], Duration::from_secs(40));
    eprintln!("the run took {:?}", ran.took);

    assert_eq!(
        ran.code, 74,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(
        ran.took < Duration::from_secs(12),
        "command_timeout = 3 bounds the MDA and its children; the run took {:?}",
        ran.took
    );
    assert_stderr_contains(&ran.stderr, "command_timeout");
    assert!(
        any_alive(&pids).is_empty(),
        "the MDA's process group is killed: {:?} still run",
        any_alive(&pids)
    );
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "a timed-out MDA delivers nothing: every message stays on the server"
    );
}

#[test]
fn filter_whose_child_holds_its_pipes_is_killed_at_command_timeout_and_the_mail_stays() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 2);
    let env = TestEnv::new();
    let pids = env.path().join("pids");
    let maildir = env.maildir("alice");
    let filter = leaves_a_sleeper("cat >/dev/null", &pids);
    env.write_accounts(&[Account::new("work", &dovecot, &alice)
        .maildir(&maildir)
        .extra(&format!("filter = {}", toml_string(&filter)))
        .extra("command_timeout = 3\nretention = \"0d\"")
        .toml()]);

    // Before the fix: 30 s per message, then each was fetched.
    let ran = fetch_bounded(&env, &["fetch", "--all"], Duration::from_secs(40));
    eprintln!("the run took {:?}", ran.took);

    assert_eq!(
        ran.code, 74,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(
        ran.took < Duration::from_secs(15),
        "command_timeout = 3 bounds each filter run (2 messages); the run took {:?}",
        ran.took
    );
    assert_stderr_contains(&ran.stderr, "command_timeout");
    assert!(
        any_alive(&pids).is_empty(),
        "{:?} still run",
        any_alive(&pids)
    );
    assert!(
        maildir_messages(&maildir).is_empty(),
        "no verdict, no download"
    );
    assert_eq!(sorted(alice.server_messages()), sorted(sent));
}

#[test]
fn password_command_whose_child_holds_stdout_is_killed_at_command_timeout_exit_78() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1);
    let env = TestEnv::new();
    let pids = env.path().join("pids");
    let maildir = env.maildir("alice");
    // Prints the right password, exits 0, and leaves a child on its stdout.
    let command = leaves_a_sleeper("echo secret", &pids);
    env.write_accounts(&[with_password_command(
        Account::new("work", &dovecot, &alice)
            .maildir(&maildir)
            .extra("command_timeout = 3")
            .toml(),
        &command,
    )]);

    // Before the fix: it waited 30 s for stdout to close, then logged in
    // and exited 0.
    let ran = fetch_bounded(&env, &["fetch", "--all"], Duration::from_secs(40));
    eprintln!("the run took {:?}", ran.took);

    assert_eq!(
        ran.code, 78,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(
        ran.took < Duration::from_secs(12),
        "command_timeout = 3 bounds password_command and its children; the run took {:?}",
        ran.took
    );
    assert_stderr_contains(&ran.stderr, "password_command");
    assert_stderr_contains(&ran.stderr, "command_timeout");
    assert!(
        any_alive(&pids).is_empty(),
        "{:?} still run",
        any_alive(&pids)
    );
    assert_eq!(alice.server_messages(), sent);
}

/// Starts `fetch --all ARGS`, waits for `started` to exist (the command
/// began), sends SIGTERM, and returns how long popsync took from the signal
/// to its exit.
fn sigterm_once_started(env: &TestEnv, args: &[&str], started: &Path) -> Ran {
    let mut child = spawn(env, args, "run");
    let began = wait_for(Duration::from_secs(30), || {
        started.exists() || child.try_wait().ok().flatten().is_some()
    });
    assert!(
        began && started.exists(),
        "the command should have started; popsync said:\n{}",
        spawned_stderr(env, "run")
    );
    let pid = i32::try_from(child.id()).expect("pid fits in i32");
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let ran = wait_bounded(env, "run", child, Instant::now(), Duration::from_secs(40));
    eprintln!("exited {:?} after the signal", ran.took);
    ran
}

#[test]
fn sigterm_while_an_mda_child_holds_its_pipes_exits_143_within_seconds() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 3);
    let env = TestEnv::new();
    let pids = env.path().join("pids");
    let started = env.path().join("started");
    let mda = leaves_a_sleeper(
        &format!("touch {}; cat >/dev/null", sh_quote(&started)),
        &pids,
    );
    // command_timeout is far away: only the stop can end the MDA early.
    env.write_accounts(&[mda_block(
        "work",
        &dovecot,
        &alice,
        &mda,
        "command_timeout = 120\nretention = \"0d\"",
    )]);

    // --jobs 1: a single runtime worker, which the MDA must not hold from
    // the signal handler. Before the fix: exit 143 only after 30 s.
    let ran = sigterm_once_started(&env, &["fetch", "--all", "--jobs", "1"], &started);

    assert_eq!(
        ran.code, 143,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(
        ran.took < Duration::from_secs(8),
        "SIGTERM must stop popsync within a few seconds whatever the MDA's child does; took {:?}",
        ran.took
    );
    assert!(
        any_alive(&pids).is_empty(),
        "{:?} still run",
        any_alive(&pids)
    );
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "the abandoned message was not committed, so nothing is deleted"
    );
}

#[test]
fn sigterm_while_password_command_hangs_exits_143_within_seconds() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1);
    let env = TestEnv::new();
    let started = env.path().join("started");
    let maildir = env.maildir("alice");
    let command = format!("touch {}; sleep 30; echo secret", sh_quote(&started));
    env.write_accounts(&[with_password_command(
        Account::new("work", &dovecot, &alice)
            .maildir(&maildir)
            .extra("command_timeout = 120")
            .toml(),
        &command,
    )]);

    // Before the fix: the stop waited for the command (30 s).
    let ran = sigterm_once_started(&env, &["fetch", "--all", "--jobs", "1"], &started);

    assert_eq!(
        ran.code, 143,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(
        ran.took < Duration::from_secs(8),
        "SIGTERM must stop popsync within a few seconds; took {:?}",
        ran.took
    );
    assert!(maildir_messages(&maildir).is_empty());
    assert_eq!(alice.server_messages(), sent);
}

// ---------------------------------------------------------------------------
// Item 6: an MDA only ever sees whole messages.
// ---------------------------------------------------------------------------

/// One 2 MB message (far more than a pipe holds) and an MDA that says it
/// started, waits a second, then copies its stdin to a file and renames it
/// into place at end of input. `interrupt` is done to popsync once the MDA
/// has started; then every file the MDA wrote, by then and after a normal
/// rerun, must be the whole message.
fn mda_sees_only_whole_messages(interrupt: impl FnOnce(&mut Child)) {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    alice.deliver(&message_of_size(1, 2_000_000, true));
    let sent = alice.server_messages();
    assert_eq!(sent.len(), 1);
    let env = TestEnv::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let d = sh_quote(&out);
    let mda =
        format!("touch {d}/started.$$; sleep 1; cat > {d}/part.$$ && mv {d}/part.$$ {d}/msg.$$");
    env.write_accounts(&[mda_block(
        "work",
        &dovecot,
        &alice,
        &mda,
        "command_timeout = 60",
    )]);

    let mut child = spawn(&env, &["fetch", "--all"], "run");
    assert!(
        wait_for(Duration::from_secs(30), || {
            !files_named(&out, "started.").is_empty()
        }),
        "the MDA should have started; popsync said:\n{}",
        spawned_stderr(&env, "run")
    );
    interrupt(&mut child);
    let _ = child.wait();

    // The MDA outlives popsync; give it time to finish what it was handed.
    let mdas = files_named(&out, "started.").len();
    assert!(
        wait_for(Duration::from_secs(15), || {
            files_named(&out, "msg.").len() >= mdas && files_named(&out, "part.").is_empty()
        }),
        "each MDA started should have finished by now: {:?}",
        fs::read_dir(&out).unwrap().collect::<Vec<_>>()
    );
    let check = |when: &str| {
        for f in files_named(&out, "msg.") {
            let got = fs::read(&f).unwrap();
            assert!(
                got == sent[0],
                "{when}: the MDA delivered {} bytes of a {}-byte message ({})",
                got.len(),
                sent[0].len(),
                f.display()
            );
        }
    };
    check("after the interruption");

    // At-least-once: the next run hands the message over again, whole.
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    check("after a rerun");
    assert!(!files_named(&out, "msg.").is_empty());
}

#[test]
fn sigkill_while_the_mda_reads_never_hands_it_a_partial_message() {
    mda_sees_only_whole_messages(|child| {
        assert!(kill9(child), "popsync should still run when it is killed");
    });
}

#[test]
fn a_second_signal_while_the_mda_reads_never_hands_it_a_partial_message() {
    mda_sees_only_whole_messages(|child| {
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        for _ in 0..2 {
            // SAFETY: kill(2) on the child we spawned and have not reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

// ---------------------------------------------------------------------------
// Item 10: blocking work stays off the async workers.
// ---------------------------------------------------------------------------

/// Seconds from `since` until `account`'s `--json` line appears in the
/// spawned run's stdout, if it does before `limit`.
fn finished_after(
    env: &TestEnv,
    account: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let needle = format!("\"account\":\"{account}\"");
    let stdout = env.path().join("run.stdout");
    wait_for(limit, || {
        fs::read_to_string(&stdout).is_ok_and(|s| s.contains(&needle))
    })
    .then(|| since.elapsed())
}

#[test]
fn a_slow_mda_does_not_stall_another_accounts_fetch_with_jobs_2() {
    let dovecot = require_dovecot!();
    let slow_user = dovecot.add_user("slow", "secret");
    let fast_user = dovecot.add_user("fast", "secret");
    deliver_samples(&slow_user, 2);
    let fast_sent: Vec<Vec<u8>> = (1..=60).map(|i| sample_message(i, 200)).collect();
    for m in &fast_sent {
        fast_user.deliver(m);
    }
    let env = TestEnv::new();
    let fast_maildir = env.maildir("fast");
    let started = env.path().join("mda-started");
    // Each message takes the MDA 6 s (well inside command_timeout).
    let mda = format!("touch {}; cat >/dev/null; sleep 6", sh_quote(&started));
    env.write_accounts(&[
        mda_block("slow", &dovecot, &slow_user, &mda, "command_timeout = 60"),
        Account::new("fast", &dovecot, &fast_user)
            .maildir(&fast_maildir)
            .toml(),
    ]);

    let since = Instant::now();
    let child = spawn(&env, &["fetch", "--all", "--jobs", "2", "--json"], "run");
    let fast = finished_after(&env, "fast", since, Duration::from_secs(40));
    let ran = wait_bounded(&env, "run", child, since, Duration::from_secs(60));
    eprintln!(
        "fast account done after {fast:?}, the run after {:?}",
        ran.took
    );

    assert_eq!(
        ran.code, 0,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert!(started.exists(), "the slow MDA ran");
    let fast = fast.expect("the fast account reports");
    // The slow account takes 12 s (two messages × 6 s); the fast one, alone,
    // well under a second or two.
    assert!(
        fast < Duration::from_secs(5) && ran.took >= Duration::from_secs(11),
        "the fast account finished after {fast:?}, the run after {:?}: a blocking MDA \
         must not hold up another account's session",
        ran.took
    );
    assert_eq!(maildir_messages(&fast_maildir), sorted(fast_sent));
}

#[test]
fn slow_mdas_on_every_worker_do_not_stall_a_ninth_account_with_jobs_9() {
    // --jobs 9 runs nine accounts at once on eight runtime workers (the
    // most popsync starts). Eight MDAs that each take 5 s would hold every
    // worker if they ran on them; the ninth account must not wait for them.
    // Its password_command waits (up to 10 s) until all eight MDAs have
    // started, so that they do run at the same time as its session.
    let dovecot = require_dovecot!();
    let env = TestEnv::new();
    let started = env.path().join("started");
    fs::create_dir_all(&started).unwrap();
    let mda = format!("touch {}/$$; cat >/dev/null; sleep 5", sh_quote(&started));
    let mut blocks = Vec::new();
    let mut users = Vec::new();
    for k in 0..8 {
        let user = dovecot.add_user(&format!("slow{k}"), "secret");
        deliver_samples(&user, 1);
        blocks.push(mda_block(
            &format!("slow{k}"),
            &dovecot,
            &user,
            &mda,
            "command_timeout = 60",
        ));
        users.push(user);
    }
    let fast_user = dovecot.add_user("fast", "secret");
    let fast_sent: Vec<Vec<u8>> = (1..=200).map(|i| sample_message(i, 100)).collect();
    for m in &fast_sent {
        fast_user.deliver(m);
    }
    let fast_maildir = env.maildir("fast");
    let d = sh_quote(&started);
    let wait_for_the_mdas = format!(
        "for i in $(seq 200); do [ $(ls {d} | wc -l) -ge 8 ] && break; sleep 0.05; done; echo secret"
    );
    blocks.push(with_password_command(
        Account::new("fast", &dovecot, &fast_user)
            .maildir(&fast_maildir)
            .toml(),
        &wait_for_the_mdas,
    ));
    env.write_accounts(&blocks);

    let since = Instant::now();
    let child = spawn(&env, &["fetch", "--all", "--jobs", "9", "--json"], "run");
    let fast = finished_after(&env, "fast", since, Duration::from_secs(40));
    let ran = wait_bounded(&env, "run", child, since, Duration::from_secs(60));
    eprintln!(
        "fast account done after {fast:?}, the run after {:?}",
        ran.took
    );

    assert_eq!(
        ran.code, 0,
        "exit code (after {:?}); stderr:\n{}",
        ran.took, ran.stderr
    );
    assert_eq!(fs::read_dir(&started).unwrap().count(), 8, "every MDA ran");
    let fast = fast.expect("the fast account reports");
    assert!(
        fast < Duration::from_secs(4) && ran.took >= Duration::from_secs(5),
        "the fast account finished after {fast:?}, the run after {:?}: MDAs must not \
         hold the runtime's workers",
        ran.took
    );
    assert_eq!(maildir_messages(&fast_maildir), sorted(fast_sent));
}
