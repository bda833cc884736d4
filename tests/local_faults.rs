//! Local faults around the seen-store, through the real binary: a damaged
//! store is reported (exit 74, with the advice to move it aside) and never
//! silently replaced; a store held by another process makes the run give up
//! after waiting, as a temporary failure, and nothing is fetched twice.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn account_with_mail(messages: usize) -> Option<(Dovecot, User, TestEnv)> {
    let dovecot = Dovecot::start()?;
    let user = dovecot.add_user("carol", "secret");
    for i in 0..messages {
        user.deliver(&sample_message(i, 5));
    }
    let env = TestEnv::new();
    let maildir = env.maildir("carol");
    env.write_accounts(&[account_toml(
        "carol",
        &dovecot,
        &user,
        "implicit",
        &maildir,
        "retention = \"0d\"",
    )]);
    Some((dovecot, user, env))
}

#[test]
fn a_damaged_seen_store_is_reported_and_never_replaced() {
    let Some((_dovecot, user, env)) = account_with_mail(3) else {
        return;
    };
    fs::create_dir_all(env.state_dir()).unwrap();
    let store = env.state_dir().join("seen.sqlite3");
    let garbage = vec![0x5a_u8; 16 * 1024];
    fs::write(&store, &garbage).unwrap();

    let out = env.run(&["fetch", "--all"]);
    out.assert_code(74);
    assert!(out.stderr.contains("seen.sqlite3"), "{}", out.stderr);
    assert!(out.stderr.contains("move it aside"), "{}", out.stderr);
    assert_eq!(
        fs::read(&store).unwrap(),
        garbage,
        "the damaged store was touched"
    );
    assert_eq!(
        user.server_messages().len(),
        3,
        "nothing deleted on the server"
    );
    assert!(
        maildir_messages(&env.maildir("carol")).is_empty(),
        "nothing fetched"
    );
}

#[test]
fn a_seen_store_held_by_another_process_is_a_temporary_failure() {
    let Some((_dovecot, user, env)) = account_with_mail(2) else {
        return;
    };
    // Create the store with a first run, then let another process hold its
    // write lock while popsync runs again.
    env.run(&["fetch", "--all", "-q"]).assert_code(0);
    user.deliver(&sample_message(9, 5));
    let store = env.state_dir().join("seen.sqlite3");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked',flush=True)\n\
             time.sleep(60)\n",
        )
        .arg(&store)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let started = Instant::now();
    let out = env.run(&["fetch", "--all"]);
    let _ = holder.kill();
    let _ = holder.wait();
    out.assert_code(75);
    assert!(
        out.stderr.contains("locked by another process"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        user.server_messages().len(),
        1,
        "the new message stays on the server"
    );

    // Once the other process is gone, the message is fetched exactly once.
    env.run(&["fetch", "--all", "-q"]).assert_code(0);
    assert_eq!(maildir_messages(&env.maildir("carol")).len(), 3);
    assert!(user.server_messages().is_empty());
}
