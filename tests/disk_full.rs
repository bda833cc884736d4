//! A full disk under the delivery target: a small tmpfs (mounted by the
//! test, which needs root; without it the test fails, or skips with a note
//! under POPSYNC_TEST_SKIP_SERVERS=1: `common::cannot_run`)
//! holds the Maildir or the mbox. popsync must exit 74 naming the path and
//! the full disk, leave only whole messages behind, delete nothing that was
//! not delivered (retention "0d"), and deliver the rest exactly once when
//! space is freed (DESIGN.md: Promises 1 and 2, exit code 74).

mod common;
mod mailcheck;

use std::fs;
use std::path::{Path, PathBuf};

use common::{
    Dovecot, TestEnv, User, maildir_files, maildir_messages, maildir_tmp_files, require_dovecot,
};
use mailcheck::{
    Tmpfs, assert_same_messages, assert_stderr_contains, assert_subset, dotlock_of,
    maildir_account, mbox_account, mbox_messages_sorted, message_of_size,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Maildir,
    Mbox,
}

/// Messages around one bigger than the whole (2 MB) file system.
fn one_too_big() -> Vec<Vec<u8>> {
    vec![
        message_of_size(1, 20_000, true),
        message_of_size(2, 20_000, false),
        message_of_size(3, 3_000_000, true),
        message_of_size(4, 20_000, true),
        message_of_size(5, 20_000, false),
    ]
}

/// Many small messages that together overflow 2 MB; each is smaller than a
/// write buffer, so the failing one may only fail when it is flushed.
fn many_small() -> Vec<Vec<u8>> {
    (0..60)
        .map(|i| message_of_size(100 + i, 40_000, i % 2 == 0))
        .collect()
}

/// Whole messages in the target (the mbox parsed strictly: a torn message
/// fails here).
fn delivered(target: Target, place: &Path) -> Vec<Vec<u8>> {
    match target {
        Target::Maildir => maildir_messages(place),
        Target::Mbox => mbox_messages_sorted(place),
    }
}

fn fill_then_free(target: Target, messages: Vec<Vec<u8>>) {
    let dovecot: Dovecot = require_dovecot!();
    let alice: User = dovecot.add_user("alice", "secret");
    for m in &messages {
        alice.deliver(m);
    }
    let sent = alice.server_messages();
    let env = TestEnv::new();
    let disk_dir = env.path().join("disk");
    // Declared after `env`: unmounted before the temp dir is removed.
    let Some(disk) = Tmpfs::mount(&disk_dir, "2m") else {
        return;
    };
    let place: PathBuf = match target {
        Target::Maildir => disk_dir.join("Maildir"),
        Target::Mbox => disk_dir.join("inbox.mbox"),
    };
    let extra = "retention = \"0d\"";
    env.write_accounts(&[match target {
        Target::Maildir => maildir_account("work", &dovecot, &alice, &place, extra),
        Target::Mbox => mbox_account("work", &dovecot, &alice, &place, extra),
    }]);

    let out = env.run(&["fetch", "--all"]);

    out.assert_code_with(74, &dovecot);
    assert_stderr_contains(&out.stderr, &place.to_string_lossy());
    assert!(
        out.stderr.contains("disk is full") || out.stderr.contains("No space left on device"),
        "stderr should say the disk is full:\n{}",
        out.stderr
    );
    let got = delivered(target, &place);
    assert!(
        got.len() < sent.len(),
        "the test is broken: everything fitted on the small disk"
    );
    assert_subset(&got, &sent, "after the disk filled up");
    match target {
        Target::Maildir => {
            assert_eq!(
                maildir_tmp_files(&place),
                Vec::<String>::new(),
                "a failed delivery must not leave its partial file in tmp/"
            );
            for f in maildir_files(&place) {
                assert!(
                    sent.contains(&f.bytes),
                    "{}/{} is not a whole message",
                    f.subdir,
                    f.name
                );
            }
        }
        Target::Mbox => {
            assert!(
                !dotlock_of(&place).exists(),
                "the dotlock must be removed after the failure"
            );
        }
    }
    let mut covered = alice.server_messages();
    covered.extend(got.iter().cloned());
    for m in &sent {
        assert!(
            covered.contains(m),
            "retention 0d deleted a message that was not delivered: {}",
            mailcheck::preview(m)
        );
    }

    // Space is freed: the next run delivers the rest, exactly once.
    disk.resize("64m");
    let out = env.run(&["fetch", "--all"]);
    out.assert_code_with(0, &dovecot);
    assert_same_messages(
        &delivered(target, &place),
        &sent,
        "after space was freed and popsync ran again",
    );
    if target == Target::Maildir {
        assert_eq!(maildir_tmp_files(&place), Vec::<String>::new());
    }
    assert!(
        alice.server_messages().is_empty(),
        "retention 0d deletes every delivered message"
    );
    drop(disk);
    let _ = fs::remove_dir(&disk_dir);
}

#[test]
fn maildir_on_a_full_disk_exits_74_keeps_only_whole_messages_and_recovers() {
    fill_then_free(Target::Maildir, one_too_big());
}

#[test]
fn maildir_filled_by_many_small_messages_exits_74_and_leaves_nothing_in_tmp() {
    fill_then_free(Target::Maildir, many_small());
}

#[test]
fn mbox_on_a_full_disk_exits_74_keeps_only_whole_messages_and_recovers() {
    fill_then_free(Target::Mbox, one_too_big());
}

#[test]
fn mbox_filled_by_many_small_messages_exits_74_keeps_only_whole_messages() {
    fill_then_free(Target::Mbox, many_small());
}
