//! Which commands popsync may send without waiting for a reply, through the
//! real binary against the scripted server of `tests/fault/`. RFC 2449 as
//! DESIGN.md ("Protocol coverage") reads it: nothing before the greeting;
//! nothing behind a state-changing command (USER, PASS, APOP, AUTH and its
//! answers, UTF8, QUIT) before its reply; pipelining only in TRANSACTION
//! state and only when the server lists PIPELINING: STAT, UIDL and LIST go
//! out with the CAPA after login when the CAPA before login listed it (RFC
//! 2449 does not let it change at login), and the CAPA after login decides
//! for the RETR window and the DELEs; otherwise one command at a time. The one reply not waited for is QUIT's when nothing
//! was marked deleted: nothing follows it. What a user would check: the exit
//! code, the Maildir, what is left on the server, and the commands the
//! server saw (which of them arrived before the reply they should have
//! waited for: `ahead`, `pipelining_breaches`). Exit codes and retention
//! (QUIT only after every delivery is committed) are in DESIGN.md too.

mod common;
mod fault;

use std::path::Path;
use std::time::Duration;

use common::{Output, TestEnv, maildir_messages, sorted};
use fault::{Fault, FaultServer, On};

/// How long a reply is held back so that whatever a client pipelines behind
/// the command has arrived before it is written.
const HOLD: Duration = Duration::from_millis(250);

fn mail() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\nFrom: a@example.org\n\nfirst\n".to_vec(),
        b"Subject: two\nFrom: b@example.org\n\nsecond\n".to_vec(),
    ]
}

fn four() -> Vec<Vec<u8>> {
    (1..=4)
        .map(|i| format!("Subject: m{i}\nFrom: x@example.org\n\nbody {i}\n").into_bytes())
        .collect()
}

/// An account on the scripted server (plain TCP, timeout 2 s), with `extra`
/// config lines.
fn config(dir: &Path, srv: &FaultServer, extra: &str) -> String {
    fault::plain_account_config(dir, "acct", srv, &dir.join("mail"), 2, extra)
}

/// `popsync fetch acct`: (exit code, stderr), with the Maildir's messages.
fn fetch(env: &TestEnv, srv: &FaultServer, extra: &str) -> (i32, String, Vec<Vec<u8>>) {
    let Output { code, stderr, .. } =
        env.run_config(&config(env.path(), srv, extra), &["fetch", "acct"]);
    (code, stderr, maildir_messages(&env.path().join("mail")))
}

fn position(commands: &[String], prefix: &str) -> Option<usize> {
    commands.iter().position(|c| c.starts_with(prefix))
}

fn assert_no_breach(srv: &FaultServer, what: &str) {
    let breaches = srv.pipelining_breaches();
    assert!(breaches.is_empty(), "{what}: {breaches:#?}");
}

#[test]
fn nothing_is_sent_before_a_late_greeting() {
    // The greeting comes after 250 ms; what arrives before it is thrown
    // away, so a client that talked first would wait for a reply in vain.
    let srv = FaultServer::builder()
        .messages(mail())
        .greeting_delay(HOLD)
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "");
    assert_eq!(code, 0, "{stderr}\n{:?}", srv.transcript(0));
    assert_eq!(delivered, sorted(mail()));
    assert!(
        srv.discarded(0).is_empty(),
        "sent before the greeting: {:?}",
        srv.discarded(0)
    );
    assert_no_breach(&srv, "late greeting");
}

#[test]
fn a_server_refusing_at_the_greeting_is_still_reported_as_such() {
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Greeting, Fault::err("[SYS/TEMP] too many connections"))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "");
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("too many connections"), "{stderr}");
    assert!(delivered.is_empty());
    assert!(srv.session(0).is_empty(), "{:?}", srv.session(0));
}

#[test]
fn with_pipelining_after_login_stat_uidl_and_list_go_out_together() {
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Uidl, Fault::Stall(HOLD))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    let transcript = srv.transcript(0);
    let uidl = transcript
        .iter()
        .position(|l| l.text == "UIDL")
        .unwrap_or_else(|| panic!("UIDL sent: {transcript:?}"));
    assert_eq!(
        transcript[uidl + 1].text,
        "LIST",
        "LIST follows UIDL: {transcript:?}"
    );
    assert!(
        transcript[uidl + 1].ahead,
        "LIST is sent without waiting for the listing of UIDL: {transcript:?}"
    );
    // STAT goes first (its count bounds the listings), right behind the
    // CAPA after login.
    assert_eq!(transcript[uidl - 1].text, "STAT", "{transcript:?}");
    assert!(
        transcript[uidl - 1].ahead,
        "STAT goes out with the CAPA after login (PIPELINING was listed before login): {transcript:?}"
    );
    assert!(transcript[uidl].ahead, "{transcript:?}");
    assert_eq!(
        transcript[uidl - 2].text,
        "CAPA",
        "the CAPA after login comes first: {transcript:?}"
    );
    assert!(transcript[uidl - 2].logged_in, "{transcript:?}");
    assert_no_breach(&srv, "STAT+UIDL+LIST");
}

#[test]
fn with_pipelining_the_retrs_go_out_in_a_window() {
    let srv = FaultServer::builder()
        .messages(four())
        .fault(On::Retr(1), Fault::Stall(HOLD))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"forever\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(four()));
    let ahead = srv.ahead(0);
    for n in 2..=4 {
        assert!(
            ahead.contains(&format!("RETR {n}")),
            "RETR {n} is in flight behind RETR 1: {ahead:?} of {:?}",
            srv.session(0)
        );
    }
    assert_no_breach(&srv, "RETR window");
}

#[test]
fn with_pipelining_the_deles_go_out_together() {
    let srv = FaultServer::builder()
        .messages(four())
        .fault(On::Dele, Fault::Stall(HOLD))
        .times(1)
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"0d\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(four()));
    assert!(srv.mailbox().is_empty());
    let ahead = srv.ahead(0);
    assert!(
        ahead.iter().any(|c| c.starts_with("DELE ")),
        "a DELE is in flight behind the first: {ahead:?} of {:?}",
        srv.session(0)
    );
    assert_no_breach(&srv, "DELEs");
}

#[test]
fn pipelining_listed_only_before_login_covers_only_the_listing() {
    // RFC 2449 lets PIPELINING not change at login, so the listing goes
    // out with the CAPA after login; that CAPA, without it here, decides
    // for everything after: the RETRs and DELEs go one at a time.
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING"])
        .capa_after_login(&["USER", "UIDL", "TOP"])
        .messages(four())
        .fault(On::Capa, Fault::Stall(HOLD))
        .times(2)
        .fault(On::Retr(1), Fault::Stall(HOLD))
        .fault(On::Dele, Fault::Stall(HOLD))
        .times(1)
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"0d\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(four()));
    assert!(srv.mailbox().is_empty());
    assert_eq!(
        srv.ahead(0),
        ["STAT", "UIDL", "LIST"],
        "only the listing is sent ahead, with the CAPA after login: {:?}",
        srv.session(0)
    );
    assert_no_breach(&srv, "PIPELINING before login only");
}

#[test]
fn pipelining_listed_only_after_login_is_used() {
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP"])
        .capa_after_login(&["USER", "UIDL", "TOP", "PIPELINING"])
        .messages(mail())
        .fault(On::Uidl, Fault::Stall(HOLD))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    assert!(
        srv.ahead(0).iter().any(|c| c == "LIST"),
        "UIDL and LIST together: {:?} of {:?}",
        srv.ahead(0),
        srv.session(0)
    );
    assert_no_breach(&srv, "PIPELINING after login only");
}

#[test]
fn without_pipelining_no_command_is_ever_ahead_of_a_reply() {
    // Every reply of the session is held back in turn.
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "RESP-CODES"])
        .messages(mail())
        .fault(On::Greeting, Fault::Stall(HOLD))
        .fault(On::Capa, Fault::Stall(HOLD))
        .fault(On::User, Fault::Stall(HOLD))
        .fault(On::Pass, Fault::Stall(HOLD))
        .fault(On::Uidl, Fault::Stall(HOLD))
        .fault(On::List, Fault::Stall(HOLD))
        .fault(On::Retr(1), Fault::Stall(HOLD))
        .fault(On::Dele, Fault::Stall(HOLD))
        .times(1)
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"0d\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    assert!(srv.mailbox().is_empty());
    assert!(
        srv.ahead(0).is_empty(),
        "{:?} of {:?}",
        srv.ahead(0),
        srv.session(0)
    );
    assert_no_breach(&srv, "no PIPELINING");
}

/// popsync's `auth` name, the password (the OAuth token), the fault point
/// of the reply that completes the login, and the command that starts it.
const MECHANISMS: &[(&str, &str, On, &str)] = &[
    ("user", "secret", On::Pass, "USER alice"),
    ("apop", "secret", On::Apop, "APOP alice "),
    ("plain", "secret", On::Auth, "AUTH PLAIN "),
    // Too long for the AUTH line: the initial response after "+ ".
    (
        "plain",
        "a-password-long-enough-that-the-initial-response-of-auth-plain-does-not-fit-\
         into-the-255-octets-rfc-5034-allows-for-the-command-line-so-it-goes-after-an-\
         empty-challenge-instead-of-on-the-auth-line-itself-0123456789-0123456789",
        On::Auth,
        "AUTH PLAIN",
    ),
    ("login", "secret", On::Auth, "AUTH LOGIN"),
    ("scram-sha-1", "secret", On::Auth, "AUTH SCRAM-SHA-1"),
    ("scram-sha-256", "secret", On::Auth, "AUTH SCRAM-SHA-256"),
    ("xoauth2", "secret", On::Auth, "AUTH XOAUTH2"),
    ("oauthbearer", "secret", On::Auth, "AUTH OAUTHBEARER"),
];

#[test]
fn no_mechanism_sends_anything_before_the_greeting_or_ahead_of_a_login_reply() {
    // PIPELINING is listed (the temptation); the greeting, the reply to
    // USER and the reply that completes the login are held back, so that
    // anything sent ahead of them has arrived when they are written.
    let mut failures = Vec::new();
    for &(auth, password, login_reply, command) in MECHANISMS {
        let srv = FaultServer::builder()
            .capa(&[
                "USER",
                "UIDL",
                "TOP",
                "PIPELINING",
                "RESP-CODES",
                "SASL PLAIN LOGIN SCRAM-SHA-1 SCRAM-SHA-256 XOAUTH2 OAUTHBEARER",
            ])
            .credentials("alice", password)
            .messages(mail())
            .apop()
            .fault(On::Greeting, Fault::Stall(HOLD))
            .fault(On::User, Fault::Stall(HOLD))
            .fault(login_reply, Fault::Stall(HOLD))
            .start();
        let env = TestEnv::new();
        let cfg = fault::account_config(
            env.path(),
            "acct",
            &srv,
            &env.path().join("mail"),
            2,
            password,
            &format!("auth = [\"{auth}\"]"),
        );
        let Output { code, stderr, .. } = env.run_config(&cfg, &["fetch", "acct"]);
        let delivered = maildir_messages(&env.path().join("mail"));
        let session = srv.session(0);
        let label = format!("{auth} ({command:?})");
        if code != 0 || delivered != sorted(mail()) {
            failures.push(format!(
                "{label}: exit {code}, {} delivered: {stderr}",
                delivered.len()
            ));
        }
        if !session.iter().any(|c| {
            if command.ends_with(' ') {
                c.starts_with(command)
            } else {
                c == command || c.starts_with(&format!("{command} "))
            }
        }) || (command == "AUTH PLAIN" && !session.iter().any(|c| c == command))
        {
            failures.push(format!("{label}: not used: {session:?}"));
        }
        let breaches = srv.pipelining_breaches();
        if !breaches.is_empty() {
            failures.push(format!("{label}: {breaches:#?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_refused_plain_falls_back_to_user_pass_on_the_same_connection() {
    // "-ERR" without [AUTH]: the mechanism, not the password, was refused.
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING", "SASL PLAIN"])
        .messages(mail())
        .fault(On::Auth, Fault::err("mechanism temporarily unavailable"))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "auth = [\"plain\", \"user\"]");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    let session = srv.session(0);
    let auth = position(&session, "AUTH PLAIN").expect("AUTH PLAIN sent");
    assert_eq!(
        &session[auth + 1..auth + 4],
        ["USER alice", "PASS secret", "CAPA"],
        "nothing went out behind AUTH PLAIN; USER/PASS on the same connection"
    );
    assert_eq!(srv.connections(), 1);
    assert_no_breach(&srv, "fallback");
}

#[test]
fn a_wrong_password_is_77_and_nothing_follows_the_login() {
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING", "SASL PLAIN"])
        .credentials("alice", "another password")
        .messages(mail())
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "auth = [\"plain\", \"user\"]");
    assert_eq!(code, 77, "{stderr}");
    assert!(stderr.contains(&srv.addr()), "{stderr}");
    assert!(delivered.is_empty());
    assert_eq!(srv.mailbox(), mail());
    let session = srv.session(0);
    let auth = position(&session, "AUTH PLAIN").expect("AUTH PLAIN sent");
    assert!(
        !session[auth + 1..]
            .iter()
            .any(|c| ["CAPA", "UIDL", "LIST", "RETR", "USER"]
                .iter()
                .any(|v| c.starts_with(v))),
        "no listing, no second mechanism after a wrong password: {session:?}"
    );
    assert_no_breach(&srv, "wrong password");
}

#[test]
fn a_scram_server_that_cannot_prove_itself_never_sees_a_mailbox_command() {
    let srv = FaultServer::builder()
        .capa(&["UIDL", "TOP", "PIPELINING", "SASL SCRAM-SHA-256"])
        .credentials("alice", "secret")
        .messages(mail())
        .scram_bad_signature()
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "auth = [\"scram-sha-256\"]");
    assert_eq!(code, 77, "{stderr}");
    assert!(delivered.is_empty());
    let session = srv.session(0);
    let auth = position(&session, "AUTH SCRAM-SHA-256").expect("AUTH sent");
    assert!(
        !session[auth..]
            .iter()
            .any(|c| ["CAPA", "UIDL", "LIST", "RETR"]
                .iter()
                .any(|v| c.starts_with(v))),
        "{session:?}"
    );
    assert_no_breach(&srv, "impostor");
}

#[test]
fn with_nothing_to_delete_the_reply_to_quit_is_not_waited_for() {
    // The reply to QUIT would come after the 2 s timeout: a run that waited
    // for it would fail. Not waiting is allowed: nothing follows QUIT.
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Quit, Fault::Stall(Duration::from_secs(4)))
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"forever\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    assert_eq!(srv.commands().last().map(String::as_str), Some("QUIT"));
    assert_eq!(srv.mailbox(), mail());
    assert_no_breach(&srv, "QUIT");
}

#[test]
fn with_deletions_the_reply_to_quit_is_waited_for() {
    // Only the +OK to QUIT says the DELEs were committed: without it within
    // the timeout, nothing counts as deleted, and the next run deletes the
    // delivered messages without fetching them again.
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Quit, Fault::Stall(Duration::from_secs(4)))
        .times(1)
        .start();
    let env = TestEnv::new();
    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"0d\"");
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("no reply to QUIT within"), "{stderr}");
    assert_eq!(delivered, sorted(mail()));

    let (code, stderr, delivered) = fetch(&env, &srv, "retention = \"0d\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()), "each message once");
    assert!(srv.mailbox().is_empty());
    assert!(
        !srv.session(1).iter().any(|c| c.starts_with("RETR")),
        "{:?}",
        srv.session(1)
    );
}
