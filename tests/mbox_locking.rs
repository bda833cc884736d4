//! mbox locking and crash recovery against the other programs that share a
//! mail spool (issue 14, items 1 and 2): the real binary against a
//! throwaway Dovecot, with this test process playing mutt, procmail or the
//! MTA's delivery agent.
//!
//! - The fcntl lock holds for a whole batch: another process never gets it
//!   while popsync appends, and never sees a half-written message.
//! - The dotlock is taken on the file a symlinked mbox points to, kept
//!   fresh while held, and removed only while it is still popsync's.
//! - Recovery after a kill cuts only bytes proven to be popsync's: mail that
//!   another program appended after the kill stays, and the run says so.

mod common;
mod mailcheck;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use common::{Dovecot, TestEnv, User, require_dovecot};
use mailcheck::{
    age_file, assert_same_messages, assert_stderr_contains, dotlock_of, file_len, kill9,
    large_message, mbox_account, mbox_messages_sorted, mboxrd_quote, message_of_size, parse_mbox,
    spawn, spawned_stderr, wait_while_running,
};

/// A Dovecot user with `messages` waiting, and in `env` a config
/// delivering them into the mbox `mbox` with the account lines `extra`.
fn setup(
    dovecot: &Dovecot,
    name: &str,
    env: &TestEnv,
    mbox: &Path,
    messages: &[Vec<u8>],
    extra: &str,
) -> User {
    let user = dovecot.add_user(name, "secret");
    for m in messages {
        user.deliver(m);
    }
    env.write_accounts(&[mbox_account("work", dovecot, &user, mbox, extra)]);
    user
}

/// An fcntl lock request on the whole file, as another program makes it.
/// `ofd`: an open file description lock (conflicts with every other
/// description, even in this process); else a classic POSIX lock (what
/// mutt and procmail take).
fn fcntl(file: &File, kind: i32, ofd: bool) -> bool {
    // SAFETY: an all-zero flock is valid (whole file, l_pid 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    let cmd = if ofd {
        libc::F_OFD_SETLK
    } else {
        libc::F_SETLK
    };
    // SAFETY: a valid flock pointer and an fd open for `file`'s lifetime.
    unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) == 0 }
}

/// Waits for `child` to exit (at most 60 s) and returns its exit code.
fn exit_code(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("popsync did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn age_of(path: &Path) -> Duration {
    let mtime = fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    SystemTime::now().duration_since(mtime).unwrap_or_default()
}

/// Polls `condition` every 10 ms for up to `limit`.
fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Issue 14 item 1: each message used to be written through a duplicate of
/// the locked descriptor, and closing it dropped the process's fcntl lock,
/// so another program got the lock while popsync went on appending (54 of
/// 56 tries). Here a mail reader tries the lock all along a batch with a
/// 20 MB message: whenever it gets it, the mbox must hold whole messages
/// and must not grow while it is held.
#[test]
fn another_process_never_gets_the_fcntl_lock_while_a_batch_is_appended() {
    let dovecot = require_dovecot!();
    let sent = vec![
        message_of_size(1, 3000, true),
        large_message("probe", 20_000_000),
        message_of_size(2, 3000, false),
    ];
    let env = TestEnv::new();
    let mbox = env.path().join("inbox.mbox");
    fs::write(&mbox, "").unwrap();
    setup(&dovecot, "probe", &env, &mbox, &sent, "");

    let reader = File::options().read(true).write(true).open(&mbox).unwrap();
    let mut child = spawn(&env, &["fetch", "--all"], "run");
    let (mut tries, mut refused, mut granted_mid_file) = (0u32, 0u32, 0u32);
    let mut violation = None;
    while child.try_wait().expect("try_wait").is_none() {
        tries += 1;
        if !fcntl(&reader, libc::F_WRLCK, false) {
            refused += 1;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let before = reader.metadata().unwrap().len();
        let mut tail = [0u8; 2];
        let whole = before == 0
            || (reader.read_exact_at(&mut tail, before - 2).is_ok() && tail == *b"\n\n");
        std::thread::sleep(Duration::from_millis(20));
        let after = reader.metadata().unwrap().len();
        fcntl(&reader, libc::F_UNLCK, false);
        if before > 0 {
            granted_mid_file += 1;
        }
        if !whole || after != before {
            violation = Some(format!(
                "try {tries}: got the lock with {before} bytes in the mbox (ending in a whole \
                 message: {whole}); {after} bytes after holding it for 20 ms"
            ));
            break;
        }
        // Let popsync in between two batches.
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = exit_code(&mut child);
    eprintln!(
        "{tries} tries: {refused} refused, granted {granted_mid_file} times with mail in the mbox"
    );
    assert!(
        violation.is_none(),
        "another process got the mbox's fcntl lock while popsync was appending: {}",
        violation.unwrap_or_default()
    );
    assert_eq!(code, 0, "{}", spawned_stderr(&env, "run"));
    assert!(
        refused > 0,
        "popsync never held the lock during {tries} tries ({granted_mid_file} granted)"
    );
    assert_same_messages(&mbox_messages_sorted(&mbox), &sent, "the mbox");
}

/// Issue 14 item 1: with `~/mbox -> spool/u`, procmail and the MTA lock
/// `spool/u.lock`; popsync used to lock `~/mbox.lock` and write into the
/// spool file under another program's dotlock.
#[test]
fn a_symlinked_mbox_is_locked_by_the_dotlock_of_the_file_it_points_to() {
    let dovecot = require_dovecot!();
    let sent = vec![
        message_of_size(1, 2000, true),
        message_of_size(2, 2500, false),
    ];
    let env = TestEnv::new();
    let spool = env.path().join("spool");
    fs::create_dir(&spool).unwrap();
    let link = env.path().join("mbox");
    // Relative, and dangling until the first delivery creates the file.
    std::os::unix::fs::symlink("spool/u", &link).unwrap();
    setup(&dovecot, "symlinked", &env, &link, &sent, "timeout = 2");
    let their_lock = spool.join("u.lock");
    fs::write(&their_lock, "4242\n").unwrap();

    let out = env.run(&["fetch", "--all"]);
    assert_eq!(
        out.code, 75,
        "the spool file's dotlock is held by another program: popsync must wait for it, then \
         give up with 75\nstderr:\n{}",
        out.stderr
    );
    assert_stderr_contains(&out.stderr, &their_lock.to_string_lossy());
    assert_eq!(
        file_len(&spool.join("u")),
        0,
        "nothing written under another program's lock"
    );
    assert_eq!(fs::read_to_string(&their_lock).unwrap(), "4242\n");
    assert!(!dotlock_of(&link).exists(), "no lock next to the symlink");

    fs::remove_file(&their_lock).unwrap();
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_same_messages(
        &mbox_messages_sorted(&spool.join("u")),
        &sent,
        "the spool file",
    );
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        !their_lock.exists() && !dotlock_of(&link).exists(),
        "locks left behind"
    );
}

/// Starts a fetch into `mbox` while this process holds an fcntl lock on
/// it, so that popsync takes the dotlock and then holds it, waiting (up to
/// the account's `timeout = 30`), as long as the test likes. Returns the
/// child and the lock holder (drop it to let popsync go on).
fn start_held_fetch(
    dovecot: &Dovecot,
    name: &str,
    sent: &[Vec<u8>],
) -> (TestEnv, Child, File, PathBuf) {
    let env = TestEnv::new();
    let mbox = env.path().join("inbox.mbox");
    fs::write(&mbox, "").unwrap();
    setup(dovecot, name, &env, &mbox, sent, "timeout = 30");
    let holder = File::options().read(true).write(true).open(&mbox).unwrap();
    assert!(fcntl(&holder, libc::F_WRLCK, true), "lock the mbox");
    let child = spawn(&env, &["fetch", "--all"], "run");
    let dotlock = dotlock_of(&mbox);
    assert!(
        eventually(Duration::from_secs(20), || dotlock.exists()),
        "popsync did not take the dotlock"
    );
    (env, child, holder, mbox)
}

/// Issue 14 item 1: DESIGN.md calls a dotlock older than 300 s stale, and
/// other programs remove those. popsync held its dotlock without ever
/// touching it, so a batch that ran long (a large message on a slow link,
/// or a wait for another program's fcntl lock, as here) looked like a lock
/// left by a killed process. Its mtime is set back 250 s, as if that much
/// time had passed: popsync must bring it up to date within seconds.
#[test]
fn a_dotlock_held_for_long_is_kept_fresh() {
    let dovecot = require_dovecot!();
    let sent = vec![
        message_of_size(1, 2000, true),
        message_of_size(2, 2500, false),
    ];
    let (env, mut child, holder, mbox) = start_held_fetch(&dovecot, "fresh", &sent);
    let dotlock = dotlock_of(&mbox);
    age_file(&dotlock, Duration::from_secs(250));
    let refreshed = eventually(Duration::from_secs(8), || {
        age_of(&dotlock) < Duration::from_secs(60)
    });
    let age = age_of(&dotlock);
    drop(holder);
    let code = exit_code(&mut child);
    assert!(
        refreshed,
        "popsync held its dotlock, aged to 250 s, for 8 s without refreshing it (age now {age:?})"
    );
    assert_eq!(code, 0, "{}", spawned_stderr(&env, "run"));
    assert_same_messages(&mbox_messages_sorted(&mbox), &sent, "the mbox");
    assert!(!dotlock.exists(), "popsync's dotlock is removed at the end");
}

/// Issue 14 item 1: popsync removed `PATH.lock` by name when it was done,
/// whoever's it was by then. Here another program removes popsync's dotlock
/// (taking it for stale) and puts its own in its place: that one must stay.
#[test]
fn a_dotlock_another_program_put_in_place_of_ours_is_left_alone() {
    let dovecot = require_dovecot!();
    let sent = vec![message_of_size(1, 2000, true)];
    let (env, mut child, holder, mbox) = start_held_fetch(&dovecot, "theirs", &sent);
    let dotlock = dotlock_of(&mbox);
    fs::remove_file(&dotlock).unwrap();
    fs::write(&dotlock, "4242\n").unwrap();
    drop(holder);
    let code = exit_code(&mut child);
    assert_eq!(code, 0, "{}", spawned_stderr(&env, "run"));
    assert_eq!(
        fs::read_to_string(&dotlock).ok().as_deref(),
        Some("4242\n"),
        "another program's dotlock was removed"
    );
    assert_stderr_contains(&spawned_stderr(&env, "run"), &dotlock.to_string_lossy());
    assert_same_messages(&mbox_messages_sorted(&mbox), &sent, "the mbox");
}

/// The clock of the killed run and the asctime date its `From ` lines get.
const NOW: &str = "2026-03-04T05:06:07Z";
const NOW_ASCTIME: &str = "Wed Mar  4 05:06:07 2026";

/// Issue 14 item 2: recovery took every `From ` line dated in the second of
/// the interrupted run for its own, and cut another program's mail that
/// followed. Here popsync is killed while appending a 20 MB message (after a
/// whole one in the same batch); another program then finds the dotlock
/// stale and appends a message of its own, dated in that very second. The
/// rerun must keep that message, keep popsync's whole message (without
/// fetching it again), leave the torn copy alone rather than cut through
/// others' mail, say so naming the mbox, and deliver the rest once.
#[test]
fn recovery_keeps_mail_another_program_appended_after_a_kill_and_reports_it() {
    let dovecot = require_dovecot!();
    let large = large_message("torn", 20_000_000);
    let sent = vec![
        message_of_size(1, 3000, true),
        large.clone(),
        message_of_size(2, 3000, false),
    ];
    let env = TestEnv::new();
    let mbox = env.path().join("inbox.mbox");
    setup(&dovecot, "recover", &env, &mbox, &sent, "");

    let stderr = File::create(env.path().join("killed.stderr")).unwrap();
    let mut child = env
        .command()
        .env("POPSYNC_NOW", NOW)
        .arg("--config")
        .arg(env.config_path())
        .args(["fetch", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn popsync");
    let reached = wait_while_running(&mut child, Duration::from_secs(60), || {
        file_len(&mbox) > 4_000_000
    });
    assert!(
        kill9(&mut child) && reached,
        "the run ended before it could be killed:\n{}",
        spawned_stderr(&env, "killed")
    );

    // The other program: the dotlock is stale to it; it appends a message
    // after a blank line, as procmail does.
    let _ = fs::remove_file(dotlock_of(&mbox));
    let local = b"Return-Path: <cron@localhost>\nFrom: cron@localhost\n\
                  Subject: local mail delivered while popsync was down\n\nhello\n"
        .to_vec();
    let mut bytes = fs::read(&mbox).unwrap();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.push(b'\n');
    bytes.extend_from_slice(format!("From cron@localhost {NOW_ASCTIME}\n").as_bytes());
    bytes.extend_from_slice(&local);
    bytes.push(b'\n');
    // Appended in place, as an appender does (same file, same inode).
    let mut f = File::options().append(true).open(&mbox).unwrap();
    let old_len = f.metadata().unwrap().len() as usize;
    std::io::Write::write_all(&mut f, &bytes[old_len..]).unwrap();
    drop(f);
    let before_rerun = fs::read(&mbox).unwrap();

    let out = env.run_with_env(&["fetch", "--all"], &[("POPSYNC_NOW", NOW)]);
    eprintln!("the recovery run's stderr:\n{}", out.stderr);
    out.assert_code_with(0, &dovecot);
    let after = fs::read(&mbox).unwrap();
    let messages = parse_mbox(&after);
    let mut rest: Vec<Vec<u8>> = Vec::new();
    let mut local_seen = 0;
    let mut seen = vec![0; sent.len()];
    for m in &messages {
        let body = m.unquoted();
        if body == local {
            local_seen += 1;
        } else if let Some(i) = sent.iter().position(|s| *s == body) {
            seen[i] += 1;
        } else {
            rest.push(m.raw.clone());
        }
    }
    assert_eq!(
        local_seen, 1,
        "the other program's message must survive, once"
    );
    assert!(
        after.starts_with(&before_rerun),
        "recovery changed what was in the mbox (it may only append): {} bytes before, {} after",
        before_rerun.len(),
        after.len()
    );
    assert_eq!(
        seen,
        vec![1; sent.len()],
        "each of popsync's messages whole, once"
    );
    let quoted_large = mboxrd_quote(&large);
    assert!(
        rest.len() <= 1
            && rest.iter().all(|r| {
                let r = r.strip_suffix(b"\n").unwrap_or(r);
                r.len() < quoted_large.len() && quoted_large.starts_with(r)
            }),
        "besides whole messages only the torn start of the large message may remain; found {} \
         other message(s)",
        rest.len()
    );
    if !rest.is_empty() {
        assert_stderr_contains(&out.stderr, &mbox.to_string_lossy());
        assert_stderr_contains(&out.stderr, "left as it is");
    }
    assert!(!dotlock_of(&mbox).exists());
}
