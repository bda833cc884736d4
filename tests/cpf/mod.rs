//! Helpers shared by `check_peek.rs` and `filter.rs`: messages with the
//! headers `check`, `peek` and a filter look at, a `TestEnv` with accounts on
//! a Dovecot, runs against the fault server, and readers of popsync's
//! output (JSON lines, plan lines, the seen-store).
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use crate::common::{Account, Dovecot, Output, TestEnv, User, maildir_files, toml_string};
use crate::fault::FaultServer;

/// A message with LF line ends: Return-Path `<sender>`, the given From and
/// Subject (raw header values), `body_lines` numbered body lines.
pub fn mail(i: usize, sender: &str, from: &str, subject: &str, body_lines: usize) -> Vec<u8> {
    let mut m = format!(
        "Return-Path: <{sender}>\n\
         From: {from}\n\
         To: Alice <alice@example.net>\n\
         Subject: {subject}\n\
         Date: Mon, 2 Jun 2025 10:{min:02}:00 +0000\n\
         Message-ID: <{i}.check-peek-filter@example.org>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n",
        min = i % 60
    );
    for k in 1..=body_lines {
        m.push_str(&format!("Body line {k} of message {i}\n"));
    }
    m.into_bytes()
}

/// An ordinary message `i` from `sender{i}@example.org`.
pub fn plain(i: usize, subject: &str) -> Vec<u8> {
    mail(
        i,
        &format!("sender{i}@example.org"),
        &format!("Sender {i} <sender{i}@example.org>"),
        subject,
        3,
    )
}

/// A message of at least `size` octets (LF line ends).
pub fn big(i: usize, subject: &str, size: usize) -> Vec<u8> {
    let mut m = plain(i, subject);
    let mut k = 0;
    while m.len() < size {
        k += 1;
        m.extend_from_slice(
            format!("Filler line {k:06} of a big message: lorem ipsum dolor sit amet.\n")
                .as_bytes(),
        );
    }
    m
}

/// What POP3 LIST reports for a message kept with LF line ends: its size
/// with CRLF line ends (Dovecot and the scripted server agree).
pub fn wire_size(m: &[u8]) -> u64 {
    (m.len() + m.iter().filter(|&&b| b == b'\n').count()) as u64
}

/// A TestEnv with one account per (name, user, extra lines) on `dovecot`,
/// each delivering into DIR/mail/NAME over POP3S.
pub fn dovecot_env(dovecot: &Dovecot, accounts: &[(&str, &User, &str)]) -> TestEnv {
    let env = TestEnv::new();
    let blocks: Vec<String> = accounts
        .iter()
        .map(|(name, user, extra)| {
            Account::new(name, dovecot, user)
                .maildir(&env.maildir(name))
                .extra(extra)
                .toml()
        })
        .collect();
    env.write_accounts(&blocks);
    env
}

/// A user alice (password "secret") on `dovecot` with `mail` delivered in
/// that order, and a `TestEnv` with one account `alice` for her
/// (`dovecot_env`, with `extra` lines).
pub fn alice_with<M: AsRef<[u8]>>(
    dovecot: &Dovecot,
    mail: impl IntoIterator<Item = M>,
    extra: &str,
) -> (User, TestEnv) {
    let alice = dovecot.add_user("alice", "secret");
    for m in mail {
        alice.deliver(m.as_ref());
    }
    let env = dovecot_env(dovecot, &[("alice", &alice, extra)]);
    (alice, env)
}

/// `filter = "COMMAND"` as a config line.
pub fn filter_line(command: &str) -> String {
    format!("filter = {}", toml_string(command))
}

/// (name, bytes) of every file of a Maildir.
pub fn snapshot(maildir: &Path) -> Vec<(String, Vec<u8>)> {
    maildir_files(maildir)
        .into_iter()
        .map(|f| (f.name, f.bytes))
        .collect()
}

/// `seen list ACCOUNT --json`, one object per row.
pub fn seen_rows(env: &TestEnv, account: &str) -> Vec<serde_json::Value> {
    let out = env.run(&["seen", "list", account, "--json"]);
    out.assert_code(0);
    json_lines(&out)
}

/// stdout parsed as JSON Lines.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}\nstderr:\n{}", out.stderr))
        })
        .collect()
}

/// The `--json` report of the only account.
pub fn report(out: &Output) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", out.stderr))
}

/// Lines of a log file a filter appends to (empty when it does not exist).
pub fn log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A plan line `ACTION UIDL SIZE REASON`, split.
pub fn plan_lines(out: &Output) -> Vec<(String, String, u64, String)> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let action = p.next().unwrap_or_default().to_owned();
            let uidl = p.next().unwrap_or_default().to_owned();
            let size = p
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("plan line without SIZE: {l:?}"));
            (action, uidl, size, p.next().unwrap_or_default().to_owned())
        })
        .collect()
}

/// `popsync ARGS` against the scripted server `srv` (account `test`,
/// timeout 5 s, plus `extra`; `TestEnv::fault_config`), with
/// `POPSYNC_NOW=now` when given.
pub fn run_fault(
    env: &TestEnv,
    srv: &FaultServer,
    extra: &str,
    args: &[&str],
    now: Option<&str>,
) -> Output {
    env.run_fault(srv, 5, extra, args, now)
}

/// The default CAPA of the scripted server plus `more`.
pub fn capa_with(more: &[&'static str]) -> Vec<&'static str> {
    let mut capa = vec!["USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES"];
    capa.extend_from_slice(more);
    capa
}

/// Is there a raw control character (C0 but LF, DEL, C1) or a bidi
/// override/isolate in `s`?
pub fn raw_control(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(u32::from(c), 0x200b..=0x200f | 0x202a..=0x202e | 0x2066..=0x2069)
    })
}

/// `n` ordinary messages.
pub fn small_mail(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| plain(i, &format!("message {i}"))).collect()
}
