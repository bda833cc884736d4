//! How `popsync fetch` copes with a server that misbehaves, through the real
//! binary against the scripted server of `tests/fault/`: what a user would
//! check afterwards (exit code, the error text naming server and command, the
//! Maildir, what is left on the server, which commands were sent).
//! The contract is /work/shared/DESIGN.md (exit codes, retention, promises).

mod common;
mod fault;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    Output, TestEnv, maildir_files, maildir_messages, maildir_tmp_files, run_rows, sorted,
};
use fault::{Builder, Fault, FaultServer, On};

/// A test message: headers, a body with a line that needs dot-stuffing and a
/// `From ` line, padded with text to about `size` octets; LF line ends.
fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender{i}@example.org\nTo: alice@example.org\nSubject: message {i}\n\
         Message-ID: <{i}@fault.test>\n\nHello {i}.\n.a line starting with a dot\n\
         From the start of a line\n..\n"
    )
    .into_bytes();
    let mut n = 0;
    while m.len() < size {
        n += 1;
        m.extend_from_slice(format!("filler line {n} of message {i}\n").as_bytes());
    }
    m
}

fn messages(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| message(i, 300 + 40 * i)).collect()
}

/// How `endless_uidl_listing_is_bounded` ends: refused by STAT's count.
const ENDLESS_UIDL_CODE: i32 = 76;

/// The timeout of the account: short, so the stall tests end soon.
const TIMEOUT_SECS: u64 = 2;

/// `fetch test ARGS` against `srv` with `extra` account lines
/// (`TestEnv::fault_config`).
fn fetch(env: &TestEnv, srv: &FaultServer, extra: &str, args: &[&str]) -> Output {
    fetch_at(env, srv, extra, args, None)
}

/// `fetch` with `POPSYNC_NOW` set to `now` if given.
fn fetch_at(
    env: &TestEnv,
    srv: &FaultServer,
    extra: &str,
    args: &[&str],
    now: Option<&str>,
) -> Output {
    let mut all = vec!["fetch", fault::ACCOUNT];
    all.extend_from_slice(args);
    env.run_fault(srv, TIMEOUT_SECS, extra, &all, now)
}

/// The account's Maildir.
fn maildir(env: &TestEnv) -> PathBuf {
    env.maildir(fault::ACCOUNT)
}

/// The messages in new/ and cur/, sorted (so equal lists mean "each
/// exactly once").
fn delivered(env: &TestEnv) -> Vec<Vec<u8>> {
    maildir_messages(&maildir(env))
}

/// Files left in tmp/ (a partial delivery would be one).
fn tmp_files(env: &TestEnv) -> Vec<String> {
    maildir_tmp_files(&maildir(env))
}

fn sent(commands: &[String], line: &str) -> bool {
    commands.iter().any(|c| c == line)
}

fn sent_verb(commands: &[String], verb: &str) -> Vec<String> {
    commands
        .iter()
        .filter(|c| c.split(' ').next() == Some(verb))
        .cloned()
        .collect()
}

#[test]
fn retr_error_midway_keeps_delivered_mail_and_sends_no_quit() {
    let mail = messages(5);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .fault(On::Retr(3), Fault::err("cannot read message 3"))
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "retention = \"0d\"", &[]);
    run.assert_code(76);
    run.assert_names(&srv.addr(), "RETR 3");
    assert_eq!(delivered(&env), sorted(mail[..2].to_vec()));
    let first = srv.session(0);
    assert!(sent(&first, "RETR 3"), "{first:?}");
    assert!(sent_verb(&first, "DELE").is_empty(), "no DELE: {first:?}");
    assert!(
        !sent(&first, "QUIT"),
        "no QUIT after a failed RETR: {first:?}"
    );
    assert_eq!(srv.mailbox(), mail, "the server keeps everything");

    srv.heal();
    let run = fetch(&env, &srv, "retention = \"0d\"", &[]);
    run.assert_code(0);
    assert_eq!(delivered(&env), sorted(mail.clone()), "each exactly once");
    assert!(tmp_files(&env).is_empty());
    assert!(srv.mailbox().is_empty(), "retention 0d deletes all");
    let second = srv.session(1);
    assert!(
        !sent(&second, "RETR 1") && !sent(&second, "RETR 2"),
        "delivered messages are not downloaded again: {second:?}"
    );
    for n in 1..=5 {
        assert!(sent(&second, &format!("DELE {n}")), "DELE {n}: {second:?}");
    }
    assert!(sent(&second, "QUIT"));
}

#[test]
fn duplicate_uidls_are_each_fetched_once() {
    let mail = vec![message(1, 300), message(2, 350), message(3, 400)];
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .uidls(&["same", "same", "other"])
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["fetched"], 3);
    assert_eq!(delivered(&env), sorted(mail.clone()));

    let run = fetch(&env, &srv, "", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["fetched"], 0);
    assert_eq!(run.json()["new"], 0);
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn uidl_reset_is_refused_without_flag() {
    let mail = messages(6);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();

    fetch(&env, &srv, "", &[]).assert_code(0);
    assert_eq!(delivered(&env).len(), 6);

    srv.set_uidls(&["r1", "r2", "r3", "r4", "r5", "r6"]);
    let run = fetch(&env, &srv, "", &[]);
    run.assert_code(76);
    assert!(run.stderr.contains("--accept-uidl-reset"), "{}", run.stderr);
    assert!(
        run.stderr.contains("renumbered its UIDLs"),
        "{}",
        run.stderr
    );
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert_eq!(delivered(&env).len(), 6, "nothing new delivered");

    let run = fetch(&env, &srv, "", &["--accept-uidl-reset"]);
    run.assert_code(0);
    let mut twice: Vec<Vec<u8>> = mail.iter().chain(&mail).cloned().collect();
    twice.sort();
    assert_eq!(delivered(&env), twice, "fetched again, as asked");
}

#[test]
fn retention_deletes_known_message_without_downloading_again() {
    let mail = messages(3);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();

    fetch(&env, &srv, "retention = \"forever\"", &[]).assert_code(0);
    assert_eq!(srv.mailbox(), mail, "forever keeps mail on the server");

    let run = fetch(&env, &srv, "retention = \"0d\"", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["deleted"], 3);
    let second = srv.session(1);
    assert!(sent_verb(&second, "RETR").is_empty(), "{second:?}");
    assert_eq!(sent_verb(&second, "DELE").len(), 3, "{second:?}");
    assert!(srv.mailbox().is_empty());
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn retention_days_uses_first_seen_time() {
    let mail = messages(2);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let keep = "retention = \"14d\"";

    fetch_at(&env, &srv, keep, &[], Some("2026-03-01T08:00:00Z")).assert_code(0);
    fetch_at(&env, &srv, keep, &[], Some("2026-03-14T08:00:00Z")).assert_code(0);
    assert!(
        sent_verb(&srv.session(1), "DELE").is_empty(),
        "13 days: kept"
    );
    assert_eq!(srv.mailbox(), mail);

    let run = fetch_at(&env, &srv, keep, &["--json"], Some("2026-03-15T08:00:00Z"));
    run.assert_code(0);
    assert_eq!(run.json()["deleted"], 2);
    assert!(sent_verb(&srv.session(2), "RETR").is_empty());
    assert!(
        srv.mailbox().is_empty(),
        "14 days after first seen: deleted"
    );
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn dry_run_prints_plan_and_changes_nothing() {
    let mail = vec![message(1, 300), message(2, 2000)];
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let sizes: Vec<u64> = mail
        .iter()
        .map(|m| (m.len() + m.iter().filter(|&&b| b == b'\n').count()) as u64)
        .collect();

    let run = fetch(&env, &srv, "retention = \"0d\"", &["--dry-run"]);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("fetch uid-1 {} new", sizes[0])),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("fetch uid-2 {} new", sizes[1])),
        "{}",
        lines[1]
    );
    assert!(delivered(&env).is_empty());
    let commands = srv.commands();
    assert!(sent_verb(&commands, "RETR").is_empty() && sent_verb(&commands, "DELE").is_empty());
    assert_eq!(srv.mailbox(), mail);

    let run = fetch(&env, &srv, "max_size = \"1KB\"", &["--dry-run"]);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("fetch uid-1 "), "{}", run.stdout);
    assert!(
        lines[1].starts_with(&format!("skip uid-2 {} ", sizes[1])),
        "{}",
        run.stdout
    );
    assert!(delivered(&env).is_empty());
    assert!(sent_verb(&srv.commands(), "RETR").is_empty());
}

#[test]
fn max_size_skips_big_messages_and_reports_them() {
    let mail = vec![message(1, 300), message(2, 5000)];
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let limit = "max_size = \"1KB\"";

    let run = fetch(&env, &srv, limit, &["--json", "-v"]);
    run.assert_code(0);
    let json = run.json();
    assert_eq!(
        (json["new"].clone(), json["fetched"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(json["skipped"], 1);
    let size = mail[1].len() + mail[1].iter().filter(|&&b| b == b'\n').count();
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("uid-2") && l.contains(&size.to_string())),
        "-v names the skipped UIDL and its size:\n{}",
        run.stderr
    );
    assert_eq!(delivered(&env), vec![mail[0].clone()]);
    assert_eq!(srv.mailbox(), mail, "skipped mail stays on the server");
    assert!(!sent(&srv.commands(), "RETR 2"));

    let run = fetch(&env, &srv, limit, &["--json"]);
    run.assert_code(0);
    let json = run.json();
    assert_eq!(
        (json["new"].clone(), json["skipped"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(json["fetched"], 0);
    assert_eq!(delivered(&env), vec![mail[0].clone()]);
}

/// Issue 14, item 8: a listing at 200 lines a second never times out a
/// read; it is refused after what STAT's count can take, within seconds,
/// and the account's lock is free for the next run.
#[test]
fn a_listing_that_never_ends_is_refused_by_the_stat_count() {
    let mail = messages(3);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .fault(On::Uidl, Fault::EndlessEvery(Duration::from_millis(5)))
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "", &[]);
    run.assert_code(76);
    run.assert_names(&srv.addr(), "UIDL");
    assert!(run.stderr.contains("STAT"), "{}", run.stderr);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    assert!(delivered(&env).is_empty());

    srv.heal();
    fetch(&env, &srv, "", &[]).assert_code(0);
    assert_eq!(delivered(&env), sorted(mail));
}

/// Item 9: DELEs go out in windows like RETRs, so a server that reads
/// slowly cannot leave popsync blocked writing every DELE at once: at least
/// every 1024th DELE waits for the reply before it.
#[test]
fn deles_go_out_in_windows() {
    const COUNT: usize = 1500;
    let mail: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| format!("Subject: {i}\n\n{i}\n").into_bytes())
        .collect();
    let srv = FaultServer::builder()
        .messages(mail)
        .capa(&["UIDL", "USER", "PIPELINING"])
        .start();
    let env = TestEnv::new();

    fetch(&env, &srv, "retention = \"0d\"", &[]).assert_code(0);
    assert!(srv.mailbox().is_empty());
    let dele: Vec<bool> = srv
        .transcripts()
        .concat()
        .into_iter()
        .filter(|l| l.text.starts_with("DELE "))
        .map(|l| l.ahead)
        .collect();
    assert_eq!(dele.len(), COUNT);
    let longest_run = dele
        .split(|ahead| !ahead)
        .map(<[bool]>::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_run < 1024,
        "{longest_run} DELEs in a row were sent ahead of a reply"
    );
}

#[test]
fn lying_list_size_does_not_corrupt_delivery() {
    let mail = vec![message(1, 1000), message(2, 300)];
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .list_size(1, 10)
        .start();
    let env = TestEnv::new();

    fetch(&env, &srv, "", &[]).assert_code(0);
    assert_eq!(delivered(&env), sorted(mail.clone()));
    for file in maildir_files(&maildir(&env)) {
        if file.subdir != "new" {
            continue;
        }
        let name = file.name;
        let len = file.bytes.len();
        if let Some((_, s)) = name.split_once(",S=") {
            let s = s.split(':').next().unwrap_or_default();
            assert_eq!(s, len.to_string(), "S= is the size on disk: {name}");
        }
    }
}

#[test]
fn quit_refused_keeps_mail_and_next_run_deletes_without_refetch() {
    let mail = messages(2);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .fault(On::Quit, Fault::err("[SYS/PERM] cannot update maildrop"))
        .times(1)
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "retention = \"0d\"", &["--json"]);
    run.assert_code(76);
    run.assert_names(&srv.addr(), "QUIT failed");
    assert!(run.stderr.contains("SYS/PERM"), "{}", run.stderr);
    assert_eq!(run.json()["deleted"], 0, "nothing was committed by QUIT");
    assert_eq!(delivered(&env), sorted(mail.clone()));
    assert_eq!(srv.mailbox(), mail);

    let run = fetch(&env, &srv, "retention = \"0d\"", &[]);
    run.assert_code(0);
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert!(srv.mailbox().is_empty());
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn dele_error_sends_no_quit_and_next_run_deletes_without_refetch() {
    let mail = messages(3);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .fault(On::Dele, Fault::err("cannot mark message deleted"))
        .times(1)
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "retention = \"0d\"", &[]);
    run.assert_code(76);
    run.assert_names(&srv.addr(), "DELE 1");
    assert!(!sent(&srv.session(0), "QUIT"), "{:?}", srv.session(0));
    assert_eq!(srv.mailbox(), mail, "no QUIT, nothing deleted");
    assert_eq!(delivered(&env), sorted(mail.clone()));

    fetch(&env, &srv, "retention = \"0d\"", &[]).assert_code(0);
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert!(srv.mailbox().is_empty());
    assert_eq!(delivered(&env), sorted(mail), "each exactly once");
}

#[test]
fn auth_plain_failure_is_77_and_success_fetches() {
    let mail = messages(1);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .capa(&["SASL PLAIN", "UIDL", "RESP-CODES"])
        .fault(On::Auth, Fault::err("[AUTH] authentication failed"))
        .times(1)
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "", &[]);
    run.assert_code(77);
    run.assert_names(&srv.addr(), "AUTH PLAIN");
    assert!(
        !sent_verb(&srv.session(0), "AUTH").is_empty(),
        "{:?}",
        srv.session(0)
    );

    fetch(&env, &srv, "", &[]).assert_code(0);
    assert_eq!(delivered(&env), mail);
    assert!(
        sent_verb(&srv.session(1), "USER").is_empty(),
        "{:?}",
        srv.session(1)
    );
}

#[test]
fn a_mechanism_refused_without_auth_code_falls_back_to_the_next_offered() {
    let mail = messages(1);
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .capa(&["SASL PLAIN", "USER", "UIDL", "RESP-CODES"])
        .fault(On::Auth, Fault::err("mechanism temporarily unusable here"))
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "", &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("PLAIN was refused"), "{}", run.stderr);
    assert_eq!(delivered(&env), mail);
    let first = srv.session(0);
    assert_eq!(sent_verb(&first, "AUTH").len(), 1, "{first:?}");
    assert_eq!(sent_verb(&first, "USER").len(), 1, "{first:?}");
}

#[test]
fn implicit_tls_with_pin_or_ca_file_fetches() {
    let mail = messages(2);
    let srv = FaultServer::builder().messages(mail.clone()).tls().start();
    let env = TestEnv::new();
    let tls = |how: String| {
        env.fault_config(&srv, TIMEOUT_SECS, &how).replace(
            "tls = \"none\"\nallow_plaintext = true\n",
            "tls = \"implicit\"\n",
        )
    };

    let pinned = tls(format!("tls_fingerprint = {:?}", srv.fingerprint()));
    let Output { code, stderr, .. } = env.run_config(&pinned, &["fetch", "test"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered(&env), sorted(mail.clone()));

    srv.add_message(&message(3, 500), "uid-3");
    let ca = tls(format!(
        "ca_file = {:?}",
        srv.ca_pem_path().display().to_string()
    ));
    let Output { code, stderr, .. } = env.run_config(&ca, &["fetch", "test"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered(&env).len(), 3);
}

#[test]
fn close_during_tls_handshake_names_the_server() {
    let srv = FaultServer::builder()
        .messages(messages(1))
        .tls()
        .fault(On::TlsHandshake, Fault::DropAfter(0))
        .start();
    let env = TestEnv::new();
    let config = env
        .fault_config(
            &srv,
            TIMEOUT_SECS,
            &format!("tls_fingerprint = {:?}", srv.fingerprint()),
        )
        .replace(
            "tls = \"none\"\nallow_plaintext = true\n",
            "tls = \"implicit\"\n",
        );

    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "test"]);
    assert_eq!(code, 76, "{stderr}");
    assert!(
        stderr.contains(&format!("TLS handshake with {} failed", srv.addr())),
        "{stderr}"
    );
    assert!(srv.commands().is_empty());
}

/// Every fault at every command, with the server advertising PIPELINING:
/// popsync never panics or hangs, names the server, delivers nothing partial
/// and deletes nothing it did not deliver; a run against the healed server
/// then leaves every message in the Maildir exactly once and the server empty.
#[test]
fn every_fault_at_every_command_loses_nothing_and_heals() {
    let mail = messages(4);
    let places = [
        On::Greeting,
        On::Capa,
        On::User,
        On::Pass,
        On::Uidl,
        On::List,
        On::Retr(1),
        On::Retr(3),
        On::Dele,
        On::Quit,
    ];
    let faults: Vec<(&str, Fault)> = vec![
        ("drop before the first byte", Fault::DropAfter(0)),
        ("drop after 1 byte", Fault::DropAfter(1)),
        ("drop after 7 bytes", Fault::DropAfter(7)),
        ("drop after 40 bytes", Fault::DropAfter(40)),
        ("-ERR", Fault::err("injected failure")),
        ("malformed reply", Fault::malformed("?? what")),
    ];
    let mut failures = Vec::new();
    for place in places {
        for (what, fault) in &faults {
            let srv = FaultServer::builder()
                .messages(mail.clone())
                .fault(place, fault.clone())
                .times(1)
                .start();
            let env = TestEnv::new();
            let case = format!("{what} at {place:?}");
            let run = fetch(&env, &srv, "retention = \"0d\"", &[]);
            let first = delivered(&env);
            let left = srv.mailbox();
            let mut problems = Vec::new();
            if !(run.code == 0 || (64..=78).contains(&run.code)) {
                problems.push(format!("exit {}", run.code));
            }
            if run.elapsed > Duration::from_secs(20) {
                problems.push(format!("took {:?}", run.elapsed));
            }
            if run.code != 0 && !run.stderr.contains(&srv.addr()) {
                problems.push("stderr does not name the server".to_owned());
            }
            if !tmp_files(&env).is_empty() {
                problems.push("partial file in tmp/".to_owned());
            }
            let mut seen = first.clone();
            seen.dedup();
            if seen.len() != first.len() {
                problems.push("a message delivered twice".to_owned());
            }
            for m in &mail {
                if !first.contains(m) && !left.contains(m) {
                    problems.push("a message deleted without being delivered".to_owned());
                }
            }
            srv.heal();
            let healed = fetch(&env, &srv, "retention = \"0d\"", &[]);
            if healed.code != 0 {
                problems.push(format!(
                    "healed run exit {}: {}",
                    healed.code, healed.stderr
                ));
            }
            if delivered(&env) != sorted(mail.clone()) {
                problems.push("after healing: not every message exactly once".to_owned());
            }
            if !srv.mailbox().is_empty() {
                problems.push("after healing: mail left on the server".to_owned());
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{case}: {} (first run exit {}: {})",
                    problems.join("; "),
                    run.code,
                    run.stderr.trim()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// One run against a fault: a table, one row per fault
// ---------------------------------------------------------------------------

/// One fault and what a single `fetch test` against it must come to. Every
/// row runs (two at a time, each with its own server and TestEnv); the test
/// fails naming each row that failed and why.
struct Case {
    /// What the row is about; a failure names it.
    name: &'static str,
    mail: Vec<Vec<u8>>,
    fault: Option<(On, Fault)>,
    /// More server setup (CAPA, UIDLs, sizes, credentials, more faults).
    setup: fn(Builder) -> Builder,
    /// Account lines (`TestEnv::fault_config`).
    extra: &'static str,
    /// After `fetch test`.
    args: &'static [&'static str],
    code: i32,
    /// The command stderr names together with the server's address.
    names: Option<&'static str>,
    /// The server's address is named in stderr (implied by `names`).
    names_server: bool,
    /// Texts stderr must contain (the cause, as popsync names it).
    says: &'static [&'static str],
    /// The run ends within this (a bounded fault is not a hang).
    within: Option<Duration>,
    /// Exactly the first N messages are delivered, each once.
    delivered: Option<usize>,
    /// Nothing is left in the Maildir's tmp/ (nothing partial).
    nothing_partial: bool,
    /// The server still holds every message.
    server_keeps_all: bool,
    /// popsync sent no QUIT (which would commit DELEs).
    no_quit: bool,
    /// Row-specific assertions.
    also: fn(&Output, &FaultServer),
}

/// A row with `messages(n)` on the server and `fault`, expecting `code` and
/// nothing else until the fields after it say more.
fn case(name: &'static str, n: usize, fault: Option<(On, Fault)>, code: i32) -> Case {
    Case {
        name,
        mail: messages(n),
        fault,
        setup: |b| b,
        extra: "",
        args: &[],
        code,
        names: None,
        names_server: false,
        says: &[],
        within: None,
        delivered: None,
        nothing_partial: false,
        server_keeps_all: false,
        no_quit: false,
        also: |_, _| {},
    }
}

impl Case {
    fn run(&self) {
        let mut builder = (self.setup)(FaultServer::builder().messages(self.mail.clone()));
        if let Some((on, fault)) = &self.fault {
            builder = builder.fault(*on, fault.clone());
        }
        let srv = builder.start();
        let env = TestEnv::new();
        let run = fetch(&env, &srv, self.extra, self.args);

        run.assert_code(self.code);
        if let Some(command) = self.names {
            run.assert_names(&srv.addr(), command);
        }
        if self.names_server {
            assert!(run.stderr.contains(&srv.addr()), "{}", run.stderr);
        }
        for text in self.says {
            assert!(
                run.stderr.contains(text),
                "stderr should say {text:?}:\n{}",
                run.stderr
            );
        }
        if let Some(limit) = self.within {
            assert!(run.elapsed < limit, "took {:?}", run.elapsed);
        }
        if let Some(n) = self.delivered {
            assert_eq!(delivered(&env), sorted(self.mail[..n].to_vec()));
        }
        if self.nothing_partial {
            assert!(tmp_files(&env).is_empty(), "{:?}", tmp_files(&env));
        }
        if self.server_keeps_all {
            assert_eq!(srv.mailbox(), self.mail, "the server keeps everything");
        }
        if self.no_quit {
            assert!(!sent(&srv.commands(), "QUIT"), "{:?}", srv.commands());
        }
        (self.also)(&run, &srv);
    }
}

#[test]
fn single_run_faults() {
    let err = |on: On, text: &str| Some((on, Fault::err(text)));
    let cases = vec![
        Case {
            names: Some("UIDL"),
            within: Some(Duration::from_secs(15)),
            delivered: Some(0),
            ..case(
                "stalled_server_times_out_with_75",
                2,
                Some((On::Uidl, Fault::Stall(Duration::from_secs(30)))),
                75,
            )
        },
        Case {
            args: &["--json"],
            names_server: true,
            says: &["IN-USE"],
            also: |run, _| assert_eq!(run.json()["status"], "temporary"),
            ..case(
                "in_use_is_temporary_75",
                1,
                err(On::Pass, "[IN-USE] mailbox locked by another session"),
                75,
            )
        },
        Case {
            names_server: true,
            says: &["LOGIN-DELAY"],
            ..case(
                "login_delay_is_temporary_75",
                1,
                err(On::Pass, "[LOGIN-DELAY] wait 15 minutes between logins"),
                75,
            )
        },
        Case {
            names_server: true,
            says: &["SYS/TEMP"],
            ..case(
                "sys_temp_is_temporary_75",
                1,
                err(On::Pass, "[SYS/TEMP] storage backend unavailable"),
                75,
            )
        },
        Case {
            names: Some("RETR 2"),
            delivered: Some(1),
            ..case(
                "sys_temp_on_retr_is_temporary_75",
                2,
                err(On::Retr(2), "[SYS/TEMP] try again later"),
                75,
            )
        },
        // DESIGN.md: [SYS/TEMP] is 75 whatever command it answers; it is not
        // a server without UIDL.
        Case {
            names: Some("UIDL"),
            ..case(
                "sys_temp_on_uidl_is_temporary_75",
                2,
                err(On::Uidl, "[SYS/TEMP] index being rebuilt"),
                75,
            )
        },
        Case {
            names_server: true,
            also: |run, _| {
                assert!(
                    !run.stderr.contains("secret"),
                    "password leaked: {}",
                    run.stderr
                )
            },
            ..case(
                "auth_code_is_77",
                1,
                err(On::Pass, "[AUTH] invalid credentials"),
                77,
            )
        },
        Case {
            setup: |b| b.credentials("alice", "another password"),
            names_server: true,
            says: &["authentication failed"],
            also: |_, srv| assert!(sent(&srv.commands(), "PASS secret"), "{:?}", srv.commands()),
            ..case("wrong_password_is_77", 1, None, 77)
        },
        // SYS/PERM must fail, and not as temporary.
        Case {
            args: &["--json"],
            says: &["SYS/PERM"],
            also: |run, _| assert_eq!(run.json()["status"], "failed"),
            ..case(
                "sys_perm_is_not_temporary",
                1,
                err(On::Pass, "[SYS/PERM] account disabled"),
                76,
            )
        },
        // The server hung up in the middle of its reply: it broke the
        // protocol (76); it was reachable, so not 69.
        Case {
            mail: vec![message(1, 400), message(2, 1000), message(3, 400)],
            names: Some("RETR 2"),
            delivered: Some(1),
            nothing_partial: true,
            no_quit: true,
            server_keeps_all: true,
            ..case(
                "connection_dropped_during_retr_delivers_nothing_partial",
                0,
                Some((On::Retr(2), Fault::DropAfter(100))),
                76,
            )
        },
        Case {
            names: Some("RETR 1"),
            delivered: Some(0),
            no_quit: true,
            ..case(
                "malformed_status_line_is_protocol_error_76",
                2,
                Some((On::Retr(1), Fault::malformed("YES here is your mail"))),
                76,
            )
        },
        Case {
            names: Some("greeting"),
            also: |run, _| {
                assert!(
                    !run.stderr.chars().any(|c| c.is_control() && c != '\n'),
                    "server bytes reach the terminal unsanitised: {:?}",
                    run.stderr
                )
            },
            ..case(
                "binary_garbage_greeting_is_76",
                1,
                Some((On::Greeting, Fault::garbage())),
                76,
            )
        },
        Case {
            names: Some("RETR 2"),
            delivered: Some(1),
            nothing_partial: true,
            server_keeps_all: true,
            ..case(
                "missing_terminator_then_close_is_76_and_nothing_partial",
                2,
                Some((On::Retr(2), Fault::NoTerminator { close: true })),
                76,
            )
        },
        Case {
            names: Some("RETR 1"),
            within: Some(Duration::from_secs(15)),
            delivered: Some(0),
            nothing_partial: true,
            ..case(
                "missing_terminator_then_stall_times_out_75",
                1,
                Some((On::Retr(1), Fault::NoTerminator { close: false })),
                75,
            )
        },
        Case {
            names: Some("UIDL"),
            within: Some(Duration::from_secs(15)),
            also: |run, _| assert_quotes_little(run),
            ..case(
                "one_mb_line_in_uidl_is_refused_cleanly",
                2,
                Some((On::Uidl, Fault::LongLine(1 << 20))),
                76,
            )
        },
        Case {
            names: Some("PASS"),
            also: |run, _| assert_quotes_little(run),
            ..case(
                "one_mb_status_line_is_refused_cleanly",
                1,
                Some((On::Pass, Fault::LongLine(1 << 20))),
                76,
            )
        },
        Case {
            names: Some("UIDL"),
            within: Some(Duration::from_secs(30)),
            ..case(
                "endless_uidl_listing_is_bounded",
                1,
                Some((On::Uidl, Fault::Endless)),
                ENDLESS_UIDL_CODE,
            )
        },
        // Issue 14, item 8: a reply that trickles in is given up when the
        // time its size allows has passed, even though no single read times
        // out: 75, so the next cron run tries again.
        Case {
            names: Some("LIST"),
            within: Some(Duration::from_secs(8)),
            delivered: Some(0),
            ..case(
                "a_listing_that_trickles_past_its_deadline_is_temporary",
                2,
                Some((On::List, Fault::Trickle(Duration::from_millis(300)))),
                75,
            )
        },
        // Item 12: a server that lists 100 octets and streams megabytes is
        // stopped: 76, nothing delivered, the message stays on the server.
        Case {
            setup: |b| b.list_size(1, 100),
            extra: "retention = \"0d\"",
            names: Some("RETR 1"),
            says: &["LIST announced"],
            delivered: Some(0),
            nothing_partial: true,
            also: |_, srv| assert_eq!(srv.mailbox().len(), 1),
            ..case(
                "a_message_far_larger_than_listed_is_stopped_and_nothing_delivered",
                1,
                Some((On::Retr(1), Fault::LongLine(3 << 20))),
                76,
            )
        },
        Case {
            setup: |b| b.uidls(&["good-1", "bad\u{7f}uid"]),
            extra: "retention = \"0d\"",
            names: Some("UIDL"),
            delivered: Some(0),
            server_keeps_all: true,
            also: |_, srv| assert!(!sent(&srv.session(0), "RETR 1"), "{:?}", srv.session(0)),
            ..case(
                "uidls_with_illegal_characters_are_refused_and_nothing_is_touched",
                2,
                None,
                76,
            )
        },
        Case {
            setup: |b| b.capa(&["SASL PLAIN", "USER", "UIDL", "RESP-CODES"]),
            also: |_, srv| {
                let first = srv.session(0);
                assert_eq!(sent_verb(&first, "AUTH").len(), 1, "{first:?}");
                assert!(sent_verb(&first, "USER").is_empty(), "{first:?}");
            },
            ..case(
                "wrong_credentials_are_never_retried_with_another_mechanism",
                1,
                err(On::Auth, "[AUTH] authentication failed"),
                77,
            )
        },
        Case {
            mail: vec![message(1, 200), message(2, 200)],
            setup: |b| b.fault(On::Greeting, Fault::Trickle(Duration::from_millis(2))),
            delivered: Some(2),
            ..case(
                "bytes_one_at_a_time_still_work",
                0,
                Some((On::Retr(1), Fault::Trickle(Duration::from_millis(1)))),
                0,
            )
        },
        Case {
            delivered: Some(2),
            ..case(
                "stall_shorter_than_timeout_is_fine",
                2,
                Some((On::Retr(1), Fault::Stall(Duration::from_millis(1200)))),
                0,
            )
        },
    ];
    run_rows(cases, 2, |c| c.name, Case::run);
}

/// An error about a 1 MB line quotes only a little of it.
#[track_caller]
fn assert_quotes_little(run: &Output) {
    assert!(
        run.stderr.len() < 4096,
        "error quotes too much: {} bytes",
        run.stderr.len()
    );
}
