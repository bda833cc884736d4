//! popsync against servers that punish pipelining where RFC 2449 forbids it,
//! through the real binary and the scripted server of `tests/fault/`:
//!
//! - a login hand-off server (Courier's login front end): the greeting comes
//!   late and whatever arrived before it, or before the reply to a
//!   state-changing command (USER, PASS, APOP, every step of AUTH, UTF8), is
//!   thrown away;
//! - a strict server without PIPELINING (as Cyrus answers): a command that
//!   arrives before the previous reply was written gets `-ERR`.
//!
//! With every login mechanism the scripted server knows, `probe --login`,
//! `check`, `peek`, `fetch --dry-run` and `fetch` (retention "0d") all work,
//! the Maildir holds every message byte for byte, the server ends up empty,
//! and the server saw no breach of the rules (`pipelining_breaches`). Then:
//! a `-ERR` to a pipelined RETR ends the session (exit 76, no QUIT) and the
//! next run delivers the rest exactly once; UTF8 (RFC 6856) is sent before
//! login when offered, and waited for. The contract is /work/shared/DESIGN.md
//! ("Protocol coverage"; exit codes).

mod common;
mod fault;

use std::path::Path;
use std::time::Duration;

use common::{Output, TestEnv, maildir_messages, sorted};
use fault::{Fault, FaultServer, On};

/// popsync's `timeout` in these tests: a client that waits for a reply the
/// server will never send (the command was thrown away) fails after it.
const TIMEOUT_SECS: u64 = 3;

/// Long enough that anything pipelined behind a held reply has arrived.
const HOLD: Duration = Duration::from_millis(250);

/// Three messages: a plain one, one with dot-stuffed lines (a line that is
/// just "."), one with 8-bit UTF-8 and blank lines.
fn mail() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\nFrom: a@example.org\n\nfirst\n".to_vec(),
        b"Subject: two\nFrom: b@example.org\n\n.a leading dot\n..two dots\n.\nend\n".to_vec(),
        "Subject: three\nFrom: c@example.org\nContent-Type: text/plain; charset=utf-8\n\n\
         \u{e9}t\u{e9} \u{2014} 8-bit\n\n\nafter blank lines\n"
            .as_bytes()
            .to_vec(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `FaultServer::login_handoff` (CAPA lists PIPELINING, as Courier's).
    Handoff,
    /// `FaultServer::strict_no_pipelining`.
    Strict,
}

/// One login mechanism: popsync's `auth` name, the password (the token for
/// OAuth), and the command that must open the login on the wire.
struct Mech {
    auth: &'static str,
    password: String,
    /// The login command as sent, exactly (`exact`) or as a prefix.
    command: &'static str,
    exact: bool,
}

impl Mech {
    fn new(auth: &'static str, command: &'static str) -> Mech {
        Mech {
            auth,
            password: "secret".to_owned(),
            command,
            exact: false,
        }
    }
}

/// A password so long that `AUTH PLAIN <initial response>` would exceed
/// RFC 5034's 255 octets: popsync sends `AUTH PLAIN` alone and the initial
/// response after the server's empty challenge.
fn long_password() -> String {
    (0..220)
        .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]))
        .collect()
}

fn mechanism(name: &str) -> Mech {
    match name {
        "user" => Mech::new("user", "USER alice"),
        "apop" => Mech::new("apop", "APOP alice "),
        "plain" => Mech::new("plain", "AUTH PLAIN "),
        "plain-without-initial-response" => Mech {
            password: long_password(),
            exact: true,
            ..Mech::new("plain", "AUTH PLAIN")
        },
        "login" => Mech::new("login", "AUTH LOGIN"),
        "scram-sha-1" => Mech::new("scram-sha-1", "AUTH SCRAM-SHA-1"),
        "scram-sha-256" => Mech::new("scram-sha-256", "AUTH SCRAM-SHA-256"),
        "xoauth2" => Mech::new("xoauth2", "AUTH XOAUTH2"),
        "oauthbearer" => Mech::new("oauthbearer", "AUTH OAUTHBEARER"),
        other => panic!("no such mechanism in this test: {other}"),
    }
}

/// CAPA of every server here; `strict_no_pipelining` takes PIPELINING out.
const CAPA: &[&str] = &[
    "USER",
    "UIDL",
    "TOP",
    "PIPELINING",
    "RESP-CODES",
    "SASL PLAIN LOGIN SCRAM-SHA-1 SCRAM-SHA-256 XOAUTH2 OAUTHBEARER",
];

fn server(mode: Mode, mech: &Mech) -> fault::Builder {
    let builder = FaultServer::builder()
        .capa(CAPA)
        .credentials("alice", &mech.password)
        .messages(mail());
    let builder = if mech.auth == "apop" {
        builder.apop()
    } else {
        builder
    };
    match mode {
        Mode::Handoff => builder.login_handoff(),
        Mode::Strict => builder.strict_no_pipelining(),
    }
}

/// Every line of every connection, for failure messages.
fn transcripts(srv: &FaultServer) -> String {
    srv.transcripts()
        .iter()
        .enumerate()
        .map(|(i, t)| format!("connection {i}: {t:?}\n"))
        .collect()
}

/// `probe --login`, `check`, `peek`, `fetch --dry-run`, then `fetch` with
/// retention "0d", then `check` again: each works, nothing is lost, nothing
/// breaks the pipelining rules.
fn serves_everything(mode: Mode, name: &str) {
    let mech = mechanism(name);
    let srv = server(mode, &mech).start();
    let env = TestEnv::new();
    let maildir = env.path().join("mail");
    let config = fault::account_config(
        env.path(),
        "acct",
        &srv,
        &maildir,
        TIMEOUT_SECS,
        &mech.password,
        &format!("auth = [\"{}\"]\nretention = \"0d\"", mech.auth),
    );
    let run = |args: &[&str], expected: i32| -> String {
        let Output {
            code,
            stdout,
            stderr,
            ..
        } = env.run_config(&config, args);
        assert_eq!(
            code,
            expected,
            "{mode:?} {name}: popsync {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
            transcripts(&srv)
        );
        stdout
    };

    run(&["probe", "--login", "acct"], 0);
    run(&["check", "acct"], 0);
    let peek = run(&["peek", "acct"], 0);
    for subject in ["one", "two", "three"] {
        assert!(peek.contains(subject), "{mode:?} {name}: peek:\n{peek}");
    }
    let plan = run(&["fetch", "--dry-run", "acct"], 0);
    for uidl in ["uid-1", "uid-2", "uid-3"] {
        assert!(plan.contains(uidl), "{mode:?} {name}: plan:\n{plan}");
    }
    assert!(maildir_messages(&maildir).is_empty(), "{mode:?} {name}");
    assert_eq!(
        srv.mailbox(),
        mail(),
        "{mode:?} {name}: nothing deleted yet"
    );

    run(&["fetch", "acct"], 0);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(mail()),
        "{mode:?} {name}: every message, byte for byte, once"
    );
    assert!(srv.mailbox().is_empty(), "{mode:?} {name}: retention 0d");
    run(&["check", "acct"], 1);

    let breaches = srv.pipelining_breaches();
    assert!(breaches.is_empty(), "{mode:?} {name}: {breaches:#?}");
    // Every run logs in.
    for (i, session) in srv.sessions().iter().enumerate() {
        assert!(
            session.iter().any(|l| if mech.exact {
                l == mech.command
            } else {
                l.starts_with(mech.command)
            }),
            "{mode:?} {name}: connection {i} logs in with {:?}: {session:?}",
            mech.command
        );
    }
}

macro_rules! every_mechanism {
    ($mode:expr; $($test:ident: $mech:expr,)*) => {
        $(
            #[test]
            fn $test() {
                serves_everything($mode, $mech);
            }
        )*
    };
}

every_mechanism! {
    Mode::Handoff;
    login_handoff_server_loses_nothing_with_user_pass: "user",
    login_handoff_server_loses_nothing_with_apop: "apop",
    login_handoff_server_loses_nothing_with_plain: "plain",
    login_handoff_server_loses_nothing_with_plain_without_initial_response:
        "plain-without-initial-response",
    login_handoff_server_loses_nothing_with_login: "login",
    login_handoff_server_loses_nothing_with_scram_sha_1: "scram-sha-1",
    login_handoff_server_loses_nothing_with_scram_sha_256: "scram-sha-256",
    login_handoff_server_loses_nothing_with_xoauth2: "xoauth2",
    login_handoff_server_loses_nothing_with_oauthbearer: "oauthbearer",
}

every_mechanism! {
    Mode::Strict;
    strict_server_without_pipelining_is_never_pipelined_to_with_user_pass: "user",
    strict_server_without_pipelining_is_never_pipelined_to_with_apop: "apop",
    strict_server_without_pipelining_is_never_pipelined_to_with_plain: "plain",
    strict_server_without_pipelining_is_never_pipelined_to_with_plain_without_initial_response:
        "plain-without-initial-response",
    strict_server_without_pipelining_is_never_pipelined_to_with_login: "login",
    strict_server_without_pipelining_is_never_pipelined_to_with_scram_sha_1: "scram-sha-1",
    strict_server_without_pipelining_is_never_pipelined_to_with_scram_sha_256: "scram-sha-256",
    strict_server_without_pipelining_is_never_pipelined_to_with_xoauth2: "xoauth2",
    strict_server_without_pipelining_is_never_pipelined_to_with_oauthbearer: "oauthbearer",
}

/// A plain-TCP account on `srv` (timeout `TIMEOUT_SECS`) with `extra` lines.
fn config(dir: &Path, srv: &FaultServer, extra: &str) -> String {
    fault::plain_account_config(dir, "acct", srv, &dir.join("mail"), TIMEOUT_SECS, extra)
}

fn five() -> Vec<Vec<u8>> {
    (1..=5)
        .map(|i| format!("Subject: m{i}\nFrom: x@example.org\n\nbody {i}\n").into_bytes())
        .collect()
}

fn count_retr(session: &[String]) -> usize {
    session.iter().filter(|c| c.starts_with("RETR ")).count()
}

#[test]
fn an_err_to_a_pipelined_retr_ends_the_session_and_the_next_run_delivers_the_rest_once() {
    // RETR 1 is held back so that RETR 2.. are provably in flight behind
    // it; RETR 2 then gets -ERR where the message was due.
    let srv = FaultServer::builder()
        .messages(five())
        .fault(On::Retr(1), Fault::Stall(HOLD))
        .times(1)
        .fault(On::Retr(2), Fault::err("message is gone"))
        .times(1)
        .start();
    let env = TestEnv::new();
    let maildir = env.path().join("mail");
    let cfg = config(env.path(), &srv, "retention = \"0d\"");

    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&cfg, &["fetch", "acct"]);
    let first = srv.session(0);
    assert_eq!(code, 76, "stdout:\n{stdout}\nstderr:\n{stderr}\n{first:?}");
    assert!(
        srv.ahead(0).iter().any(|c| c == "RETR 2"),
        "RETR 2 was pipelined behind RETR 1: {first:?} ahead {:?}",
        srv.ahead(0)
    );
    assert!(
        !first.iter().any(|c| c == "QUIT"),
        "the connection is dropped without QUIT: {first:?}"
    );
    assert_eq!(srv.mailbox(), five(), "no QUIT, nothing deleted");
    let delivered = maildir_messages(&maildir);
    assert!(delivered.len() < 5, "{delivered:?}");
    for m in &delivered {
        assert_eq!(
            delivered.iter().filter(|d| *d == m).count(),
            1,
            "delivered twice: {m:?}"
        );
        assert!(five().contains(m), "{m:?}");
    }
    assert!(
        !delivered.contains(&five()[1]),
        "message 2 was refused, it cannot be in the Maildir"
    );
    assert!(
        srv.pipelining_breaches().is_empty(),
        "{:?}",
        srv.pipelining_breaches()
    );

    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&cfg, &["fetch", "acct"]);
    let second = srv.session(1);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{second:?}");
    assert_eq!(
        maildir_messages(&maildir),
        sorted(five()),
        "each exactly once"
    );
    assert_eq!(
        count_retr(&second),
        5 - delivered.len(),
        "only what the first run did not deliver is fetched again: {second:?}"
    );
    assert!(srv.mailbox().is_empty(), "retention 0d");
}

#[test]
fn a_strict_server_answering_a_pipelined_retr_with_err_is_76_and_loses_nothing() {
    // A server that lists PIPELINING but then answers a RETR of the window
    // the way a strict server answers pipelined input; the run keeps the
    // messages (retention forever).
    let srv = FaultServer::builder()
        .messages(five())
        .fault(On::Retr(1), Fault::Stall(HOLD))
        .times(1)
        .fault(On::Retr(3), Fault::err(fault::PIPELINED_ERR))
        .times(1)
        .start();
    let env = TestEnv::new();
    let maildir = env.path().join("mail");
    let cfg = config(env.path(), &srv, "retention = \"forever\"");
    let Output { code, stderr, .. } = env.run_config(&cfg, &["fetch", "acct"]);
    assert_eq!(code, 76, "{stderr}\n{:?}", srv.session(0));
    assert!(!srv.session(0).iter().any(|c| c == "QUIT"));
    let first = maildir_messages(&maildir);
    assert!(!first.contains(&five()[2]), "message 3 was refused");

    let Output { code, stderr, .. } = env.run_config(&cfg, &["fetch", "acct"]);
    assert_eq!(code, 0, "{stderr}\n{:?}", srv.session(1));
    assert_eq!(
        maildir_messages(&maildir),
        sorted(five()),
        "each exactly once"
    );
    assert_eq!(srv.mailbox(), five(), "retention forever");
}

#[test]
fn utf8_is_sent_before_login_and_its_reply_waited_for() {
    // RFC 6856: UTF8 is a state-changing command of AUTHORIZATION state.
    // The reply to it is held back; a hand-off server throws away what
    // arrives meanwhile.
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES", "UTF8"])
        .messages(mail())
        .login_handoff()
        .fault(On::Utf8, Fault::Stall(HOLD))
        .start();
    let env = TestEnv::new();
    let Output { code, stderr, .. } =
        env.run_config(&config(env.path(), &srv, ""), &["fetch", "acct"]);
    let session = srv.session(0);
    assert_eq!(code, 0, "{stderr}\n{:?}", srv.transcript(0));
    assert_eq!(maildir_messages(&env.path().join("mail")), sorted(mail()));
    let utf8 = session
        .iter()
        .position(|c| c == "UTF8")
        .unwrap_or_else(|| panic!("UTF8 is offered and sent: {session:?}"));
    let user = session
        .iter()
        .position(|c| c == "USER alice")
        .unwrap_or_else(|| panic!("USER sent: {session:?}"));
    assert!(utf8 < user, "UTF8 before login: {session:?}");
    let transcript = srv.transcript(0);
    assert!(
        !transcript[utf8].ahead && !transcript[utf8 + 1].ahead,
        "neither UTF8 nor the line after it is pipelined: {transcript:?}"
    );
    let breaches = srv.pipelining_breaches();
    assert!(breaches.is_empty(), "{breaches:#?}");
}

#[test]
fn utf8_is_not_sent_unless_offered() {
    let srv = FaultServer::builder().messages(mail()).start();
    let env = TestEnv::new();
    let Output { code, stderr, .. } =
        env.run_config(&config(env.path(), &srv, ""), &["fetch", "acct"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !srv.commands().iter().any(|c| c == "UTF8"),
        "{:?}",
        srv.commands()
    );
}
