//! `popsync fetch` into Maildir through the real binary against a real,
//! throwaway Dovecot: what a user would check afterwards (the bytes in the
//! Maildir, what is left on the server, the exit code, the error text).
//! The contract is /work/shared/DESIGN.md (CLI, config keys, exit codes).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{
    Account, Dovecot, TestEnv, User, account_toml, maildir_files, maildir_messages,
    maildir_tmp_files, require_dovecot, sample_message, sorted,
};

/// Delivers `n` sample messages (numbered from `first`) to `user` on the server
/// and returns them.
fn deliver_samples(user: &User, first: usize, n: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let message = sample_message(i, 3 + i % 7);
            user.deliver(&message);
            message
        })
        .collect()
}

/// A TestEnv whose config holds one account `name` fetching `user` from
/// `dovecot` into DIR/mail/NAME over implicit TLS, plus `extra` lines.
fn env_with_account(name: &str, dovecot: &Dovecot, user: &User, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let maildir = env.maildir(name);
    env.write_accounts(&[account_toml(
        name, dovecot, user, "implicit", &maildir, extra,
    )]);
    env
}

/// Checks a popsync-made Maildir file name against the Maildir spec as DESIGN.md
/// fixes it: `<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>` (i.e. the regex
/// `^\d+\.M\d+P\d+Q\d+\..+,S=\d+$`), optionally followed by `:2,FLAGS` in
/// cur/. Returns the S= value.
fn maildir_name_size(name: &str) -> Option<u64> {
    fn digits(s: &str) -> Option<(&str, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        (end > 0).then(|| s.split_at(end))
    }
    let base = name.split_once(":2,").map_or(name, |(base, _)| base);
    let (_secs, rest) = digits(base)?;
    let (_usec, rest) = digits(rest.strip_prefix(".M")?)?;
    let (_pid, rest) = digits(rest.strip_prefix('P')?)?;
    let (_n, rest) = digits(rest.strip_prefix('Q')?)?;
    let rest = rest.strip_prefix('.')?;
    let (host, size) = rest.rsplit_once(",S=")?;
    if host.is_empty() || size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    size.parse().ok()
}

fn file_names(maildir: &Path) -> BTreeSet<String> {
    maildir_files(maildir).into_iter().map(|f| f.name).collect()
}

fn assert_stderr_contains(stderr: &str, needle: &str) {
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}; it was:\n{stderr}"
    );
}

#[test]
fn first_run_fetches_every_message_byte_for_byte() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "alice's secret");
    let sent = deliver_samples(&alice, 1, 10);
    let env = env_with_account("work", &dovecot, &alice, "");

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    let maildir = env.maildir("work");
    assert_eq!(
        maildir_messages(&maildir),
        sorted(sent.clone()),
        "the Maildir must hold exactly the messages on the server, byte for byte"
    );
    assert_eq!(
        maildir_messages(&maildir),
        sorted(alice.server_messages()),
        "the Maildir must equal what Dovecot stores"
    );
    for file in maildir_files(&maildir) {
        let size = maildir_name_size(&file.name).unwrap_or_else(|| {
            panic!(
                "{}/{} is not a Maildir name <secs>.M<usec>P<pid>Q<n>.<host>,S=<size>",
                file.subdir, file.name
            )
        });
        assert_eq!(
            size,
            file.bytes.len() as u64,
            "S= in {} must equal the file size",
            file.name
        );
    }
    assert_eq!(
        maildir_tmp_files(&maildir),
        Vec::<String>::new(),
        "nothing may be left in tmp/"
    );
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "the default retention (forever) leaves every message on the server"
    );
}

#[test]
fn second_run_fetches_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with_account("work", &dovecot, &alice, "");

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    let after_first = file_names(&env.maildir("work"));
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    assert_eq!(
        file_names(&env.maildir("work")),
        after_first,
        "the second run must not deliver anything"
    );
    assert_eq!(maildir_messages(&env.maildir("work")), sorted(sent));
}

#[test]
fn removing_the_store_fetches_everything_again() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with_account("work", &dovecot, &alice, "");

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    let mut removed = 0;
    for entry in fs::read_dir(env.state_dir()).expect("state_dir exists after a run") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("seen.sqlite3") {
            fs::remove_file(&path).expect("remove the seen-store");
            removed += 1;
        }
    }
    assert!(
        removed > 0,
        "no seen.sqlite3* in {}",
        env.state_dir().display()
    );
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    let twice = sorted(sent.iter().chain(&sent).cloned().collect());
    assert_eq!(
        maildir_messages(&env.maildir("work")),
        twice,
        "without the store every message on the server is new again"
    );
}

#[test]
fn starttls_fetch_works() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 4);
    let env = TestEnv::new();
    let maildir = env.maildir("work");
    env.write_accounts(&[account_toml(
        "work", &dovecot, &alice, "starttls", &maildir, "",
    )]);

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    assert_eq!(maildir_messages(&maildir), sorted(sent));
    assert!(
        dovecot.log().contains("user=<alice>, method="),
        "Dovecot should have logged alice in"
    );
}

#[test]
fn new_mail_after_first_run_is_fetched_alone() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let old = deliver_samples(&alice, 1, 2);
    let env = env_with_account("work", &dovecot, &alice, "");
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    let before = file_names(&env.maildir("work"));

    let new = sample_message(100, 4);
    alice.deliver(&new);
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    let added: Vec<Vec<u8>> = maildir_files(&env.maildir("work"))
        .into_iter()
        .filter(|f| !before.contains(&f.name))
        .map(|f| f.bytes)
        .collect();
    assert_eq!(
        added,
        vec![new.clone()],
        "the second run delivers the new message only"
    );
    let all = sorted(old.into_iter().chain([new]).collect());
    assert_eq!(maildir_messages(&env.maildir("work")), all);
}

#[test]
fn wrong_password_exits_77_with_clear_message() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = TestEnv::new();
    let maildir = env.maildir("work");
    env.write_accounts(&[Account::new("work", &dovecot, &alice)
        .password("not the password")
        .maildir(&maildir)
        .toml()]);

    let out = env.run(&["fetch", "--all"]);

    out.assert_code_with(77, &dovecot);
    assert_stderr_contains(&out.stderr, "work");
    assert_stderr_contains(&out.stderr, "authentication failed");
    assert!(
        !out.stderr.contains("not the password"),
        "the password must not be printed"
    );
    assert!(maildir_messages(&maildir).is_empty());
    assert_eq!(sorted(alice.server_messages()), sorted(sent));
}

#[test]
fn untrusted_certificate_exits_77() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = TestEnv::new();
    let maildir = env.maildir("work");
    // Without ca_file only the system roots are trusted, and they do not hold
    // the test CA.
    env.write_accounts(&[Account::new("work", &dovecot, &alice)
        .without_ca_file()
        .maildir(&maildir)
        .toml()]);

    let out = env.run(&["fetch", "--all"]);

    out.assert_code_with(77, &dovecot);
    assert_stderr_contains(&out.stderr, "certificate");
    assert!(maildir_messages(&maildir).is_empty());
    assert_eq!(sorted(alice.server_messages()), sorted(sent));
    assert!(
        !dovecot.log().contains("Login: user=<alice>"),
        "no login may happen over an untrusted connection"
    );
}

#[test]
fn missing_config_exits_66() {
    let env = TestEnv::new();

    let out = env.run(&["fetch", "--all"]);

    out.assert_code(66);
    assert!(
        out.stderr
            .contains(env.config_path().to_string_lossy().as_ref()),
        "stderr should name {}; it was:\n{}",
        env.config_path().display(),
        out.stderr
    );
}

/// A complete account that would be valid but points at a closed port, so a
/// config error cannot hide behind a connection attempt.
fn offline_account(extra: &str) -> String {
    format!(
        "[accounts.work]\n\
         host = \"127.0.0.1\"\n\
         port = 1\n\
         tls = \"implicit\"\n\
         user = \"alice\"\n\
         password = \"secret\"\n\
         deliver = {{ maildir = \"/nonexistent/popsync-test\" }}\n\
         {extra}"
    )
}

#[test]
fn invalid_config_exits_78_naming_file_line_and_key() {
    let env = TestEnv::new();
    let path = env.config_path().to_string_lossy().into_owned();

    // An unknown key (a typo of `host`) on line 3 of an otherwise full account.
    let toml = offline_account("").replacen("port = 1\n", "hots = \"x\"\nport = 1\n", 1);
    assert_eq!(toml.lines().nth(2), Some("hots = \"x\""));
    env.write_config(&toml);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(78);
    assert!(
        out.stderr.contains(&path),
        "stderr should name {path}:\n{}",
        out.stderr
    );
    assert_stderr_contains(&out.stderr, "line 3");
    assert_stderr_contains(&out.stderr, "hots");

    // A bad value on line 8.
    let toml = offline_account("retention = \"14x\"\n");
    assert_eq!(toml.lines().nth(7), Some("retention = \"14x\""));
    env.write_config(&toml);
    let out = env.run(&["fetch", "--all"]);
    out.assert_code(78);
    assert!(
        out.stderr.contains(&path),
        "stderr should name {path}:\n{}",
        out.stderr
    );
    assert_stderr_contains(&out.stderr, "retention");
    assert_stderr_contains(&out.stderr, "line 8");
}

#[test]
fn config_with_password_readable_by_others_is_refused() {
    let env = TestEnv::new();
    let path = env.write_config(&offline_account(""));

    for mode in [0o644, 0o640] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let out = env.run(&["fetch", "--all"]);
        assert_eq!(
            out.code, 78,
            "mode {mode:o}: a config with a password readable by others must be refused\n\
             stdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains(path.to_string_lossy().as_ref()),
            "mode {mode:o}: stderr should name the file:\n{}",
            out.stderr
        );
    }
}

#[test]
fn quiet_success_prints_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = env_with_account("work", &dovecot, &alice, "");

    // -q after the subcommand, with mail to fetch ...
    let out = env.run(&["fetch", "--all", "-q"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    assert_eq!(maildir_messages(&env.maildir("work")), sorted(sent));

    // ... and before it, with nothing new.
    let out = env.run(&["-q", "fetch", "--all"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
}

#[test]
fn json_reports_one_object_per_account() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let bob = dovecot.add_user("bob", "hunter2");
    let alice_sent = deliver_samples(&alice, 1, 3);
    let bob_sent = deliver_samples(&bob, 10, 2);
    let env = TestEnv::new();
    env.write_accounts(&[
        account_toml(
            "alice",
            &dovecot,
            &alice,
            "implicit",
            &env.maildir("alice"),
            "",
        ),
        account_toml("bob", &dovecot, &bob, "starttls", &env.maildir("bob"), ""),
    ]);

    let out = env.run(&["fetch", "--all", "--json"]);

    out.assert_code_with(0, &dovecot);
    let objects: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"))
        })
        .collect();
    assert_eq!(objects.len(), 2, "one object per account:\n{}", out.stdout);
    for (name, sent) in [("alice", &alice_sent), ("bob", &bob_sent)] {
        let o = objects
            .iter()
            .find(|o| o["account"] == name)
            .unwrap_or_else(|| panic!("no object for account {name}:\n{}", out.stdout));
        let count = sent.len() as u64;
        let bytes: u64 = sent.iter().map(|m| m.len() as u64).sum();
        assert_eq!(o["status"], "ok", "{o}");
        assert_eq!(o["new"].as_u64(), Some(count), "new: {o}");
        assert_eq!(o["fetched"].as_u64(), Some(count), "fetched: {o}");
        assert_eq!(
            o["bytes"].as_u64(),
            Some(bytes),
            "bytes (as written, LF): {o}"
        );
        assert_eq!(o["deleted"].as_u64(), Some(0), "deleted: {o}");
        assert_eq!(o["skipped"].as_u64(), Some(0), "skipped: {o}");
        assert!(o["error"].is_null(), "error: {o}");
        assert!(o["elapsed_ms"].is_u64(), "elapsed_ms: {o}");
    }
}

#[test]
fn retention_0d_deletes_after_delivery() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 5);
    let env = env_with_account("work", &dovecot, &alice, "retention = \"0d\"");

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);

    assert_eq!(maildir_messages(&env.maildir("work")), sorted(sent));
    assert_eq!(
        alice.server_messages(),
        Vec::<Vec<u8>>::new(),
        "retention 0d deletes every delivered message from the server"
    );
}

#[test]
fn one_failing_account_does_not_stop_the_others() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let bob = dovecot.add_user("bob", "hunter2");
    deliver_samples(&alice, 1, 2);
    let bob_sent = deliver_samples(&bob, 10, 3);
    let env = TestEnv::new();
    // The failing account comes first in config order.
    env.write_accounts(&[
        Account::new("broken", &dovecot, &alice)
            .password("wrong")
            .maildir(&env.maildir("broken"))
            .toml(),
        account_toml("good", &dovecot, &bob, "implicit", &env.maildir("good"), ""),
    ]);

    let out = env.run(&["fetch", "--all"]);

    out.assert_code_with(77, &dovecot);
    assert_stderr_contains(&out.stderr, "broken");
    assert_eq!(
        maildir_messages(&env.maildir("good")),
        sorted(bob_sent),
        "the good account is fetched in full"
    );
    assert!(maildir_messages(&env.maildir("broken")).is_empty());
}

#[test]
fn maildir_name_check_accepts_spec_names_only() {
    assert_eq!(
        maildir_name_size("1700000000.M123456P42Q1.host,S=99"),
        Some(99)
    );
    assert_eq!(
        maildir_name_size("1700000000.M5P42Q12.a.b,S=7:2,S"),
        Some(7)
    );
    assert_eq!(maildir_name_size("1700000000.M5P42Q1.host"), None);
    assert_eq!(maildir_name_size("1700000000.P42Q1.host,S=1"), None);
    assert_eq!(maildir_name_size("x.M5P42Q1.host,S=1"), None);
    assert_eq!(maildir_name_size("1.M5P42Q1.,S=1"), None);
}

#[test]
fn starttls_not_offered_exits_77_without_sending_the_password() {
    let dovecot = common::require_dovecot!("--no-stls");
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = TestEnv::new();
    let maildir = env.maildir("work");
    env.write_accounts(&[account_toml(
        "work", &dovecot, &alice, "starttls", &maildir, "",
    )]);

    let out = env.run(&["fetch", "--all"]);

    out.assert_code_with(77, &dovecot);
    assert_stderr_contains(&out.stderr, "work");
    assert_stderr_contains(&out.stderr, "STLS");
    assert!(
        !dovecot.log().contains("user=<alice>"),
        "no login may be attempted without TLS:\n{}",
        dovecot.log()
    );
    assert!(maildir_messages(&maildir).is_empty());
    assert_eq!(sorted(alice.server_messages()), sorted(sent));
}

/// Regression: accounts fetched in parallel (default `--jobs 4`) that open a
/// seen-store that does not exist yet must not fail with "database is locked"
/// (reported as a damaged store, exit 74). Twenty fresh stores, four accounts
/// with empty mailboxes (quick sessions make the opens collide most often).
#[test]
fn parallel_accounts_share_a_new_seen_store() {
    let dovecot = require_dovecot!();
    let users: Vec<User> = ["u1", "u2", "u3", "u4"]
        .iter()
        .map(|name| dovecot.add_user(name, "secret"))
        .collect();
    let env = TestEnv::new();
    let accounts: Vec<String> = users
        .iter()
        .map(|u| account_toml(&u.name, &dovecot, u, "implicit", &env.maildir(&u.name), ""))
        .collect();
    env.write_accounts(&accounts);

    for round in 0..20 {
        if env.state_dir().exists() {
            fs::remove_dir_all(env.state_dir()).expect("remove state_dir");
        }
        let out = env.run(&["fetch", "--all", "-q"]);
        assert_eq!(
            out.code, 0,
            "round {round}: a new seen-store opened by parallel accounts:\n{}",
            out.stderr
        );
    }
}
