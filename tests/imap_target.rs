//! popsync's IMAP delivery target (issue 16, DESIGN.md "Delivery"): POP3 in,
//! IMAP APPEND out, exactly once.
//!
//! Three kinds of tests, each with its own users and mailboxes:
//! - against the real Dovecot of this binary (POP3 and IMAP on one server,
//!   `imap::ImapDovecot::shared()`): the mailbox is read back with Python's
//!   imaplib and compared byte for byte with the POP3 originals, with
//!   INTERNALDATE and flags;
//! - against the scripted IMAP server (`imap::fault`): each refusal and
//!   dropped connection, with its exit code and message, and the mail left
//!   on the POP3 server for the next clean run, which delivers it once;
//! - SIGKILL at named instants (stall points of the scripted server) and at
//!   timed ones (Dovecot, 200 messages), each followed by a clean run: every
//!   message in the mailbox exactly once, none left on the POP3 server.
//!
//! The `harness_` tests check the harness itself (Dovecot's IMAP, the
//! scripted server) with imaplib and raw commands, without popsync.

mod common;
mod imap;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use imap::fault::{Fault, FaultServer, Point, Trigger};
use imap::{ReadArgs, require_imap_dovecot};

/// How long a test waits for popsync to reach a stall point.
const REACH: Duration = Duration::from_secs(30);

// --- the harness itself ------------------------------------------------------

#[test]
fn harness_dovecot_serves_imap_that_imaplib_reads_back_byte_for_byte() {
    let dovecot = require_imap_dovecot!();
    let bob = dovecot.add_user("h-bob", "pw-h-bob");
    let raw =
        b"Subject: harness\r\nMessage-ID: <h1@example.org>\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n";
    let args = ReadArgs {
        port: dovecot.imaps_port(),
        tls: "implicit",
        ca_file: Some(dovecot.ca_file()),
        user: &bob.name,
        password: &bob.password,
        mailbox: "INBOX",
    };
    let got = imap::append_with_imaplib(&args, raw, Some("02-Jun-2025 10:05:00 +0200"), None);
    assert!(got.exists);
    assert!(got.uidvalidity.is_some());
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].bytes, raw.to_vec());
    assert_eq!(
        got.messages[0].internaldate,
        imap::epoch(2025, 6, 2, 8, 5, 0)
    );
    assert!(
        got.messages[0].flags.is_empty(),
        "{:?}",
        got.messages[0].flags
    );
    assert_eq!(bob.stored_count("INBOX"), 1);
    // STARTTLS on the plain port works too, and a missing mailbox is "not there".
    let plain = imap::read_mailbox(&ReadArgs {
        port: dovecot.imap_port(),
        tls: "starttls",
        mailbox: "Missing",
        ..args
    });
    assert!(!plain.exists);
}

#[test]
fn harness_fault_server_speaks_enough_imap_for_imaplib() {
    let srv = FaultServer::builder().start();
    let args = ReadArgs {
        port: srv.port(),
        tls: "none",
        ca_file: None,
        user: "bob",
        password: "imap-pw",
        mailbox: "INBOX",
    };
    let raw = b"Subject: one\r\nMessage-ID: <f1@example.org>\r\n\r\nbody\r\n";
    let got = imap::append_with_imaplib(
        &args,
        raw,
        Some("03-Jun-2025 12:34:56 -0700"),
        Some("(\\Seen)"),
    );
    assert!(got.exists);
    assert_eq!(got.uidvalidity, srv.uidvalidity("INBOX"));
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].bytes, raw.to_vec());
    assert_eq!(got.messages[0].flags, vec!["\\Seen".to_owned()]);
    assert_eq!(
        got.messages[0].internaldate,
        imap::epoch(2025, 6, 3, 19, 34, 56)
    );
    let before = got.uidvalidity;
    srv.change_uidvalidity("INBOX");
    let after = imap::read_mailbox(&args);
    assert_ne!(after.uidvalidity, before);
    assert_eq!(after.messages.len(), 1);
    assert!(
        !imap::read_mailbox(&ReadArgs {
            mailbox: "Nope",
            ..args
        })
        .exists
    );
}

/// A raw IMAP client for the harness checks.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let greeting = raw.line();
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
            "{greeting}"
        );
        raw
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("read a line");
        l
    }
    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
    /// Lines up to and including the tagged reply.
    fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; got {lines:?}");
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

#[test]
fn harness_fault_server_takes_literal_plus_and_multiappend_and_searches_headers() {
    let srv = FaultServer::builder().literal_plus().multiappend().start();
    let mut c = Raw::connect(srv.port());
    c.send(b"a1 AUTHENTICATE PLAIN AGJvYgBpbWFwLXB3\r\n");
    assert!(c.until("a1").last().unwrap().starts_with("a1 OK"));
    let m1 = b"Message-ID: <m1@x>\r\n\r\none\r\n";
    let m2 = b"Message-ID: <m2@x>\r\nReceived: by h; id <popsync-abc>\r\n\r\ntwo\r\n";
    let mut cmd = format!(
        "a2 APPEND INBOX () \"02-Jun-2025 10:05:00 +0000\" {{{}+}}\r\n",
        m1.len()
    )
    .into_bytes();
    cmd.extend_from_slice(m1);
    cmd.extend_from_slice(format!(" {{{}+}}\r\n", m2.len()).as_bytes());
    cmd.extend_from_slice(m2);
    cmd.extend_from_slice(b"\r\n");
    c.send(&cmd);
    let reply = c.until("a2");
    assert!(
        reply.last().unwrap().starts_with("a2 OK [APPENDUID "),
        "{reply:?}"
    );
    assert_eq!(srv.messages("INBOX").len(), 2);
    c.send(b"a3 SELECT INBOX\r\n");
    let sel = c.until("a3").concat();
    assert!(
        sel.contains("[UIDVALIDITY ") && sel.contains("* 2 EXISTS"),
        "{sel}"
    );
    c.send(b"a4 UID SEARCH HEADER Message-ID \"<m2@x>\"\r\n");
    assert_eq!(c.until("a4")[0], "* SEARCH 2\r\n");
    c.send(b"a5 UID SEARCH OR HEADER Received \"popsync-abc\" HEADER Message-ID \"<zz>\"\r\n");
    assert_eq!(c.until("a5")[0], "* SEARCH 2\r\n");
    c.send(b"a6 UID SEARCH UID 1:* HEADER Message-ID \"<none>\"\r\n");
    assert_eq!(c.until("a6")[0], "* SEARCH\r\n");
    c.send(b"a7 UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n");
    let f = c.until("a7").concat();
    assert!(f.contains("Message-ID: <m1@x>"), "{f}");
    c.send(b"a8 APPEND Missing {3}\r\n");
    assert!(c.line().starts_with("a8 NO [TRYCREATE]"));
    c.send(b"a9 CREATE Missing\r\n");
    assert!(c.until("a9").last().unwrap().starts_with("a9 OK"));
    assert!(srv.mailbox_exists("Missing"));
    c.send(b"a10 LOGOUT\r\n");
    c.until("a10");
    let shown = format!("<{} octets>", m1.len());
    assert!(srv.commands().iter().any(|l| l.contains(&shown)));
}

#[test]
fn harness_fault_server_stalls_and_drops_where_told() {
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(1), Fault::Stall(Point::MidLiteral));
    srv.fault(
        Trigger::Append(2),
        Fault::No("[OVERQUOTA] Quota exceeded".into()),
    );
    srv.fault(Trigger::Append(3), Fault::DropMidLiteral);
    let mut c = Raw::connect(srv.port());
    c.send(b"a1 LOGIN bob imap-pw\r\n");
    c.until("a1");
    let msg = b"Message-ID: <s@x>\r\n\r\n0123456789\r\n";
    c.send(format!("a2 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(msg);
    assert!(srv.wait_reached(Point::MidLiteral, REACH));
    assert!(srv.messages("INBOX").is_empty());
    srv.release();
    c.send(b"\r\n");
    assert!(c.until("a2").last().unwrap().starts_with("a2 OK"));
    c.send(format!("a3 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(msg);
    c.send(b"\r\n");
    assert!(
        c.until("a3")
            .last()
            .unwrap()
            .starts_with("a3 NO [OVERQUOTA]")
    );
    c.send(format!("a4 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(msg);
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the server answered instead of dropping");
    assert_eq!(srv.messages("INBOX").len(), 1);
    assert_eq!(srv.appends_seen(), 3);
}
