//! Tests of the Cyrus test harness itself (tests/common/cyrus.rs,
//! tests/cyrus/): if these fail, failures of popsync against Cyrus say
//! nothing about popsync. They talk to the server with their own small
//! POP3 client and SASL code, never with popsync's.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use common::cyrus::{Cyrus, Pop3, require_cyrus};
use common::servers::{Mailbox, PopServer};

/// Any stream a test session runs over: TCP, or TLS over TCP.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

type Session = Pop3<Box<dyn Stream>>;

fn tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("set timeout");
    stream
}

/// A client that trusts nothing but the PEM certificates in `ca`.
fn tls_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots.add(cert.expect("a PEM certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// TLS over `stream`, handshake done (so certificate errors show here).
fn tls_handshake(
    config: Arc<ClientConfig>,
    name: &str,
    stream: Box<dyn Stream>,
) -> io::Result<Box<dyn Stream>> {
    let server_name = ServerName::try_from(name.to_owned()).expect("a server name");
    let conn = ClientConnection::new(config, server_name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Box::new(tls))
}

/// A session on the POP3S port, certificate verified for `localhost`; the
/// greeting is returned with it.
fn pop3s(server: &dyn PopServer) -> (Session, String) {
    let stream = tls_handshake(
        tls_config(&server.ca_file()),
        "localhost",
        Box::new(tcp(server.pop3s_port())),
    )
    .unwrap_or_else(|e| panic!("TLS on the POP3S port: {e}"));
    let mut pop = Pop3::new(stream);
    let greeting = pop.line().expect("greeting");
    assert!(greeting.starts_with("+OK"), "greeting: {greeting}");
    (pop, greeting)
}

/// A session on the plain port after STLS, certificate verified for
/// `localhost`; the greeting is returned with it.
fn stls(server: &dyn PopServer) -> (Session, String) {
    let mut pop: Session = Pop3::new(Box::new(tcp(server.pop3_port())));
    let greeting = pop.line().expect("greeting");
    assert!(greeting.starts_with("+OK"), "greeting: {greeting}");
    let reply = pop.command("STLS").expect("STLS");
    assert!(reply.starts_with("+OK"), "STLS: {reply}");
    let stream = tls_handshake(tls_config(&server.ca_file()), "localhost", pop.into_inner())
        .unwrap_or_else(|e| panic!("TLS after STLS: {e}"));
    (Pop3::new(stream), greeting)
}

fn capa(pop: &mut Session) -> Vec<String> {
    let reply = pop.command("CAPA").expect("CAPA");
    assert!(reply.starts_with("+OK"), "CAPA: {reply}");
    let body = pop.multiline().expect("CAPA list");
    String::from_utf8(body)
        .expect("ASCII capabilities")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs in with popsync's `auth` name `mech` by this file's own SASL code
/// and returns the server's last reply (the login's outcome).
fn login(pop: &mut Session, greeting: &str, mech: &str, user: &str, password: &str) -> String {
    let command = |pop: &mut Session, line: &str| -> String {
        pop.command(line)
            .unwrap_or_else(|e| panic!("{mech}: sending {line:?}: {e}"))
    };
    let challenge = |reply: &str| -> Vec<u8> {
        let b64 = reply
            .strip_prefix("+ ")
            .unwrap_or_else(|| panic!("{mech}: expected a '+ ' challenge, got {reply:?}"));
        B64.decode(b64)
            .unwrap_or_else(|e| panic!("{mech}: challenge {b64:?}: {e}"))
    };
    match mech {
        "user" => {
            let reply = command(pop, &format!("USER {user}"));
            assert!(reply.starts_with("+OK"), "USER: {reply}");
            command(pop, &format!("PASS {password}"))
        }
        "apop" => {
            let start = greeting.find('<').expect("APOP timestamp in the greeting");
            let end = greeting.rfind('>').expect("APOP timestamp in the greeting");
            let digest = md5_hex(&[&greeting[start..=end], password].concat());
            command(pop, &format!("APOP {user} {digest}"))
        }
        "plain" => {
            let response = B64.encode(format!("\0{user}\0{password}"));
            command(pop, &format!("AUTH PLAIN {response}"))
        }
        "login" => {
            let reply = command(pop, "AUTH LOGIN");
            assert_eq!(challenge(&reply), b"Username:");
            let reply = command(pop, &B64.encode(user));
            assert_eq!(challenge(&reply), b"Password:");
            command(pop, &B64.encode(password))
        }
        "cram-md5" => {
            use hmac::{Hmac, KeyInit, Mac};
            let reply = command(pop, "AUTH CRAM-MD5");
            let nonce = challenge(&reply);
            let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(password.as_bytes())
                .expect("HMAC takes any key");
            mac.update(&nonce);
            let digest = hex(&mac.finalize().into_bytes());
            command(pop, &B64.encode(format!("{user} {digest}")))
        }
        "scram-sha-1" => scram(pop, Scram::SHA1, user, password),
        "scram-sha-256" => scram(pop, Scram::SHA256, user, password),
        other => panic!("no test login for mechanism {other:?}"),
    }
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    hex(&Md5::digest(text.as_bytes()))
}

struct Scram {
    name: &'static str,
    digest: &'static ring::digest::Algorithm,
    hmac: ring::hmac::Algorithm,
    pbkdf2: ring::pbkdf2::Algorithm,
}

impl Scram {
    const SHA1: Scram = Scram {
        name: "SCRAM-SHA-1",
        digest: &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        hmac: ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA1,
    };
    const SHA256: Scram = Scram {
        name: "SCRAM-SHA-256",
        digest: &ring::digest::SHA256,
        hmac: ring::hmac::HMAC_SHA256,
        pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA256,
    };

    fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = ring::hmac::Key::new(self.hmac, key);
        ring::hmac::sign(&key, data).as_ref().to_vec()
    }
}

/// RFC 5802 with an initial response. Cyrus sends the server-final message
/// (`v=...`) as a `+ ` continuation and answers `+OK` only after the client
/// has answered it with an empty line; this asserts exactly that.
fn scram(pop: &mut Session, alg: Scram, user: &str, password: &str) -> String {
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .expect("random nonce");
    let client_nonce = B64.encode(nonce);
    let client_first_bare = format!("n={user},r={client_nonce}");
    let initial = B64.encode(format!("n,,{client_first_bare}"));
    let reply = pop
        .command(&format!("AUTH {} {initial}", alg.name))
        .expect("AUTH");
    let server_first = decode_continuation(&reply, "server-first");
    let attr = |message: &str, key: char| -> String {
        message
            .split(',')
            .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {message:?}"))
            .to_owned()
    };
    let nonce = attr(&server_first, 'r');
    assert!(nonce.starts_with(&client_nonce), "server nonce {nonce}");
    let salt = B64.decode(attr(&server_first, 's')).expect("salt");
    let iterations: NonZeroU32 = attr(&server_first, 'i').parse().expect("iterations");

    let mut salted = vec![0u8; alg.digest.output_len()];
    ring::pbkdf2::derive(
        alg.pbkdf2,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = alg.hmac(&salted, b"Client Key");
    let stored_key = ring::digest::digest(alg.digest, &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = alg.hmac(stored_key.as_ref(), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let reply = pop
        .command(&B64.encode(format!("{without_proof},p={}", B64.encode(proof))))
        .expect("client-final");

    let server_final = decode_continuation(&reply, "server-final");
    let server_key = alg.hmac(&salted, b"Server Key");
    let expected = B64.encode(alg.hmac(&server_key, auth_message.as_bytes()));
    assert_eq!(
        server_final,
        format!("v={expected}"),
        "the server's signature"
    );
    pop.command("").expect("empty answer to the server-final")
}

fn decode_continuation(reply: &str, what: &str) -> String {
    let b64 = reply
        .strip_prefix("+ ")
        .unwrap_or_else(|| panic!("{what}: expected a '+ ' continuation, got {reply:?}"));
    String::from_utf8(B64.decode(b64).expect("base64")).expect("UTF-8")
}

fn uidls(pop: &mut Session) -> Vec<String> {
    let reply = pop.command("UIDL").expect("UIDL");
    assert!(reply.starts_with("+OK"), "UIDL: {reply}");
    String::from_utf8(pop.multiline().expect("UIDL list"))
        .expect("ASCII UIDLs")
        .lines()
        .map(|l| l.split_once(' ').expect("`n uidl`").1.to_owned())
        .collect()
}

fn retr(pop: &mut Session, n: usize) -> Vec<u8> {
    let reply = pop.command(&format!("RETR {n}")).expect("RETR");
    assert!(reply.starts_with("+OK"), "RETR {n}: {reply}");
    pop.multiline().expect("RETR body")
}

fn quit(mut pop: Session) {
    let reply = pop.command("QUIT").expect("QUIT");
    assert!(reply.starts_with("+OK"), "QUIT: {reply}");
}

/// A session logged in with USER/PASS over POP3S.
fn user_session(server: &dyn PopServer, mailbox: &dyn Mailbox) -> Session {
    let (mut pop, greeting) = pop3s(server);
    let reply = login(
        &mut pop,
        &greeting,
        "user",
        mailbox.user(),
        mailbox.password(),
    );
    assert!(reply.starts_with("+OK"), "login: {reply}\n{}", server.log());
    pop
}

/// `message` as Cyrus keeps it after its own trace fields: lmtpd drops the
/// message's Return-Path (it writes the envelope sender's instead).
fn as_kept(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let (header, body) = text.split_once("\n\n").expect("a header");
    let header: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("Return-Path:"))
        .collect();
    format!("{}\n\n{body}", header.join("\n")).into_bytes()
}

fn lf(raw: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Live processes whose session id is `sid` (the master's: start.sh runs
/// it with setsid, and its pop3d/lmtpd children inherit the session).
fn session_members(sid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        // state ppid pgrp session ...
        if fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string() {
            members.push(pid);
        }
    }
    members
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cyrus_greets_on_both_ports_with_a_certificate_the_ca_verifies() {
    let Some(cyrus) = Cyrus::shared() else {
        return;
    };
    // Plain port: greeting with an APOP timestamp, STLS offered, no USER and
    // no plain-text SASL before TLS.
    let mut plain: Session = Pop3::new(Box::new(tcp(cyrus.pop3_port())));
    let greeting = plain.line().expect("greeting");
    assert!(
        greeting.starts_with("+OK localhost Cyrus POP3 3.6") && greeting.ends_with("@localhost>"),
        "greeting: {greeting}"
    );
    let caps = capa(&mut plain);
    for cap in [
        "STLS",
        "UIDL",
        "TOP",
        "PIPELINING",
        "RESP-CODES",
        "LOGIN-DELAY 0",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing: {caps:?}");
    }
    assert!(!caps.iter().any(|c| c == "USER"), "{caps:?}");
    let reply = plain.command("USER nobody").expect("USER");
    assert!(
        reply.starts_with("-ERR [AUTH]"),
        "USER before STLS: {reply}"
    );
    quit(plain);

    // After STLS: USER and the plain-text mechanisms appear.
    let (mut upgraded, _) = stls(cyrus);
    let caps = capa(&mut upgraded);
    assert!(caps.iter().any(|c| c == "USER"), "{caps:?}");
    let sasl = caps
        .iter()
        .find(|c| c.starts_with("SASL "))
        .expect("SASL capability");
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"] {
        assert!(sasl.split(' ').any(|m| m == mech), "{mech} missing: {sasl}");
    }
    quit(upgraded);

    // POP3S, verified for the IP address as well as for `localhost`.
    let (pop, greeting) = pop3s(cyrus);
    assert!(greeting.contains("Cyrus POP3"), "greeting: {greeting}");
    quit(pop);
    let by_ip = tls_handshake(
        tls_config(&cyrus.ca_file()),
        "127.0.0.1",
        Box::new(tcp(cyrus.pop3s_port())),
    );
    assert!(
        by_ip.is_ok(),
        "certificate for IP 127.0.0.1: {:?}",
        by_ip.err()
    );

    // A client that trusts another CA refuses the certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("make a certificate");
    let other_ca = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(other_ca.path(), other.cert.pem()).expect("write PEM");
    let refused = tls_handshake(
        tls_config(other_ca.path()),
        "localhost",
        Box::new(tcp(cyrus.pop3s_port())),
    );
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[test]
fn every_mechanism_retrieves_the_delivered_message_byte_exact() {
    let Some(cyrus) = Cyrus::shared() else {
        return;
    };
    let server: &dyn PopServer = cyrus;
    let mailbox = server.add_mailbox("mechs", "Pa55-w0rd!");
    let raw: &[u8] = b"From: Alice <alice@example.org>\r\n\
        Subject: byte exact \xc3\xa9\r\n\
        Message-ID: <byte-exact@popsync.test>\r\n\
        Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\
        \r\n\
        .leading dot\r\n\
        ..two dots\r\n\
        .\r\n\
        \r\n\
        last line\r\n";
    mailbox.deliver(raw);
    // Without Message-ID and Date, lmtpd adds both.
    mailbox.deliver(b"Subject: bare\n\nbody\n");

    let held = mailbox.server_messages();
    assert_eq!(held.len(), 2, "{}", server.log());
    // lmtpd puts its trace fields before the message, which is otherwise
    // kept byte for byte (LF line ends here).
    let first = &held[0];
    assert!(
        first.ends_with(&lf(raw)),
        "held:\n{}",
        String::from_utf8_lossy(first)
    );
    let prefix = String::from_utf8_lossy(&first[..first.len() - lf(raw).len()]).into_owned();
    let lines: Vec<&str> = prefix.lines().collect();
    assert_eq!(lines[0], "Return-Path: <>", "{prefix}");
    assert!(lines[1].starts_with("Received: from deliver ([unix socket])"));
    assert!(
        lines[2].starts_with("\t by localhost (Cyrus 3.6"),
        "{prefix}"
    );
    assert!(lines[3].starts_with('\t'), "{prefix}");
    assert!(lines[4].starts_with("X-Cyrus-Session-Id: "), "{prefix}");
    assert_eq!(lines[5], "X-Sieve: CMU Sieve 3.0", "{prefix}");
    assert_eq!(lines.len(), 6, "{prefix}");
    let second = String::from_utf8_lossy(&held[1]).into_owned();
    let header = second.split("\n\n").next().expect("a header");
    assert!(
        header.contains("\nSubject: bare\nMessage-ID: <cmu-lmtpd-") && header.contains("\nDate: "),
        "{second}"
    );
    assert!(second.ends_with("\n\nbody\n"), "{second}");

    let mechanisms = server.mechanisms();
    assert!(mechanisms.contains(&"scram-sha-256") && mechanisms.contains(&"user"));
    let mut reference_uidls = None;
    for mech in mechanisms {
        for over_stls in [false, true] {
            let (mut pop, greeting) = if over_stls {
                stls(server)
            } else {
                pop3s(server)
            };
            let reply = login(
                &mut pop,
                &greeting,
                mech,
                mailbox.user(),
                mailbox.password(),
            );
            assert!(
                reply.starts_with("+OK Mailbox locked and ready"),
                "{mech} (STLS: {over_stls}): {reply}\n{}",
                server.log()
            );
            let ids = uidls(&mut pop);
            assert_eq!(ids.len(), 2);
            assert_eq!(reference_uidls.get_or_insert_with(|| ids.clone()), &ids);
            assert_eq!(retr(&mut pop, 1), held[0], "{mech}");
            assert_eq!(retr(&mut pop, 2), held[1], "{mech}");
            quit(pop);
        }
    }
    // A wrong password is refused at once (failedloginpause: 0).
    let (mut pop, greeting) = pop3s(server);
    let started = Instant::now();
    let reply = login(&mut pop, &greeting, "plain", mailbox.user(), "wrong");
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn dele_and_quit_empty_the_mailbox_and_reading_it_changes_nothing() {
    let Some(cyrus) = Cyrus::shared() else {
        return;
    };
    let mailbox = cyrus.add_user("deleter", "pw");
    for n in 1..=3 {
        mailbox.deliver(&common::sample_message(n, 3));
    }
    let held = mailbox.server_messages();
    assert_eq!(held.len(), 3);
    for (n, message) in (1..=3).zip(&held) {
        assert!(message.ends_with(&as_kept(&common::sample_message(n, 3))));
    }

    let mut pop = user_session(cyrus, &mailbox);
    let before = uidls(&mut pop);
    quit(pop);
    // Reading is side-effect free: same messages, same UIDLs.
    assert_eq!(mailbox.server_messages(), held);
    let mut pop = user_session(cyrus, &mailbox);
    assert_eq!(uidls(&mut pop), before);

    // DELE without QUIT (the connection just drops) deletes nothing.
    let reply = pop.command("DELE 1").expect("DELE");
    assert_eq!(reply, "+OK message deleted");
    drop(pop);
    wait_until(
        "the dropped session is gone",
        Duration::from_secs(5),
        || mailbox.server_messages().len() == 3,
    );
    assert_eq!(mailbox.server_messages(), held);

    // DELE and QUIT expunge; the rest keep their UIDLs.
    let mut pop = user_session(cyrus, &mailbox);
    assert_eq!(pop.command("DELE 1").expect("DELE"), "+OK message deleted");
    quit(pop);
    assert_eq!(mailbox.server_messages(), held[1..].to_vec());
    let mut pop = user_session(cyrus, &mailbox);
    assert_eq!(uidls(&mut pop), before[1..].to_vec());
    for n in 1..=2 {
        let reply = pop.command(&format!("DELE {n}")).expect("DELE");
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    quit(pop);
    assert!(mailbox.server_messages().is_empty());
    let mut pop = user_session(cyrus, &mailbox);
    assert_eq!(pop.command("STAT").expect("STAT"), "+OK 0 0");
    quit(pop);
}

#[test]
fn popminpoll_refuses_a_second_login_too_soon() {
    let cyrus = require_cyrus!("--popminpoll", "1");
    let mailbox = cyrus.add_user("poller", "pw");
    mailbox.deliver(b"Subject: one\n\nbody\n");

    let (mut pop, _) = pop3s(&cyrus);
    let caps = capa(&mut pop);
    assert!(caps.iter().any(|c| c == "LOGIN-DELAY 60"), "{caps:?}");
    quit(pop);

    // The first login is fine; QUIT records its time.
    let pop = user_session(&cyrus, &mailbox);
    quit(pop);
    let refusal = "-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart";
    for mech in ["user", "plain", "scram-sha-256"] {
        let (mut pop, greeting) = pop3s(&cyrus);
        let reply = login(&mut pop, &greeting, mech, "poller", "pw");
        assert_eq!(reply, refusal, "{mech}");
        quit(pop);
    }
    // The harness still reads the mailbox, and that changes nothing.
    assert_eq!(mailbox.server_messages().len(), 1);
    let (mut pop, greeting) = pop3s(&cyrus);
    assert_eq!(login(&mut pop, &greeting, "user", "poller", "pw"), refusal);
}

#[test]
fn cyrus_drops_commands_pipelined_behind_a_successful_auth() {
    let Some(cyrus) = Cyrus::shared() else {
        return;
    };
    let mailbox = cyrus.add_user("pipeliner", "pw");
    mailbox.deliver(b"Subject: one\n\nbody\n");
    // LIST counts CRLF line ends.
    let held = &mailbox.server_messages()[0];
    let size = held.len() + held.iter().filter(|&&b| b == b'\n').count();

    // USER and PASS may be pipelined together with what follows them.
    let (mut pop, _) = pop3s(cyrus);
    pop.send("USER pipeliner\r\nPASS pw\r\nSTAT").expect("send");
    assert_eq!(pop.line().expect("USER"), "+OK Name is a valid mailbox");
    assert!(pop.line().expect("PASS").starts_with("+OK Mailbox locked"));
    assert_eq!(pop.line().expect("STAT"), format!("+OK 1 {size}"));
    quit(pop);

    // Behind AUTH, the pipelined STAT gets no answer at all, and the next
    // command is garbled into "-ERR Unrecognized command" (pop3d replays
    // the start of its read buffer when it switches to the SASL layer).
    let (mut pop, _) = pop3s(cyrus);
    let plain = B64.encode("\0pipeliner\0pw");
    pop.send(&format!("AUTH PLAIN {plain}\r\nSTAT"))
        .expect("send");
    assert!(pop.line().expect("AUTH").starts_with("+OK Mailbox locked"));
    assert_eq!(
        pop.command("NOOP").expect("NOOP"),
        "-ERR Unrecognized command"
    );
    assert_eq!(pop.command("STAT").expect("STAT"), format!("+OK 1 {size}"));
    quit(pop);

    // In TRANSACTION state a whole pipelined batch is answered in order.
    let mut pop = user_session(cyrus, &mailbox);
    pop.send("STAT\r\nLIST 1\r\nUIDL 1\r\nNOOP").expect("send");
    assert_eq!(pop.line().expect("STAT"), format!("+OK 1 {size}"));
    assert_eq!(pop.line().expect("LIST"), format!("+OK 1 {size}"));
    assert!(pop.line().expect("UIDL").starts_with("+OK 1 "));
    assert_eq!(pop.line().expect("NOOP"), "+OK");
    quit(pop);
}

#[test]
fn dropping_cyrus_stops_every_process_and_closes_the_ports() {
    let cyrus = require_cyrus!();
    let mailbox = cyrus.add_user("stopper", "pw");
    mailbox.deliver(b"Subject: one\n\nbody\n");
    let pid = cyrus.pid();
    let ports = [cyrus.pop3_port(), cyrus.pop3s_port(), cyrus.reader_port()];
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(session_members(pid).len() > 1, "master and its children");
    drop(cyrus);
    assert_eq!(session_members(pid), Vec::<u32>::new(), "all gone");
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port}"
        );
    }
}

#[test]
fn the_watchdog_stops_the_server_once_its_owner_has_exited() {
    let mut owner = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let owner_pid = owner.id().to_string();
    let started = Cyrus::start(&["--owner-pid", &owner_pid]);
    let Some(cyrus) = started else {
        let _ = owner.kill();
        let _ = owner.wait();
        return;
    };
    let pid = cyrus.pid();
    let watchdog: u32 = std::fs::read_to_string(cyrus.dir().join("watchdog.pid"))
        .expect("watchdog.pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(Path::new(&format!("/proc/{watchdog}")).exists());
    thread::sleep(Duration::from_millis(1500));
    assert!(
        !session_members(pid).is_empty(),
        "runs while the owner runs"
    );

    owner.kill().expect("kill the owner");
    owner.wait().expect("reap the owner");
    wait_until(
        "the watchdog stopped Cyrus",
        Duration::from_secs(15),
        || session_members(pid).is_empty(),
    );
    assert!(TcpStream::connect(("127.0.0.1", cyrus.pop3_port())).is_err());
    wait_until("the watchdog exited", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{watchdog}")).exists()
            || std::fs::read_to_string(format!("/proc/{watchdog}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

#[test]
fn the_shared_server_is_started_once_and_watched() {
    let Some(cyrus) = Cyrus::shared() else {
        return;
    };
    let again = Cyrus::shared().expect("still there");
    assert!(std::ptr::eq(cyrus, again));
    assert_eq!(cyrus.kind(), "cyrus");
    assert!(!session_members(cyrus.pid()).is_empty());
    let watchdog = std::fs::read_to_string(cyrus.dir().join("watchdog.pid")).expect("watchdog");
    assert!(Path::new(&format!("/proc/{}", watchdog.trim())).exists());
    let server: &dyn PopServer = cyrus;
    let mailbox = server.add_mailbox("shared", "pw");
    mailbox.deliver(&common::sample_message(7, 2));
    let held = mailbox.server_messages();
    assert_eq!(held.len(), 1);
    assert!(held[0].ends_with(&as_kept(&common::sample_message(7, 2))));
    assert!(held[0].starts_with(b"Return-Path: <>\n"));
}
