//! Delivery targets through the real binary against a throwaway Dovecot:
//! mbox read back by the tools users have (Python's `mailbox`, `formail`),
//! mbox locking against concurrent writers and other programs, MDAs
//! (procmail, `%F`/`%T`, exit 75, failures, hangs), and the `Received:`
//! header. The contract is /work/shared/DESIGN.md (Delivery, Promises, Exit
//! codes).

mod common;
mod mailcheck;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Dovecot, TestEnv, User, maildir_files, maildir_messages, require_dovecot, sample_message,
    sorted,
};
use mailcheck::{
    age_file, assert_same_messages, assert_stderr_contains, dotlock_of, formail_split,
    from_line_sender, maildir_account, mbox_account, mbox_messages_sorted, mboxrd_quote,
    mboxrd_unquote, mda_account, message_of_size, parse_mbox, python_mbox, require_tool,
    with_received_header,
};

/// Messages with the lines that break careless mbox writers and readers,
/// with and without an envelope sender. Each ends in LF (as Dovecot stores it).
fn nasty_messages() -> Vec<Vec<u8>> {
    vec![
        // Return-Path, a lone ".", "..", ".x", "From " and ">From " in the body.
        sample_message(1, 4),
        // No Return-Path: the From line says MAILER-DAEMON. The body starts
        // with "From ", has quoted levels, near misses, and ends in blank lines.
        b"From: Nobody <nobody@example.org>\n\
          To: alice@example.net\n\
          Subject: no return path\n\
          \n\
          From the very first body line\n\
          From\n\
          >From once quoted\n\
          >>From twice quoted\n\
          >>>>From four times\n\
          Fromage is not a separator\n\
          \x20From indented\n\
          >From\n\
          >Fro\n\
          .\n\
          ..\n\
          ...\n\
          . \n\
          \n\
          From after a blank line Mon Jun  2 10:00:00 2025\n\
          \n\
          \n"
        .to_vec(),
        // The null sender.
        b"Return-Path: <>\n\
          From: MAILER-DAEMON@example.org\n\
          Subject: bounce\n\
          \n\
          From here on it is a bounce.\n"
            .to_vec(),
        // A separator-looking line inside the header block, and CRLF given to
        // the server (Dovecot stores LF; the wire has CRLF).
        b"Return-Path: <list-bounces+alice=example.net@lists.example.org>\r\n\
          Subject: header trouble\r\n\
          From list@lists.example.org Thu Jan  1 00:00:00 1970\r\n\
          X-Other: y\r\n\
          \r\n\
          .\r\n\
          From x\r\n\
          last line\r\n"
            .to_vec(),
        // Ordinary mail in between, to catch separators eaten by the above.
        message_of_size(5, 3000, true),
    ]
}

/// The envelope sender popsync must put in each nasty message's From line.
const NASTY_SENDERS: [&str; 5] = [
    "sender1@example.org",
    "MAILER-DAEMON",
    "MAILER-DAEMON",
    "list-bounces+alice=example.net@lists.example.org",
    "bulk5@example.org",
];

struct Fixture {
    // Field order is drop order: the env (and its mounts) before the server.
    env: TestEnv,
    user: User,
    dovecot: Dovecot,
}

impl Fixture {
    fn new(dovecot: Dovecot) -> Fixture {
        let user = dovecot.add_user("alice", "secret");
        Fixture {
            env: TestEnv::new(),
            user,
            dovecot,
        }
    }

    fn deliver(&self, messages: &[Vec<u8>]) {
        for m in messages {
            self.user.deliver(m);
        }
    }

    fn mbox(&self) -> PathBuf {
        self.env.path().join("mail").join("inbox.mbox")
    }
}

/// Fetches the nasty messages into an mbox; returns the fixture, the server
/// bytes (LF) in delivery order, and the mbox bytes.
fn nasty_mbox(dovecot: Dovecot) -> (Fixture, Vec<Vec<u8>>, Vec<u8>) {
    let f = Fixture::new(dovecot);
    f.deliver(&nasty_messages());
    let server = f.user.server_messages();
    assert_eq!(server.len(), 5);
    f.env
        .write_accounts(&[mbox_account("work", &f.dovecot, &f.user, &f.mbox(), "")]);
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);
    let bytes = fs::read(f.mbox()).expect("the mbox exists after a fetch");
    (f, server, bytes)
}

#[test]
fn mbox_is_mboxrd_with_sender_date_quoting_and_blank_separators() {
    let dovecot = require_dovecot!();
    let (f, server, bytes) = nasty_mbox(dovecot);

    let parsed = parse_mbox(&bytes);
    assert_eq!(
        parsed.len(),
        server.len(),
        "one mbox message per server message"
    );
    for (i, (m, original)) in parsed.iter().zip(&server).enumerate() {
        assert_eq!(
            from_line_sender(&m.from),
            NASTY_SENDERS[i],
            "message {i}: envelope sender from Return-Path, else MAILER-DAEMON"
        );
        assert_eq!(
            String::from_utf8_lossy(&m.raw),
            String::from_utf8_lossy(&mboxrd_quote(original)),
            "message {i}: exactly the server bytes with one more '>' on ^>*From lines"
        );
    }
    // The exact quoting of the second message, spelled out.
    let body = String::from_utf8_lossy(&parsed[1].raw).into_owned();
    for line in [
        "\n>From the very first body line\n",
        "\nFrom\n",
        "\n>>From once quoted\n",
        "\n>>>From twice quoted\n",
        "\n>>>>>From four times\n",
        "\nFromage is not a separator\n",
        "\n From indented\n",
        "\n>From\n>Fro\n.\n..\n...\n. \n\n>From after a blank line",
    ] {
        assert!(body.contains(line), "expected {line:?} in:\n{body}");
    }
    assert!(
        !String::from_utf8_lossy(&bytes).contains('\r'),
        "the mbox must have LF line ends"
    );
    assert!(
        !dotlock_of(&f.mbox()).exists(),
        "the dotlock is removed after delivery"
    );
}

#[test]
fn mbox_reads_back_byte_for_byte_with_python_mailbox() {
    require_tool!("python3");
    let dovecot = require_dovecot!();
    let (f, server, _) = nasty_mbox(dovecot);

    let read = python_mbox(&f.mbox());
    assert_eq!(
        read.len(),
        server.len(),
        "Python's mailbox.mbox must see one message per server message"
    );
    for (i, ((from, raw), original)) in read.iter().zip(&server).enumerate() {
        assert_eq!(from_line_sender(from), NASTY_SENDERS[i], "message {i}");
        assert_eq!(
            String::from_utf8_lossy(&mboxrd_unquote(raw)),
            String::from_utf8_lossy(original),
            "message {i} as read by Python (after undoing one '>' of quoting)"
        );
    }
}

#[test]
fn mbox_reads_back_byte_for_byte_with_formail() {
    require_tool!("formail");
    let dovecot = require_dovecot!();
    let (f, server, _) = nasty_mbox(dovecot);

    let parts = formail_split(&f.mbox(), &f.env.path().join("formail"));
    assert_eq!(
        parts.len(),
        server.len(),
        "formail -s must split the mbox into one part per server message"
    );
    for (i, (part, original)) in parts.iter().zip(&server).enumerate() {
        // formail keeps the From line first and the blank separator line last.
        let nl = part.iter().position(|&b| b == b'\n').expect("a From line");
        let from = std::str::from_utf8(&part[..nl]).expect("UTF-8 From line");
        let from = from.strip_prefix("From ").unwrap_or_else(|| {
            panic!("formail part {i} does not start with a From line: {from:?}")
        });
        assert_eq!(from_line_sender(from), NASTY_SENDERS[i], "message {i}");
        let rest = &part[nl + 1..];
        let message = rest
            .strip_suffix(b"\n")
            .unwrap_or_else(|| panic!("formail part {i} lacks the separator line"));
        let mut want = String::from_utf8_lossy(original).into_owned();
        if i == 3 {
            // formail ends a header block at the first line that is not a
            // header field (here the quoted ">From " line inside the header)
            // and inserts a blank line there: its own normalisation, which it
            // does to any such message, whoever wrote the mbox.
            want = want.replacen("\nFrom list@", "\n\nFrom list@", 1);
        }
        assert_eq!(
            String::from_utf8_lossy(&mboxrd_unquote(message)),
            want,
            "message {i} as split by formail (after undoing one '>' of quoting)"
        );
    }
}

/// Two accounts whose mail goes into one mbox: `users` messages of `size`
/// bytes each; returns all server messages.
/// How often consecutive messages in the mbox come from different accounts
/// (the bulk numbers are 1000+ for alice and 2000+ for bob): more than one
/// means the writers really took turns.
fn turns(mbox: &Path) -> usize {
    let owners: Vec<bool> = parse_mbox(&fs::read(mbox).unwrap())
        .iter()
        .map(|m| String::from_utf8_lossy(&m.raw).contains("Subject: bulk message 1"))
        .collect();
    owners.windows(2).filter(|w| w[0] != w[1]).count()
}

fn two_accounts_one_mbox(f: &Fixture, second: &User, count: usize, size: usize) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for i in 0..count {
        let a = message_of_size(1000 + i, size, true);
        let b = message_of_size(2000 + i, size, i % 2 == 0);
        f.user.deliver(&a);
        second.deliver(&b);
        all.push(a);
        all.push(b);
    }
    all
}

#[test]
fn parallel_accounts_append_to_one_mbox_without_interleaving() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let bob = f.dovecot.add_user("bob", "hunter2");
    // Messages bigger than any write buffer, so unlocked writers would mix.
    let all = two_accounts_one_mbox(&f, &bob, 25, 150_000);
    f.env.write_accounts(&[
        mbox_account("alice", &f.dovecot, &f.user, &f.mbox(), ""),
        mbox_account("bob", &f.dovecot, &bob, &f.mbox(), ""),
    ]);

    f.env
        .run(&["fetch", "--all", "--jobs", "2"])
        .assert_code_with(0, &f.dovecot);

    assert_same_messages(
        &mbox_messages_sorted(&f.mbox()),
        &all,
        "the mbox written by two parallel accounts",
    );
    eprintln!(
        "the two accounts took {} turns at the mbox",
        turns(&f.mbox())
    );
    assert!(!dotlock_of(&f.mbox()).exists());
}

#[test]
fn two_processes_append_to_one_mbox_without_interleaving() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let bob = f.dovecot.add_user("bob", "hunter2");
    let all = two_accounts_one_mbox(&f, &bob, 25, 150_000);
    f.env.write_accounts(&[
        mbox_account("alice", &f.dovecot, &f.user, &f.mbox(), ""),
        mbox_account("bob", &f.dovecot, &bob, &f.mbox(), ""),
    ]);

    let a = mailcheck::spawn(&f.env, &["fetch", "alice"], "alice");
    let b = mailcheck::spawn(&f.env, &["fetch", "bob"], "bob");
    for (name, child) in [("alice", a), ("bob", b)] {
        let out = child.wait_with_output().expect("wait for popsync");
        assert_eq!(
            out.status.code(),
            Some(0),
            "popsync fetch {name}: {}",
            mailcheck::spawned_stderr(&f.env, name)
        );
    }

    assert_same_messages(
        &mbox_messages_sorted(&f.mbox()),
        &all,
        "the mbox written by two popsync processes at once",
    );
    eprintln!(
        "the two processes took {} turns at the mbox",
        turns(&f.mbox())
    );
    assert!(!dotlock_of(&f.mbox()).exists());
}

#[test]
fn stale_mbox_dotlock_is_removed_with_a_warning() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3), sample_message(2, 5)];
    f.deliver(&sent);
    fs::create_dir_all(f.mbox().parent().unwrap()).unwrap();
    let lock = dotlock_of(&f.mbox());
    fs::write(&lock, "99999\n").unwrap();
    age_file(&lock, Duration::from_secs(301));
    f.env.write_accounts(&[mbox_account(
        "work",
        &f.dovecot,
        &f.user,
        &f.mbox(),
        "timeout = 5",
    )]);

    let out = f.env.run(&["fetch", "--all"]);

    out.assert_code_with(0, &f.dovecot);
    assert_stderr_contains(&out.stderr, "stale");
    assert_stderr_contains(&out.stderr, &lock.to_string_lossy());
    assert_same_messages(&mbox_messages_sorted(&f.mbox()), &sent, "the mbox");
    assert!(
        !lock.exists(),
        "the stale lock is gone and ours was released"
    );
}

/// After a fetch that had to give up on a locked mbox: exit 75 after about
/// the timeout, nothing written, nothing deleted, nothing marked seen.
fn assert_gave_up_on_lock(f: &Fixture, out: &common::Output, took: Duration, sent: &[Vec<u8>]) {
    out.assert_code_with(75, &f.dovecot);
    assert!(
        took >= Duration::from_millis(1900),
        "popsync must wait for the lock (about timeout = 2 s) before giving up; it took {took:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "it gave up only after {took:?}"
    );
    assert_stderr_contains(&out.stderr, &f.mbox().to_string_lossy());
    assert_stderr_contains(&out.stderr, "lock");
    assert_eq!(
        mailcheck::file_len(&f.mbox()),
        0,
        "nothing may be written into a locked mbox"
    );
    assert_eq!(
        sorted(f.user.server_messages()),
        sorted(sent.to_vec()),
        "with retention 0d nothing may be deleted that was not delivered"
    );
}

#[test]
fn mbox_dotlock_held_by_another_program_makes_delivery_wait_then_exit_75() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3), sample_message(2, 5)];
    f.deliver(&sent);
    fs::create_dir_all(f.mbox().parent().unwrap()).unwrap();
    let lock = dotlock_of(&f.mbox());
    fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    f.env.write_accounts(&[mbox_account(
        "work",
        &f.dovecot,
        &f.user,
        &f.mbox(),
        "timeout = 2\nretention = \"0d\"",
    )]);

    let started = Instant::now();
    let out = f.env.run(&["fetch", "--all"]);
    let took = started.elapsed();

    assert_gave_up_on_lock(&f, &out, took, &sent);
    assert!(lock.exists(), "another program's lock must not be removed");

    // The other program is done: the next run delivers everything, once.
    fs::remove_file(&lock).unwrap();
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);
    assert_same_messages(&mbox_messages_sorted(&f.mbox()), &sent, "the mbox");
    assert!(
        f.user.server_messages().is_empty(),
        "retention 0d deletes after delivery"
    );
}

#[test]
fn mbox_fcntl_lock_held_by_another_program_makes_delivery_wait_then_exit_75() {
    require_tool!("python3");
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3)];
    f.deliver(&sent);
    fs::create_dir_all(f.mbox().parent().unwrap()).unwrap();
    fs::write(f.mbox(), "").unwrap();
    f.env.write_accounts(&[mbox_account(
        "work",
        &f.dovecot,
        &f.user,
        &f.mbox(),
        "timeout = 2\nretention = \"0d\"",
    )]);
    // A mail reader holding a POSIX (fcntl) write lock on the whole mbox.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'r+')\n\
             fcntl.lockf(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(120)\n",
        )
        .arg(f.mbox())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");

    let started = Instant::now();
    let out = f.env.run(&["fetch", "--all"]);
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();

    assert_gave_up_on_lock(&f, &out, took, &sent);
    assert!(
        !dotlock_of(&f.mbox()).exists(),
        "popsync must remove its own dotlock when it gives up"
    );
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);
    assert_same_messages(&mbox_messages_sorted(&f.mbox()), &sent, "the mbox");
}

/// A shell word for `path` (single-quoted).
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

#[test]
fn procmail_as_mda_delivers_into_a_maildir_byte_for_byte() {
    require_tool!("procmail");
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let mut sent = nasty_messages();
    sent.extend((10..20).map(|i| sample_message(i, i)));
    f.deliver(&sent);
    let server = f.user.server_messages();
    let maildir = f.env.path().join("procmail-maildir");
    let rc = f.env.path().join("procmailrc");
    // DEFAULT ending in '/' is a Maildir to procmail.
    fs::write(
        &rc,
        format!(
            "DEFAULT={}/\nLOGFILE={}\n",
            maildir.display(),
            f.env.path().join("procmail.log").display()
        ),
    )
    .unwrap();
    let mda = format!("procmail -m {}", sh_quote(&rc));
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        &mda,
        "retention = \"0d\"",
    )]);

    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);

    // procmail -m (mail filter mode) adds no From_ line and no headers when
    // it writes a Maildir, so what it stores is what popsync piped in: the
    // server's bytes, LF line ends.
    assert_same_messages(
        &maildir_messages(&maildir),
        &server,
        "the Maildir procmail wrote",
    );
    assert!(
        f.user.server_messages().is_empty(),
        "MDA exit 0 is a delivery: retention 0d deletes"
    );
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);
    assert_eq!(
        maildir_files(&maildir).len(),
        server.len(),
        "a second run delivers nothing"
    );
}

#[test]
fn mda_gets_envelope_sender_and_user_shell_quoted() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    // No white space: popsync drops it from the envelope sender (it goes
    // into a From line); ${IFS} does the shell's word splitting instead.
    let hostile =
        b"Return-Path: <o'brien$(touch${IFS}PWNED)`touch${IFS}PWNED2`;\"x\"@example.org>\n\
                    Subject: hostile sender\n\nbody\n"
            .to_vec();
    let plain = b"Subject: no sender\n\nbody\n".to_vec();
    f.deliver(&[sample_message(1, 2), hostile, plain]);
    let out_file = f.env.path().join("args");
    let mda = format!(
        "printf '%%s|%%s\\n' %F %T >> {}; cat > /dev/null",
        sh_quote(&out_file)
    );
    f.env
        .write_accounts(&[mda_account("work", &f.dovecot, &f.user, &mda, "")]);

    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);

    let seen = fs::read_to_string(&out_file).expect("the MDA ran");
    assert_eq!(
        seen,
        "sender1@example.org|alice\n\
         o'brien$(touch${IFS}PWNED)`touch${IFS}PWNED2`;\"x\"@example.org|alice\n\
         MAILER-DAEMON|alice\n",
        "%F is the Return-Path address (else MAILER-DAEMON) and %T the account user, \
         each one shell word"
    );
    for name in ["PWNED", "PWNED2"] {
        assert!(
            !f.env.path().join(name).exists(),
            "the sender address was run as a command"
        );
    }
}

#[test]
fn mda_exit_75_keeps_mail_on_the_server_until_a_later_run_delivers_it_once() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent: Vec<Vec<u8>> = (1..=3).map(|i| sample_message(i, i)).collect();
    f.deliver(&sent);
    let outdir = f.env.path().join("delivered");
    fs::create_dir_all(&outdir).unwrap();
    let extra = "retention = \"0d\"";
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        "cat > /dev/null; echo 'mailbox busy, try later' >&2; exit 75",
        extra,
    )]);

    let out = f.env.run(&["fetch", "--all"]);

    out.assert_code_with(75, &f.dovecot);
    assert_stderr_contains(&out.stderr, "mailbox busy, try later");
    assert_eq!(
        sorted(f.user.server_messages()),
        sorted(sent.clone()),
        "a temporary MDA failure leaves every message on the server"
    );

    // The MDA works again: each message arrives exactly once.
    let mda = format!("cat > \"$(mktemp {}/m.XXXXXX)\"", outdir.display());
    f.env
        .write_accounts(&[mda_account("work", &f.dovecot, &f.user, &mda, extra)]);
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);
    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);

    let delivered: Vec<Vec<u8>> = fs::read_dir(&outdir)
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_same_messages(&delivered, &sent, "what the MDA received over three runs");
    assert!(f.user.server_messages().is_empty());
}

#[test]
fn mda_failure_exits_74_with_the_mda_stderr() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3), sample_message(2, 4)];
    f.deliver(&sent);
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        "cat > /dev/null; echo 'procmail: Quota exceeded for alice' >&2; exit 3",
        "retention = \"0d\"",
    )]);

    let out = f.env.run(&["fetch", "--all"]);

    out.assert_code_with(74, &f.dovecot);
    assert_stderr_contains(&out.stderr, "procmail: Quota exceeded for alice");
    assert_stderr_contains(&out.stderr, "work");
    assert_eq!(
        sorted(f.user.server_messages()),
        sorted(sent),
        "a failed delivery deletes nothing"
    );
}

#[test]
fn mda_killed_by_a_signal_exits_74_and_keeps_the_mail_on_the_server() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3)];
    f.deliver(&sent);
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        "cat > /dev/null; kill -9 $$",
        "retention = \"0d\"",
    )]);

    let out = f.env.run(&["fetch", "--all"]);

    out.assert_code_with(74, &f.dovecot);
    assert_stderr_contains(&out.stderr, "signal");
    assert_eq!(f.user.server_messages(), sent, "nothing deleted");
    let again = f.env.run(&["fetch", "--all"]);
    again.assert_code_with(74, &f.dovecot);
    assert_stderr_contains(&again.stderr, "signal");
}

#[test]
fn mda_that_hangs_is_killed_after_command_timeout() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3)];
    f.deliver(&sent);
    let pidfile = f.env.path().join("mda.pid");
    // Reads the message, then hangs (as an MDA stuck on a lock would).
    let mda = format!(
        "cat > /dev/null; echo $$ > {}; exec sleep 60",
        sh_quote(&pidfile)
    );
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        &mda,
        "command_timeout = 2\nretention = \"0d\"",
    )]);

    let started = Instant::now();
    let out = f.env.run(&["fetch", "--all"]);
    let took = started.elapsed();

    out.assert_code_with(74, &f.dovecot);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(20),
        "the MDA must be given command_timeout (2 s), then killed; the run took {took:?}"
    );
    assert_stderr_contains(&out.stderr, "command_timeout");
    let pid = fs::read_to_string(&pidfile).expect("the MDA started");
    assert!(
        !Path::new("/proc").join(pid.trim()).join("cmdline").exists()
            || fs::read_to_string(Path::new("/proc").join(pid.trim()).join("stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the hung MDA (pid {}) must be killed",
        pid.trim()
    );
    assert_eq!(
        sorted(f.user.server_messages()),
        sorted(sent),
        "nothing deleted"
    );
}

#[test]
fn mda_that_never_reads_a_large_message_is_killed_after_command_timeout() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    // Far more than a pipe holds: the writer blocks on the MDA.
    let sent = vec![message_of_size(1, 2_000_000, true)];
    f.deliver(&sent);
    f.env.write_accounts(&[mda_account(
        "work",
        &f.dovecot,
        &f.user,
        "exec sleep 60",
        "command_timeout = 2\nretention = \"0d\"",
    )]);

    let started = Instant::now();
    let out = f.env.run(&["fetch", "--all"]);
    let took = started.elapsed();

    out.assert_code_with(74, &f.dovecot);
    assert!(
        took < Duration::from_secs(20),
        "a blocked MDA must be killed after command_timeout; the run took {took:?}"
    );
    assert_stderr_contains(&out.stderr, "command_timeout");
    assert_eq!(
        sorted(f.user.server_messages()),
        sorted(sent),
        "nothing deleted"
    );
}

/// Splits `bytes` after its first header field (the first line and its
/// continuation lines).
fn split_first_header(bytes: &[u8]) -> (&[u8], &[u8]) {
    let mut end = 0;
    for (k, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if k > 0 && !(line.starts_with(b" ") || line.starts_with(b"\t")) {
            break;
        }
        end += line.len();
    }
    bytes.split_at(end)
}

/// Checks that `delivered` is one added `Received:` header naming the server
/// host and the user, followed by exactly `original`.
fn assert_one_received_header_then(delivered: &[u8], original: &[u8], user: &str, what: &str) {
    let (header, rest) = split_first_header(delivered);
    let header = String::from_utf8_lossy(header);
    assert!(
        header.starts_with("Received: "),
        "{what}: the first line must be the added Received: header, got {header:?}"
    );
    assert!(
        header.contains("127.0.0.1"),
        "{what}: the Received: header must name the server host: {header:?}"
    );
    assert!(
        header.contains(user),
        "{what}: the Received: header must name the user {user}: {header:?}"
    );
    assert!(
        header.ends_with('\n') && !header.contains('\r'),
        "{what}: {header:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(rest),
        String::from_utf8_lossy(original),
        "{what}: after the one added header, the server's bytes exactly"
    );
}

/// Three accounts on three users with the same mail: Maildir, mbox, MDA
/// (writing what it gets to files). Returns (server messages, maildir
/// messages, mbox messages, MDA messages), each in delivery order.
fn fetch_into_all_three_targets(received: bool) -> Option<[Vec<Vec<u8>>; 4]> {
    let dovecot = Dovecot::start()?;
    let env = TestEnv::new();
    let mut sent = nasty_messages();
    sent.push(sample_message(7, 20));
    let users: Vec<User> = ["md", "mb", "mda"]
        .iter()
        .map(|n| dovecot.add_user(n, "secret"))
        .collect();
    for u in &users {
        for m in &sent {
            u.deliver(m);
        }
    }
    let maildir = env.maildir("md");
    let mbox = env.path().join("mail/mb.mbox");
    let mda_dir = env.path().join("mda-out");
    fs::create_dir_all(&mda_dir).unwrap();
    // Numbered in arrival order.
    let mda = format!(
        "n=$(ls {d} | wc -l); cat > {d}/$(printf %%04d $n)",
        d = sh_quote(&mda_dir)
    );
    let fix = |t: String| {
        if received {
            with_received_header(&t)
        } else {
            t
        }
    };
    env.write_accounts(&[
        fix(maildir_account("md", &dovecot, &users[0], &maildir, "")),
        fix(mbox_account("mb", &dovecot, &users[1], &mbox, "")),
        fix(mda_account("mda", &dovecot, &users[2], &mda, "")),
    ]);
    env.run(&["fetch", "--all", "--jobs", "1"])
        .assert_code_with(0, &dovecot);

    let server = users[0].server_messages();
    for u in &users[1..] {
        assert_eq!(u.server_messages(), server);
    }
    assert!(
        server.iter().all(|m| !m.contains(&b'\r')),
        "Dovecot stores LF line ends (the wire has CRLF)"
    );
    // Maildir file names sort by time, so by delivery order.
    let md: Vec<Vec<u8>> = maildir_files(&maildir)
        .into_iter()
        .map(|f| f.bytes)
        .collect();
    let mbox_bytes = fs::read(&mbox).unwrap();
    let mb: Vec<Vec<u8>> = parse_mbox(&mbox_bytes)
        .iter()
        .map(|m| m.unquoted())
        .collect();
    let mut names: Vec<PathBuf> = fs::read_dir(&mda_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mda_got: Vec<Vec<u8>> = names.iter().map(|p| fs::read(p).unwrap()).collect();
    for (what, got) in [("Maildir", &md), ("mbox", &mb), ("MDA", &mda_got)] {
        assert_eq!(
            got.len(),
            server.len(),
            "{what}: one message per server message"
        );
        for m in got {
            assert!(
                !m.windows(2).any(|w| w == b"\r\n"),
                "{what}: CRLF from the wire must be LF on disk: {}",
                mailcheck::preview(m)
            );
        }
    }
    Some([server, md, mb, mda_got])
}

#[test]
fn received_header_is_added_once_first_for_every_target() {
    let Some([server, md, mb, mda]) = fetch_into_all_three_targets(true) else {
        return; // `cannot_run` said "skipped"
    };
    for (what, user, got) in [
        ("Maildir", "md", md),
        ("mbox", "mb", mb),
        ("MDA", "mda", mda),
    ] {
        // Maildir names sort by delivery time; compare as multisets by
        // stripping the header, then each one exactly.
        let mut stripped = Vec::new();
        for m in &got {
            let (_, rest) = split_first_header(m);
            stripped.push(rest.to_vec());
        }
        assert_same_messages(&stripped, &server, what);
        for m in &got {
            let (_, rest) = split_first_header(m);
            assert_one_received_header_then(m, rest, user, what);
            let count = |b: &[u8]| {
                b.split(|&c| c == b'\n')
                    .take_while(|l| !l.is_empty())
                    .filter(|l| l.starts_with(b"Received:"))
                    .count()
            };
            assert_eq!(
                count(m),
                count(rest) + 1,
                "{what}: exactly one Received: header is added"
            );
        }
    }
}

#[test]
fn received_header_in_mbox_comes_right_after_the_from_line() {
    let dovecot = require_dovecot!();
    let f = Fixture::new(dovecot);
    let sent = vec![sample_message(1, 3), nasty_messages().remove(1)];
    f.deliver(&sent);
    let server = f.user.server_messages();
    f.env.write_accounts(&[with_received_header(&mbox_account(
        "work",
        &f.dovecot,
        &f.user,
        &f.mbox(),
        "",
    ))]);

    f.env
        .run(&["fetch", "--all"])
        .assert_code_with(0, &f.dovecot);

    let bytes = fs::read(f.mbox()).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let parsed = parse_mbox(&bytes);
    assert_eq!(parsed.len(), 2, "{text}");
    for (m, original) in parsed.iter().zip(&server) {
        assert_one_received_header_then(&m.unquoted(), original, "alice", "mbox");
    }
    for (k, line) in text.lines().enumerate() {
        if line.starts_with("From ") {
            let next = text.lines().nth(k + 1).unwrap_or_default();
            assert!(
                next.starts_with("Received: "),
                "the line after {line:?} must be the Received: header, got {next:?}"
            );
        }
    }
}

#[test]
fn without_received_header_every_target_gets_the_server_bytes_with_lf_line_ends() {
    let Some([server, md, mb, mda]) = fetch_into_all_three_targets(false) else {
        return; // `cannot_run` said "skipped"
    };
    assert_same_messages(&md, &server, "Maildir");
    assert_eq!(mb, server, "mbox (in delivery order)");
    assert_eq!(mda, server, "MDA (in delivery order)");
}
