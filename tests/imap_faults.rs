//! popsync's IMAP delivery target (issue 16, DESIGN.md "Delivery") against
//! the scripted IMAP server (`imap::fault`), with POP3 from the Dovecot of
//! this binary: each refusal (`NO [OVERQUOTA]`, `[LIMIT]`, `[TRYCREATE]`,
//! APPENDLIMIT), dropped connection and unanswered APPEND, with its exit
//! code and message, and the mail left on the POP3 server for the next
//! clean run, which delivers it once; UIDVALIDITY changes between runs; what
//! popsync sends (one connection per run, MULTIAPPEND and LITERAL+ when
//! offered).
//!
//! The `harness_` tests check the harness itself (the scripted server) with
//! imaplib and raw commands, without popsync.

mod common;
mod imap;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use imap::case::{
    Case, REACH, assert_clean_run_delivers_each_once, assert_kept_on_pop3, bodies, explain,
    fault_case, in_fault_server_inbox, message,
};
use imap::fault::{Fault, FaultServer, Point, Trigger};
use imap::{ReadArgs, require_imap_dovecot};

// --- the harness itself ------------------------------------------------------

#[test]
fn harness_fault_server_recognises_literal_markers() {
    use imap::fault::literal_at_end;
    assert_eq!(literal_at_end(b"a APPEND INBOX {12}"), Some((12, false)));
    assert_eq!(literal_at_end(b"a APPEND INBOX {12+}"), Some((12, true)));
    assert_eq!(literal_at_end(b"a NOOP"), None);
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

// --- the scripted server: refusals and drops ----------------------------------

/// The scripted server answers the first APPEND `NO <refusal>`: the run
/// exits 74 and its stderr says each of `says`, the mail stays on the POP3
/// server, and the next clean run delivers each message once.
fn refused_append_is_74(name: &str, messages: usize, refusal: &str, says: &[&str]) {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(1), Fault::No(refusal.into()));
    let case = fault_case(
        dovecot,
        name,
        &srv,
        messages,
        800,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    for words in says {
        assert!(
            out.stderr.contains(words),
            "stderr does not say {words:?}\n{}",
            explain(&out)
        );
    }
    assert_kept_on_pop3(&case, &srv, 0);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn overquota_on_append_is_74_and_the_message_waits_on_the_pop3_server() {
    refused_append_is_74(
        "quota",
        3,
        "[OVERQUOTA] Quota exceeded (mailbox for user is full)",
        &["Quota exceeded"],
    );
}

#[test]
fn limit_on_append_is_74_and_the_message_waits_on_the_pop3_server() {
    refused_append_is_74(
        "limit",
        3,
        "[LIMIT] Too many messages in this mailbox",
        &["Too many messages"],
    );
}

#[test]
fn message_over_appendlimit_is_74_and_stays_on_the_pop3_server() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().append_limit(4000).start();
    let messages = vec![
        message("alimit", 1, 800),
        message("alimit", 2, 20_000),
        message("alimit", 3, 800),
    ];
    let case = in_fault_server_inbox(dovecot, "alimit", messages, &srv);
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert!(out.stderr.contains("APPENDLIMIT"), "{}", explain(&out));
    assert_kept_on_pop3(&case, &srv, 1);
    srv.set_append_limit(None);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn missing_mailbox_is_74_without_create_and_created_with_create_true() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    let case = fault_case(
        dovecot,
        "mkbox",
        &srv,
        2,
        800,
        "Imported",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert!(out.stderr.contains("Imported"), "{}", explain(&out));
    assert!(out.stderr.contains("create = true"), "{}", explain(&out));
    assert!(!srv.mailbox_exists("Imported"));
    assert!(
        !srv.commands()
            .iter()
            .any(|c| c.to_ascii_uppercase().contains(" CREATE "))
    );
    assert_eq!(case.left_on_pop3().len(), 2);

    case.configure(
        dovecot,
        &imap::Target::fault_server(&srv, "Imported").with("create = true"),
        "retention = \"0d\"\n",
    );
    assert_clean_run_delivers_each_once(&case, &srv, "Imported");
}

#[test]
fn trycreate_in_reply_to_append_is_74_naming_the_mailbox_and_create_true() {
    refused_append_is_74(
        "trycreate",
        2,
        "[TRYCREATE] Mailbox doesn't exist: INBOX",
        &["INBOX", "create = true"],
    );
}

#[test]
fn connection_dropped_after_the_append_line_is_75() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(1), Fault::Drop);
    let case = fault_case(
        dovecot,
        "drop1",
        &srv,
        3,
        800,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", srv.port())),
        "stderr does not name the IMAP server\n{}",
        explain(&out)
    );
    assert_kept_on_pop3(&case, &srv, 0);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn connection_dropped_mid_literal_is_75_and_nothing_partial_is_stored() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(2), Fault::DropMidLiteral);
    let case = fault_case(
        dovecot,
        "drop2",
        &srv,
        3,
        30_000,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert_kept_on_pop3(&case, &srv, 1);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn connection_dropped_mid_literal_plus_is_75() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().literal_plus().start();
    srv.fault(Trigger::Append(1), Fault::DropMidLiteral);
    let case = fault_case(
        dovecot,
        "drop3",
        &srv,
        2,
        30_000,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert_kept_on_pop3(&case, &srv, 0);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn imap_login_failure_is_77_naming_the_imap_host_and_port_not_the_pop3_one() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    let messages: Vec<Vec<u8>> = (1..=2).map(|i| message("flogin", i, 500)).collect();
    let target = imap::Target::fault_server(&srv, "INBOX");
    let case = Case::new(
        dovecot,
        "flogin",
        messages,
        &target.clone().password("wrong"),
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 77, "{}", explain(&out));
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", srv.port())),
        "{}",
        explain(&out)
    );
    assert!(
        !out.stderr
            .contains(&format!("127.0.0.1:{}", dovecot.pop3s_port())),
        "{}",
        explain(&out)
    );
    assert_eq!(srv.appends_seen(), 0);
    assert_eq!(case.left_on_pop3().len(), 2);
    case.configure(dovecot, &target, "retention = \"0d\"\n");
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn uidvalidity_change_between_runs_appends_nothing_twice() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    // Retention forever: the first three stay on the POP3 server.
    let mut case = fault_case(dovecot, "uidv", &srv, 3, 800, "INBOX", "");
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    assert_eq!(srv.messages("INBOX").len(), 3);
    srv.change_uidvalidity("INBOX");
    case.deliver(message("uidv", 4, 800));
    case.deliver(message("uidv", 5, 800));
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    imap::assert_each_exactly_once(&bodies(&srv, "INBOX"), &case.sent, "after the second run");
    assert_eq!(case.left_on_pop3().len(), 5);
}

// --- what popsync sends ------------------------------------------------------

#[test]
fn one_connection_per_run_with_multiappend_and_literal_plus_when_offered() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().multiappend().literal_plus().start();
    let case = fault_case(
        dovecot,
        "multi",
        &srv,
        5,
        1500,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    assert_eq!(
        srv.connections(),
        1,
        "more than one IMAP connection in one run"
    );
    let appends: Vec<String> = srv
        .commands()
        .into_iter()
        .filter(|c| c.to_ascii_uppercase().contains(" APPEND "))
        .collect();
    assert_eq!(appends.len(), 1, "not one MULTIAPPEND: {appends:#?}");
    assert_eq!(appends[0].matches("+}").count(), 5, "{appends:#?}");
    let stored = srv.messages("INBOX");
    assert_eq!(stored.len(), 5);
    for m in &stored {
        assert!(
            m.flags.is_empty(),
            "flags {:?} without flags = [...]",
            m.flags
        );
        assert_eq!(
            m.internaldate
                .as_deref()
                .map(|d| d.contains("Jun-2025 10:")),
            Some(true),
            "INTERNALDATE {:?} is not the first Received: date",
            m.internaldate
        );
    }
    assert!(case.left_on_pop3().is_empty());
}

#[test]
fn without_literal_plus_or_multiappend_each_message_is_its_own_synchronising_append() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    let case = fault_case(dovecot, "single", &srv, 3, 1500, "INBOX", "");
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    assert_eq!(
        srv.connections(),
        1,
        "more than one IMAP connection in one run"
    );
    let appends: Vec<String> = srv
        .commands()
        .into_iter()
        .filter(|c| c.to_ascii_uppercase().contains(" APPEND "))
        .collect();
    assert_eq!(appends.len(), 3, "{appends:#?}");
    assert!(
        appends.iter().all(|a| !a.contains("+}")),
        "a non-synchronising literal to a server without LITERAL+: {appends:#?}"
    );
    imap::assert_each_exactly_once(&bodies(&srv, "INBOX"), &case.sent, "after one run");
    // A second run connects again and appends nothing.
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    assert_eq!(srv.appends_seen(), 3);
}

// --- refusals that do not hold back other messages, drops after the store ---

#[test]
fn a_message_over_appendlimit_does_not_hold_back_the_others_in_a_multiappend() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder()
        .multiappend()
        .literal_plus()
        .append_limit(4000)
        .start();
    let sent = vec![
        message("alm", 1, 800),
        message("alm", 2, 20_000),
        message("alm", 3, 800),
    ];
    let case = in_fault_server_inbox(dovecot, "alm", sent, &srv);
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert_kept_on_pop3(&case, &srv, 1);
    imap::assert_each_exactly_once(
        &bodies(&srv, "INBOX"),
        &[case.sent[0].clone(), case.sent[2].clone()],
        "the messages under APPENDLIMIT after the first run",
    );
    // And the next run (the big one still too big) duplicates nothing.
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert_eq!(srv.messages("INBOX").len(), 2);
}

#[test]
fn a_message_over_appendlimit_does_not_hold_back_the_next_ones_without_multiappend() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().append_limit(4000).start();
    let sent = vec![
        message("als", 1, 800),
        message("als", 2, 20_000),
        message("als", 3, 800),
    ];
    let case = in_fault_server_inbox(dovecot, "als", sent, &srv);
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert_kept_on_pop3(&case, &srv, 1);
    // A second run, as cron would start it.
    let again = case.run();
    assert_eq!(again.code, 74, "{}", explain(&again));
    imap::assert_each_exactly_once(
        &bodies(&srv, "INBOX"),
        &[case.sent[0].clone(), case.sent[2].clone()],
        &format!(
            "the messages under APPENDLIMIT after two runs (stderr of the first: {})",
            out.stderr.trim()
        ),
    );
}

#[test]
fn connection_dropped_after_the_server_stored_the_message_is_75_and_never_a_duplicate() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(2), Fault::DropBeforeOk);
    let case = fault_case(
        dovecot,
        "drop-ok",
        &srv,
        3,
        2000,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", srv.port())),
        "{}",
        explain(&out)
    );
    // Message 2 is on the IMAP server although popsync never heard so; it
    // must still be on the POP3 server (not confirmed) and never twice.
    let id = imap::message_id(&case.sent[1]).unwrap();
    assert!(
        case.left_on_pop3()
            .iter()
            .any(|m| imap::message_id(m).as_deref() == Some(id.as_str())),
        "{id} was deleted from the POP3 server although its APPEND was not confirmed"
    );
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn an_append_never_answered_times_out_with_75_and_is_never_a_duplicate() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    // Stored, but the tagged OK never comes (until the test ends the stall).
    srv.fault(Trigger::Append(1), Fault::Stall(Point::AfterLiteral));
    let case = fault_case(
        dovecot,
        "timeout",
        &srv,
        2,
        2000,
        "INBOX",
        "retention = \"0d\"\ntimeout = 3\n",
    );
    let started = std::time::Instant::now();
    let out = case.run();
    let took = started.elapsed();
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", srv.port())),
        "{}",
        explain(&out)
    );
    assert!(out.stderr.contains("timeout"), "{}", explain(&out));
    assert_eq!(case.left_on_pop3().len(), 2);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}
