//! popsync's IMAP delivery target (issue 16, DESIGN.md "Delivery") against
//! the real Dovecot of this binary (POP3 and IMAP on one server,
//! `imap::ImapDovecot::shared()`): the mailbox is read back with Python's
//! imaplib and compared byte for byte with the POP3 originals, with
//! INTERNALDATE and flags; STARTTLS, a missing mailbox, a failed login.
//!
//! The refusals and drops of the scripted IMAP server are in
//! `imap_faults.rs`, SIGKILL and the clean run after it in `imap_kill.rs`;
//! the pieces they share in `tests/imap/case.rs`.
//!
//! The `harness_` test checks the harness itself (Dovecot's IMAP) with
//! imaplib, without popsync.

mod common;
mod imap;

use imap::case::{Case, assert_same_bytes, crlf_all, explain, message, now_epoch};
use imap::{ReadArgs, require_imap_dovecot};

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

// --- Dovecot: byte-exact, INTERNALDATE, flags ---------------------------------

/// 23 messages that differ in the ways that matter, each with its expected
/// INTERNALDATE (seconds since the epoch).
fn varied_messages() -> Vec<(Vec<u8>, i64)> {
    let mut v = Vec::new();
    for i in 1..=12 {
        // common::sample_message: dot lines, "From " lines, UTF-8 body, a
        // 1200+ octet line; Received: Mon, 2 Jun 2025 10:ii:00 +0000.
        v.push((
            common::sample_message(i, i * 7),
            imap::epoch(2025, 6, 2, 10, i as i64, 0),
        ));
    }
    // Raw UTF-8 in headers; no Received:, so the Date: counts.
    v.push((
        "From: Jürgen Müller <jm@example.org>\nTo: Zoë <zoe@example.net>\n\
         Subject: Grüße aus Köln — 日本語のテスト\nDate: Tue, 3 Jun 2025 12:34:56 -0700\n\
         Message-ID: <utf8-header@example.org>\nContent-Type: text/plain; charset=utf-8\n\n\
         Straße, Ärger, ñ, 漢字.\n"
            .as_bytes()
            .to_vec(),
        imap::epoch(2025, 6, 3, 19, 34, 56),
    ));
    // Neither Received: nor Date:: the run's time (POPSYNC_NOW).
    v.push((
        b"From: nodate@example.org\nSubject: no date at all\nMessage-ID: <no-date@example.org>\n\n\
          No Received, no Date.\n"
            .to_vec(),
        now_epoch(),
    ));
    // Two Received: headers, the first with a ';' in a comment: the first
    // one's date, after its last ';'.
    v.push((
        b"Received: from a.example (b.example; helo=c) by d.example; Wed, 4 Jun 2025 01:02:03 +0000\n\
          Received: from older.example by a.example; Tue, 3 Jun 2025 01:02:03 +0000\n\
          Subject: two hops\nDate: Sun, 1 Jun 2025 00:00:00 +0000\n\
          Message-ID: <two-received@example.org>\n\nTwo hops.\n"
            .to_vec(),
        imap::epoch(2025, 6, 4, 1, 2, 3),
    ));
    // A Received: date with a zone offset and a trailing comment.
    v.push((
        b"Received: by mx.example.net; Thu, 5 Jun 2025 06:07:08 +0200 (CEST)\n\
          Subject: offset\nMessage-ID: <offset@example.org>\n\nOffset.\n"
            .to_vec(),
        imap::epoch(2025, 6, 5, 4, 7, 8),
    ));
    // About 2 MB, Date: only.
    let mut big = b"From: big@example.org\nSubject: two megabytes\n\
                    Date: Fri, 6 Jun 2025 00:00:01 +0000\nMessage-ID: <big@example.org>\n\n"
        .to_vec();
    let mut k = 0u64;
    while big.len() < 2_000_000 {
        if k.is_multiple_of(500) {
            big.extend_from_slice(b".\n..\n.a dot-stuffed line\n");
        }
        big.extend_from_slice(
            format!("{k:08} the quick brown fox jumps over the lazy dog 0123456789\n").as_bytes(),
        );
        k += 1;
    }
    v.push((big, imap::epoch(2025, 6, 6, 0, 0, 1)));
    // Nothing but dot lines in the body.
    v.push((
        b"Subject: dots\nDate: Sat, 7 Jun 2025 07:07:07 +0000\nMessage-ID: <dots@example.org>\n\n\
          .\n..\n...\n. \n.\t\n.x\n.\n"
            .to_vec(),
        imap::epoch(2025, 6, 7, 7, 7, 7),
    ));
    // 8-bit body that is not UTF-8 (Latin-1).
    let mut latin1 = b"Subject: latin-1\nDate: Sun, 8 Jun 2025 08:08:08 +0000\n\
                       Message-ID: <latin1@example.org>\nContent-Type: text/plain; charset=iso-8859-1\n\n"
        .to_vec();
    latin1.extend_from_slice(b"Caf\xe9, \xfcber, \xa9 2025\n");
    v.push((latin1, imap::epoch(2025, 6, 8, 8, 8, 8)));
    // Headers only, empty body.
    v.push((
        b"Subject: empty body\nDate: Mon, 9 Jun 2025 09:09:09 +0000\n\
          Message-ID: <empty-body@example.org>\n\n"
            .to_vec(),
        imap::epoch(2025, 6, 9, 9, 9, 9),
    ));
    // Long folded headers.
    let refs: Vec<String> = (0..60).map(|n| format!("<ref{n}@example.org>")).collect();
    v.push((
        format!(
            "Subject: a subject folded\n over three\n\tlines\nReferences: {}\n\
             Date: Tue, 10 Jun 2025 10:10:10 +0000\nMessage-ID: <folded@example.org>\n\n\
             Folded.\n",
            refs.join("\n ")
        )
        .into_bytes(),
        imap::epoch(2025, 6, 10, 10, 10, 10),
    ));
    // A "Received:" line in the body does not count.
    v.push((
        b"Subject: body received\nDate: Wed, 11 Jun 2025 11:11:11 +0000\n\
          Message-ID: <body-received@example.org>\n\n\
          Received: by fake; Thu, 1 Jan 2015 00:00:00 +0000\n"
            .to_vec(),
        imap::epoch(2025, 6, 11, 11, 11, 11),
    ));
    v
}

#[test]
fn dovecot_gets_every_message_byte_for_byte_with_its_own_date_and_no_flags() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("exact-imap", "imap-pw-1");
    let varied = varied_messages();
    assert!(varied.len() >= 20);
    let messages: Vec<Vec<u8>> = varied.iter().map(|(m, _)| m.clone()).collect();
    let case = Case::new(
        dovecot,
        "exact",
        messages.clone(),
        &dovecot.target(&target_user, "INBOX"),
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));

    let got = dovecot.read(&target_user, "INBOX");
    assert_same_bytes(&got.bodies(), &crlf_all(&messages));
    for (raw, want) in &varied {
        let id = imap::message_id(raw).expect("every test message has a Message-ID");
        let m = got
            .messages
            .iter()
            .find(|m| imap::message_id(&m.bytes).as_deref() == Some(id.as_str()))
            .expect("delivered");
        assert_eq!(
            m.internaldate,
            *want,
            "INTERNALDATE of {id}: got {} want {want} (difference {} s)",
            m.internaldate,
            m.internaldate - want
        );
        assert!(m.flags.is_empty(), "{id} has flags {:?}", m.flags);
    }
    assert!(
        case.left_on_pop3().is_empty(),
        "retention = \"0d\" left {} messages on the POP3 server",
        case.left_on_pop3().len()
    );
    let again = case.run();
    assert_eq!(again.code, 0, "{}", explain(&again));
    assert_eq!(
        dovecot.read(&target_user, "INBOX").messages.len(),
        messages.len()
    );
}

#[test]
fn dovecot_with_received_header_gets_popsyncs_header_first_then_the_original() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("rcvd-imap", "imap-pw-2");
    let messages: Vec<Vec<u8>> = (1..=6).map(|i| message("rcvd", i, 2000)).collect();
    let case = Case::new(
        dovecot,
        "rcvd",
        messages.clone(),
        &dovecot.target(&target_user, "INBOX"),
        "received_header = true\n",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let got = dovecot.read(&target_user, "INBOX");
    assert_eq!(got.messages.len(), messages.len());
    let mut rest = Vec::new();
    for m in &got.messages {
        let (header, original) = imap::split_popsync_received(&m.bytes);
        // Unfolded, the id clause reads ` id <popsync…>`.
        let unfolded = header.replace("\r\n\t", " ").replace("\r\n ", " ");
        assert!(
            unfolded.contains(" id <popsync"),
            "popsync's Received: header has no ` id <popsync…>`: {header:?}"
        );
        // The message's own first Received: (10:ii) dates it, not popsync's.
        let i: i64 = imap::message_id(&original)
            .and_then(|id| id.strip_prefix("<rcvd.")?.split('@').next()?.parse().ok())
            .expect("message number");
        assert_eq!(
            m.internaldate,
            imap::epoch(2025, 6, 2, 10, i, 0),
            "INTERNALDATE comes from popsync's own Received: header, not the message's"
        );
        rest.push(original);
    }
    assert_same_bytes(&rest, &crlf_all(&messages));
    // Retention "forever": all still on the POP3 server; a second run
    // appends nothing.
    assert_eq!(case.left_on_pop3().len(), messages.len());
    let again = case.run();
    assert_eq!(again.code, 0, "{}", explain(&again));
    assert_eq!(
        dovecot.read(&target_user, "INBOX").messages.len(),
        messages.len()
    );
}

#[test]
fn dovecot_flags_seen_marks_appended_mail_read() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("seen-imap", "imap-pw-3");
    let messages: Vec<Vec<u8>> = (1..=3).map(|i| message("seen", i, 500)).collect();
    let case = Case::new(
        dovecot,
        "seen",
        messages,
        &dovecot
            .target(&target_user, "INBOX")
            .with("flags = [\"\\\\Seen\"]"),
        "",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let got = dovecot.read(&target_user, "INBOX");
    assert_eq!(got.messages.len(), 3);
    for m in &got.messages {
        assert_eq!(m.flags, vec!["\\Seen".to_owned()]);
    }
}

#[test]
fn dovecot_over_starttls_works_too() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("stls-imap", "imap-pw-4");
    let messages: Vec<Vec<u8>> = (1..=3).map(|i| message("stls", i, 500)).collect();
    let mut target = dovecot.target(&target_user, "INBOX");
    target.tls = "starttls".into();
    target.port = dovecot.imap_port();
    let case = Case::new(dovecot, "stls", messages.clone(), &target, "");
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    assert_same_bytes(
        &dovecot.read(&target_user, "INBOX").bodies(),
        &crlf_all(&messages),
    );
}

#[test]
fn dovecot_missing_mailbox_is_74_naming_it_and_create_true_creates_it() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("create-imap", "imap-pw-5");
    let messages: Vec<Vec<u8>> = (1..=3).map(|i| message("create", i, 500)).collect();
    let target = dovecot.target(&target_user, "Imported");
    let case = Case::new(
        dovecot,
        "create",
        messages.clone(),
        &target,
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 74, "{}", explain(&out));
    assert!(out.stderr.contains("Imported"), "{}", explain(&out));
    assert!(out.stderr.contains("create = true"), "{}", explain(&out));
    assert!(
        !dovecot.read(&target_user, "Imported").exists,
        "the mailbox was created without create = true"
    );
    assert_eq!(case.left_on_pop3().len(), 3);

    case.configure(
        dovecot,
        &target.with("create = true"),
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let got = dovecot.read(&target_user, "Imported");
    assert!(got.exists);
    assert_same_bytes(&got.bodies(), &crlf_all(&messages));
    assert!(case.left_on_pop3().is_empty());
}

#[test]
fn dovecot_non_ascii_mailbox_name_goes_out_in_modified_utf7() {
    // The config names the mailbox as a mail program shows it; the server
    // knows it by its modified UTF-7 name (RFC 3501, section 5.1.3), which
    // is also Dovecot's folder name on disk.
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("utf7-imap", "imap-pw-9");
    let messages: Vec<Vec<u8>> = (1..=2).map(|i| message("utf7", i, 500)).collect();
    let target = dovecot
        .target(&target_user, "Entwürfe & Co")
        .with("create = true");
    let mut case = Case::new(
        dovecot,
        "utf7",
        messages.clone(),
        &target,
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let wire = "Entw&APw-rfe &- Co";
    assert_eq!(target_user.stored_count(wire), 2);
    assert_same_bytes(
        &dovecot.read(&target_user, wire).bodies(),
        &crlf_all(&messages),
    );
    // The next run finds the mailbox under the same name: one more message,
    // no second mailbox.
    let third = message("utf7", 3, 500);
    case.deliver(third.clone());
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let mut all = messages;
    all.push(third);
    assert_same_bytes(&dovecot.read(&target_user, wire).bodies(), &crlf_all(&all));
    let folders: Vec<String> = std::fs::read_dir(target_user.maildir())
        .expect("the user's Maildir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert_eq!(
        folders,
        [format!(".{wire}")],
        "one mailbox, by its encoded name"
    );
}

#[test]
fn dovecot_imap_login_failure_is_77_naming_the_imap_server() {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user("login-imap", "imap-pw-6");
    let messages: Vec<Vec<u8>> = (1..=2).map(|i| message("login", i, 500)).collect();
    let target = dovecot.target(&target_user, "INBOX");
    let case = Case::new(
        dovecot,
        "login",
        messages.clone(),
        &target.clone().password("wrong"),
        "retention = \"0d\"\n",
    );
    let out = case.run();
    assert_eq!(out.code, 77, "{}", explain(&out));
    let imap_server = format!("127.0.0.1:{}", dovecot.imaps_port());
    let pop_server = format!("127.0.0.1:{}", dovecot.pop3s_port());
    assert!(out.stderr.contains(&imap_server), "{}", explain(&out));
    assert!(!out.stderr.contains(&pop_server), "{}", explain(&out));
    assert_eq!(case.left_on_pop3().len(), 2);
    assert!(dovecot.read(&target_user, "INBOX").messages.is_empty());

    case.configure(dovecot, &target, "retention = \"0d\"\n");
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    imap::assert_each_exactly_once(
        &dovecot.read(&target_user, "INBOX").bodies(),
        &messages,
        "after the password was fixed",
    );
    assert!(case.left_on_pop3().is_empty());
}
