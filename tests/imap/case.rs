//! What the IMAP target's test binaries share (`tests/imap_dovecot.rs`,
//! `tests/imap_faults.rs`, `tests/imap_kill.rs`): a POP3 account on the
//! shared Dovecot that delivers into an IMAP mailbox (`Case`, `fault_case`
//! for the scripted server), the test messages, the run's fixed clock, and
//! the checks every kind of test ends with: the same bytes in the mailbox,
//! each message exactly once after a clean run, a refused message still on
//! the POP3 server.

use std::time::Duration;

use crate::common;
use crate::imap;
use crate::imap::fault::FaultServer;

/// How long a test waits for popsync to reach a stall point.
pub const REACH: Duration = Duration::from_secs(30);

/// The run's clock for the INTERNALDATE "else now" case.
pub const NOW: &str = "2026-01-15T09:30:00Z";

pub fn now_epoch() -> i64 {
    imap::epoch(2026, 1, 15, 9, 30, 0)
}

/// A message with a unique Message-ID `<TAG.I@example.org>`, a first
/// Received: header dated 2 Jun 2025 10:MM UTC, lines POP3 has to
/// dot-stuff, and about `size` bytes.
pub fn message(tag: &str, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Received: from mx.example.org (mx.example.org [192.0.2.1])\n\
         \tby pop.example.net with ESMTPS id q{i}; Mon, 2 Jun 2025 10:{:02}:00 +0000\n\
         From: Sender {i} <sender{i}@example.org>\n\
         To: Alice <alice@example.net>\n\
         Subject: {tag} message {i}\n\
         Date: Mon, 2 Jun 2025 09:00:00 +0000\n\
         Message-ID: <{tag}.{i}@example.org>\n\
         \n\
         Message {i} of {tag}.\n\
         .\n\
         ..two dots\n\
         From a line mbox would quote\n",
        i % 60
    );
    let mut k = 0;
    while m.len() < size {
        m.push_str(&format!(
            "line {k} of message {i} ({tag}): the quick brown fox\n"
        ));
        k += 1;
    }
    m.into_bytes()
}

/// One account: POP3 from a fresh Dovecot user holding `count` messages,
/// delivering into `target`.
pub struct Case {
    pub env: common::TestEnv,
    pub pop: imap::MailUser,
    pub sent: Vec<Vec<u8>>,
}

impl Case {
    pub fn new(
        dovecot: &imap::ImapDovecot,
        name: &str,
        messages: Vec<Vec<u8>>,
        target: &imap::Target,
        extra: &str,
    ) -> Case {
        let pop = dovecot.add_user(&format!("{name}-pop"), "pop-pw");
        for m in &messages {
            pop.deliver(m);
        }
        let env = common::TestEnv::new();
        let case = Case {
            env,
            pop,
            sent: messages,
        };
        case.configure(dovecot, target, extra);
        case
    }

    pub fn configure(&self, dovecot: &imap::ImapDovecot, target: &imap::Target, extra: &str) {
        self.env.write_accounts(&[imap::account_toml(
            "work",
            &dovecot.pop3(&self.pop),
            target,
            extra,
        )]);
    }

    pub fn run(&self) -> common::Output {
        self.env
            .run_with_env(&["fetch", "--all"], &[("POPSYNC_NOW", NOW)])
    }

    /// What the POP3 server still holds (LF line ends).
    pub fn left_on_pop3(&self) -> Vec<Vec<u8>> {
        self.pop.server_messages()
    }

    /// More mail arrives on the POP3 server.
    pub fn deliver(&mut self, m: Vec<u8>) {
        self.pop.deliver(&m);
        self.sent.push(m);
    }
}

pub fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

pub fn crlf_all(v: &[Vec<u8>]) -> Vec<Vec<u8>> {
    v.iter().map(|m| imap::lf_to_crlf(m)).collect()
}

pub fn explain(out: &common::Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// A POP3 account with `count` messages delivering into the scripted
/// server's `mailbox`.
pub fn fault_case(
    dovecot: &imap::ImapDovecot,
    name: &str,
    srv: &FaultServer,
    count: usize,
    size: usize,
    mailbox: &str,
    extra: &str,
) -> Case {
    let messages: Vec<Vec<u8>> = (1..=count).map(|i| message(name, i, size)).collect();
    Case::new(
        dovecot,
        name,
        messages,
        &imap::Target::fault_server(srv, mailbox),
        extra,
    )
}

/// A POP3 account holding `messages` delivering into the scripted
/// server's INBOX, deleting what it delivered (`retention = "0d"`).
pub fn in_fault_server_inbox(
    dovecot: &imap::ImapDovecot,
    name: &str,
    messages: Vec<Vec<u8>>,
    srv: &FaultServer,
) -> Case {
    Case::new(
        dovecot,
        name,
        messages,
        &imap::Target::fault_server(srv, "INBOX"),
        "retention = \"0d\"\n",
    )
}

pub fn bodies(srv: &FaultServer, mailbox: &str) -> Vec<Vec<u8>> {
    srv.messages(mailbox).into_iter().map(|m| m.bytes).collect()
}

/// After a failed run: the clean run delivers every message exactly once
/// and (retention 0d) leaves nothing on the POP3 server.
pub fn assert_clean_run_delivers_each_once(case: &Case, srv: &FaultServer, mailbox: &str) {
    srv.clear_faults();
    srv.release();
    assert!(
        srv.wait_idle(Duration::from_secs(10)),
        "the scripted server stayed busy"
    );
    let out = case.run();
    assert_eq!(out.code, 0, "the clean run failed\n{}", explain(&out));
    imap::assert_each_exactly_once(&bodies(srv, mailbox), &case.sent, "after the clean run");
    let got: Vec<Vec<u8>> = bodies(srv, mailbox)
        .iter()
        .map(|m| without_popsync_received(m))
        .collect();
    assert_same_bytes(&got, &crlf_all(&case.sent));
    assert!(
        case.left_on_pop3().is_empty(),
        "{} messages left on the POP3 server",
        case.left_on_pop3().len()
    );
}

/// The message without the `Received:` header popsync put first, if it did.
pub fn without_popsync_received(m: &[u8]) -> Vec<u8> {
    if m.starts_with(b"Received: from 127.0.0.1 ") {
        let (header, rest) = imap::split_popsync_received(m);
        if header.contains("id <popsync") {
            return rest;
        }
    }
    m.to_vec()
}

/// The same messages byte for byte (in any order); names the first
/// difference instead of dumping megabytes.
pub fn assert_same_bytes(got: &[Vec<u8>], want: &[Vec<u8>]) {
    let (got, want) = (sorted(got.to_vec()), sorted(want.to_vec()));
    if got == want {
        return;
    }
    let preview = |m: &Vec<u8>| String::from_utf8_lossy(&m[..m.len().min(300)]).into_owned();
    let missing: Vec<String> = want
        .iter()
        .filter(|m| !got.contains(m))
        .map(preview)
        .collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|m| !want.contains(m))
        .map(preview)
        .collect();
    panic!(
        "the mailbox does not hold the POP3 messages byte for byte (CRLF): {} vs {} messages;\n\
         expected but missing: {missing:#?}\nthere but not expected: {extra:#?}",
        got.len(),
        want.len()
    );
}

/// The refused message is still on the POP3 server and not in the mailbox.
pub fn assert_kept_on_pop3(case: &Case, srv: &FaultServer, which: usize) {
    let id = imap::message_id(&case.sent[which]).unwrap();
    assert!(
        case.left_on_pop3()
            .iter()
            .any(|m| imap::message_id(m).as_deref() == Some(id.as_str())),
        "{id} was deleted from the POP3 server although it was not delivered"
    );
    assert!(
        !bodies(srv, "INBOX")
            .iter()
            .any(|m| imap::message_id(m).as_deref() == Some(id.as_str())),
        "{id} is in the mailbox although its APPEND was refused"
    );
}
