//! The round trips popsync saves, through the real binary against the
//! scripted server of `tests/fault/`: CAPA sent with the greeting, the
//! post-login CAPA, UIDL and LIST sent with the last login message, QUIT not
//! waited for when nothing was deleted; and that each saving stays safe when
//! the server refuses or stalls. What a user would check: the exit code, the
//! Maildir, what is left on the server, and the commands the server saw
//! (and which of them arrived before the reply they could have waited for).
//! The contract is /work/shared/DESIGN.md (retention: QUIT only after every
//! delivery is committed; exit codes).

mod common;
mod fault;

use std::path::Path;
use std::time::Duration;

use common::{maildir_messages, sorted};
use fault::{Fault, FaultServer, On};

const HOLD: Duration = Duration::from_millis(300);

fn mail() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\nFrom: a@example.org\n\nfirst\n".to_vec(),
        b"Subject: two\nFrom: b@example.org\n\nsecond\n".to_vec(),
    ]
}

/// An account on the scripted server (plain TCP, timeout 2 s), with `extra`
/// config lines.
fn config(dir: &Path, srv: &FaultServer, extra: &str) -> String {
    fault::plain_account_config(dir, "acct", srv, &dir.join("mail"), 2, extra)
}

/// `popsync fetch acct`: (exit code, stderr), with the Maildir's messages.
fn fetch(dir: &Path, srv: &FaultServer, extra: &str) -> (i32, String, Vec<Vec<u8>>) {
    let (code, _, stderr) = fault::popsync(dir, &config(dir, srv, extra), &["fetch", "acct"]);
    (code, stderr, maildir_messages(&dir.join("mail")))
}

/// The commands of the listing, as the server records them.
fn listing() -> Vec<String> {
    ["CAPA", "UIDL", "LIST"].map(String::from).to_vec()
}

fn position(commands: &[String], prefix: &str) -> Option<usize> {
    commands.iter().position(|c| c.starts_with(prefix))
}

#[test]
fn capa_goes_out_before_the_greeting_arrives() {
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Greeting, Fault::Stall(HOLD))
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    assert_eq!(
        srv.ahead(0).first().map(String::as_str),
        Some("CAPA"),
        "CAPA is sent without waiting for the greeting: {:?}",
        srv.session(0)
    );
}

#[test]
fn a_server_refusing_at_the_greeting_is_still_reported_as_such() {
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Greeting, Fault::err("[SYS/TEMP] too many connections"))
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "");
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("too many connections"), "{stderr}");
    assert!(delivered.is_empty());
}

#[test]
fn the_listing_follows_the_message_that_completes_the_login() {
    // AUTH PLAIN with its initial response; SCRAM's last (empty) answer,
    // once the server's signature checked out.
    for (mechanism, offered) in [
        ("plain", "SASL PLAIN"),
        ("scram-sha-256", "SASL SCRAM-SHA-256"),
    ] {
        let srv = FaultServer::builder()
            .capa(&["UIDL", "TOP", "PIPELINING", offered])
            .credentials("alice", "secret")
            .messages(mail())
            .fault(On::Auth, Fault::Stall(HOLD))
            .start();
        let dir = tempfile::tempdir().expect("temp dir");
        let (code, stderr, delivered) =
            fetch(dir.path(), &srv, &format!("auth = [\"{mechanism}\"]"));
        assert_eq!(code, 0, "{mechanism}: {stderr}");
        assert_eq!(delivered, sorted(mail()), "{mechanism}");
        assert!(
            srv.ahead(0).starts_with(&listing()),
            "{mechanism}: CAPA, UIDL and LIST go out with the last login message: {:?}",
            srv.session(0)
        );
    }
}

#[test]
fn without_pipelining_nothing_is_sent_before_the_login_reply() {
    let srv = FaultServer::builder()
        .capa(&["UIDL", "TOP", "SASL PLAIN"])
        .messages(mail())
        .fault(On::Auth, Fault::Stall(HOLD))
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "auth = [\"plain\"]");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    let session = srv.session(0);
    assert!(srv.ahead(0).is_empty(), "{session:?} {:?}", srv.ahead(0));
    let auth = position(&session, "AUTH PLAIN").expect("AUTH PLAIN sent");
    assert_eq!(session[auth + 1], "CAPA", "{session:?}");
}

#[test]
fn a_refused_plain_with_the_listing_in_flight_falls_back_to_the_next_mechanism() {
    // "-ERR" without [AUTH]: the mechanism, not the password, was refused.
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING", "SASL PLAIN"])
        .messages(mail())
        .fault(On::Auth, Fault::err("mechanism temporarily unavailable"))
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "auth = [\"plain\", \"user\"]");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    let session = srv.session(0);
    let auth = position(&session, "AUTH PLAIN").expect("AUTH PLAIN sent");
    assert_eq!(
        &session[auth + 1..auth + 6],
        ["CAPA", "UIDL", "LIST", "USER alice", "PASS secret"],
        "the replies to the listing are read, then USER/PASS on the same connection"
    );
    assert_eq!(srv.connections(), 1);
}

#[test]
fn a_wrong_password_with_the_listing_in_flight_is_77_and_touches_nothing() {
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING", "SASL PLAIN"])
        .credentials("alice", "another password")
        .messages(mail())
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "auth = [\"plain\", \"user\"]");
    assert_eq!(code, 77, "{stderr}");
    assert!(stderr.contains(&srv.addr()), "{stderr}");
    assert!(delivered.is_empty());
    assert_eq!(srv.mailbox(), mail());
    let session = srv.session(0);
    assert!(
        !session
            .iter()
            .any(|c| c.starts_with("RETR") || c.starts_with("USER")),
        "no second mechanism after a wrong password, no RETR: {session:?}"
    );
}

#[test]
fn a_scram_server_that_cannot_prove_itself_never_sees_a_mailbox_command() {
    let srv = FaultServer::builder()
        .capa(&["UIDL", "TOP", "PIPELINING", "SASL SCRAM-SHA-256"])
        .credentials("alice", "secret")
        .messages(mail())
        .scram_bad_signature()
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "auth = [\"scram-sha-256\"]");
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
}

#[test]
fn with_nothing_to_delete_the_reply_to_quit_is_not_waited_for() {
    // The reply to QUIT would come after the 2 s timeout: a run that waited
    // for it would fail.
    let srv = FaultServer::builder()
        .messages(mail())
        .fault(On::Quit, Fault::Stall(Duration::from_secs(4)))
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "retention = \"forever\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()));
    assert_eq!(srv.commands().last().map(String::as_str), Some("QUIT"));
    assert_eq!(srv.mailbox(), mail());
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
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, delivered) = fetch(dir.path(), &srv, "retention = \"0d\"");
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("QUIT"), "{stderr}");
    assert_eq!(delivered, sorted(mail()));

    let (code, stderr, delivered) = fetch(dir.path(), &srv, "retention = \"0d\"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delivered, sorted(mail()), "each message once");
    assert!(srv.mailbox().is_empty());
    assert!(
        !srv.session(1).iter().any(|c| c.starts_with("RETR")),
        "{:?}",
        srv.session(1)
    );
}
