//! Tests of the Courier test harness itself (tests/common/courier.rs,
//! tests/courier): if these fail, failures of tests against Courier say
//! nothing about popsync. The client side is Python's poplib and ssl, which
//! verify the server certificate against the harness CA.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use common::courier::{Courier, require_courier};
use common::servers::PopServer;

/// Runs a Python check script with ARGS; panics with its transcript and the
/// server log unless it exits 0. Returns its stdout.
fn python(script: &str, args: &[&str], server: &dyn PopServer) -> Option<String> {
    if Command::new("python3").arg("--version").output().is_err() {
        common::cannot_run("python3 not installed");
        return None;
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python check failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    Some(stdout)
}

/// Greeting and CAPA on the plain port, STLS, POP3S; the certificate must
/// verify against ca.pem and must not verify without it.
const GREETINGS: &str = r#"
import poplib, ssl, sys
port, sport, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2

p = poplib.POP3("127.0.0.1", port, timeout=10)
assert p.getwelcome() == b"+OK Hello there.", p.getwelcome()
capa = p.capa()
print("plain CAPA:", capa)
assert "STLS" in capa and "USER" in capa and "UIDL" in capa and "TOP" in capa, capa
for m in ["PLAIN", "LOGIN", "CRAM-MD5"]:
    assert m in capa["SASL"], capa
p.stls(ctx)
print("STLS:", p.sock.version())
capa = p.capa()
print("CAPA after STLS:", capa)
assert "STLS" not in capa and "USER" in capa, capa
p.quit()

s = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=10)
assert s.getwelcome() == b"+OK Hello there.", s.getwelcome()
print("POP3S:", s.sock.version())
capa = s.capa()
assert "STLS" not in capa and "USER" in capa and "PLAIN" in capa["SASL"], capa
s.quit()

try:
    poplib.POP3_SSL("127.0.0.1", sport, context=ssl.create_default_context(), timeout=10)
    raise SystemExit("POP3S verified without the test CA")
except ssl.SSLCertVerificationError as e:
    print("without ca.pem:", e.verify_message)
"#;

/// Args: PORT POP3S_PORT CA USER PASSWORD EXPECTED_DIR WRAPPED MECHANISM...
/// Logs in with each MECHANISM (popsync names) over POP3S, and with
/// USER/PASS after STLS, sending UTF8 first, and compares STAT, the UIDL
/// format and RETR of every message with the files EXPECTED_DIR/1, 2, ...
/// Then, without UTF8, RETR WRAPPED (a message with raw UTF-8 headers) must
/// come wrapped in a message/global container. The part from "# Without
/// UTF8" on can be cut off.
const RETRIEVE: &str = r#"
import base64, hashlib, hmac, os, poplib, re, ssl, sys
port, sport, ca, user, pw, expected_dir, wrapped = sys.argv[1:8]
mechanisms = sys.argv[8:]
port, sport, wrapped = int(port), int(sport), int(wrapped)
ctx = ssl.create_default_context(cafile=ca)
expected = []
for i in range(1, 1000):
    path = os.path.join(expected_dir, str(i))
    if not os.path.exists(path):
        break
    expected.append(open(path, "rb").read())
b64 = lambda b: base64.b64encode(b).decode()

def login(p, mech):
    if mech == "user":
        p.user(user)
        return p.pass_(pw)
    if mech == "plain":
        return p._shortcmd("AUTH PLAIN " + b64(b"\0" + user.encode() + b"\0" + pw.encode()))
    if mech == "login":
        r = p._shortcmd("AUTH LOGIN")
        assert base64.b64decode(r[2:]) == b"Username:", r
        r = p._shortcmd(b64(user.encode()))
        assert base64.b64decode(r[2:]) == b"Password:", r
        return p._shortcmd(b64(pw.encode()))
    cram = {"cram-md5": hashlib.md5, "cram-sha1": hashlib.sha1, "cram-sha256": hashlib.sha256}
    if mech in cram:
        r = p._shortcmd("AUTH " + mech.upper())
        challenge = base64.b64decode(r[2:])
        digest = hmac.new(pw.encode(), challenge, cram[mech]).hexdigest()
        return p._shortcmd(b64(user.encode() + b" " + digest.encode()))
    raise SystemExit("unknown mechanism " + mech)

def retr(p, n):
    _, lines, _ = p.retr(n)
    return b"".join(l + b"\n" for l in lines)

def check(p, what):
    count, _ = p.stat()
    assert count == len(expected), (what, count, len(expected))
    _, uidls, _ = p.uidl()
    for line in uidls:
        assert re.fullmatch(rb"\d+ UID\d+-\d+", line), (what, line)
    for n, want in enumerate(expected, 1):
        got = retr(p, n)
        assert got == want, (what, n, got, want)
    print("ok", what, [l.decode() for l in uidls])

for mech in mechanisms:
    p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=20)
    assert p._shortcmd("UTF8") == b"+OK UTF8 enabled"
    r = login(p, mech)
    assert r == b"+OK logged in.", (mech, r)
    check(p, "POP3S " + mech)
    p.quit()

p = poplib.POP3("127.0.0.1", port, timeout=20)
p.stls(ctx)
p._shortcmd("UTF8")
login(p, "user")
check(p, "STLS user")
p.quit()

# Without UTF8, a message with raw UTF-8 in its headers comes wrapped.
p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=20)
login(p, "user")
got = retr(p, wrapped)
assert got != expected[wrapped - 1] and b"Content-Type: message/global\n" in got, got
assert expected[wrapped - 1] in got, got
print("ok without UTF8, message", wrapped, "is wrapped in message/global")
p.quit()
"#;

#[test]
fn courier_greets_on_both_ports_over_verified_tls() {
    let courier = require_courier!();
    let Some(out) = python(
        GREETINGS,
        &[
            &courier.pop3_port().to_string(),
            &courier.pop3s_port().to_string(),
            &courier.ca_file().to_string_lossy(),
        ],
        &courier,
    ) else {
        return;
    };
    eprintln!("{out}");
}

#[test]
fn delivered_messages_are_retrieved_byte_exact_with_every_mechanism() {
    let courier = require_courier!();
    let mailbox = courier.add_mailbox("bytes", "s3cret!pw");
    mailbox.deliver(&common::sample_message(1, 3));
    mailbox.deliver("From: Jörg <j@example.org>\r\nSubject: Grüße\r\n\r\nHallo\r\n".as_bytes());
    mailbox.deliver(b"Subject: no final newline\n\n.\n..\nlast line");
    mailbox.deliver(&common::sample_message(4, 50));
    let held = mailbox.server_messages();
    assert_eq!(held.len(), 4);
    assert!(
        held[1].starts_with("From: Jörg".as_bytes()),
        "delivery order"
    );
    assert!(
        held[2].ends_with(b"last line\n"),
        "Courier adds the final LF"
    );
    let expected = tempfile::tempdir().expect("temp dir");
    for (i, message) in held.iter().enumerate() {
        std::fs::write(expected.path().join((i + 1).to_string()), message).expect("write");
    }
    let mut args = vec![
        courier.pop3_port().to_string(),
        courier.pop3s_port().to_string(),
        courier.ca_file().to_string_lossy().into_owned(),
        mailbox.user().to_owned(),
        mailbox.password().to_owned(),
        expected.path().to_string_lossy().into_owned(),
        "2".to_owned(),
    ];
    args.extend(courier.mechanisms().iter().map(|m| m.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(out) = python(RETRIEVE, &args, &courier) else {
        return;
    };
    eprintln!("{out}");
    for mechanism in courier.mechanisms() {
        assert!(out.contains(&format!("ok POP3S {mechanism} ")), "{out}");
    }
    // Reading the Maildir did not change it; the sessions only renamed.
    assert_eq!(mailbox.server_messages(), held);
}

/// Live (not zombie) processes whose session is `sid`.
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
        // state ppid pgrp session
        if fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string() {
            members.push(pid);
        }
    }
    members
}

#[test]
fn dropping_courier_stops_every_process() {
    let courier = require_courier!();
    let pid = courier.pid();
    let (port, sport) = (courier.pop3_port(), courier.pop3s_port());
    let dir = courier.dir().to_owned();
    let mailbox = courier.add_mailbox("stopper", "pw");
    mailbox.deliver(b"Subject: x\n\ny\n");
    // authdaemond (with its workers) and two couriertcpd besides the
    // supervisor.
    assert!(
        session_members(pid).len() >= 4,
        "{:?}",
        session_members(pid)
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(courier);
    assert_eq!(session_members(pid), Vec::<u32>::new(), "left running");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", sport)).is_err());
    assert!(!dir.exists(), "the temp dir is removed");
    // The watchdog notices the server is gone and exits (within a second).
    let watchdog_gone = (0..30).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        watchdogs_for(&dir).is_empty()
    });
    assert!(watchdog_gone, "the watchdog is still there");
}

/// The watchdog processes start.sh left for the server in `dir`.
fn watchdogs_for(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_watchdog =
                args.iter().any(|a| a == "courier-watchdog") && args.contains(&needle);
            is_watchdog.then_some(pid)
        })
        .collect()
}

#[test]
fn the_shared_courier_serves_every_test_and_has_a_watchdog() {
    let Some(courier) = Courier::shared() else {
        return;
    };
    let again = Courier::shared().expect("shared once, shared always");
    assert!(std::ptr::eq(courier, again));
    assert_eq!(courier.kind(), "courier");
    // (A watchdog forking `sleep` may briefly show up twice.) start.sh may
    // have printed its output before the background watchdog's bash is
    // exec'd, so give it a moment to appear.
    let watchdog_up = (0..30).any(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        !watchdogs_for(courier.dir()).is_empty()
    });
    assert!(watchdog_up, "no watchdog");

    let mailbox = courier.add_mailbox("shared1", "secret");
    let other = courier.add_mailbox("shared2", "secret");
    for i in 1..=3 {
        mailbox.deliver(&common::sample_message(i, i));
    }
    other.deliver(b"Subject: other\n\nbody\n");
    let held = mailbox.server_messages();
    assert_eq!(
        held,
        (1..=3)
            .map(|i| common::sample_message(i, i))
            .collect::<Vec<_>>()
    );
    assert_eq!(other.server_messages().len(), 1);

    // The mailbox answers over POP3S, messages in delivery order.
    let expected = tempfile::tempdir().expect("temp dir");
    for (i, message) in held.iter().enumerate() {
        std::fs::write(expected.path().join((i + 1).to_string()), message).expect("write");
    }
    let (port, sport) = (
        courier.pop3_port().to_string(),
        courier.pop3s_port().to_string(),
    );
    let ca = courier.ca_file().to_string_lossy().into_owned();
    let dir = expected.path().to_string_lossy().into_owned();
    // These messages have no raw UTF-8 in their headers: byte check only.
    let script = RETRIEVE.split("# Without UTF8").next().expect("script");
    python(
        script,
        &[
            &port, &sport, &ca, "shared1", "secret", &dir, "0", "user", "plain",
        ],
        courier,
    );
}
