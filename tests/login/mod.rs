//! Helpers shared by `auth.rs` and `tls.rs`: the test password, accounts
//! on a Dovecot, what Dovecot's log says about logins, and checks that a
//! secret never shows (in the log, in a `-vv` trace, in any base64 form).
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::common::{Account, Dovecot, Output, TestEnv, User, sample_message};

/// A password with a space and shell/TOML-special characters; distinctive
/// enough to search for in logs.
pub const PASSWORD: &str = "Tr0ub4dor&3 horse'staple";

/// Puts `n` sample messages on the server for `user`; returns them.
pub fn deliver_samples(user: &User, n: usize) -> Vec<Vec<u8>> {
    (1..=n)
        .map(|i| {
            let m = sample_message(i, 2);
            user.deliver(&m);
            m
        })
        .collect()
}

/// A TestEnv with one account "acct" built by `account` (delivery into
/// DIR/mail/acct is added here).
pub fn env_with(account: Account) -> TestEnv {
    let env = TestEnv::new();
    let maildir = env.maildir("acct");
    env.write_accounts(&[account.maildir(&maildir).toml()]);
    env
}

/// The account's TOML with its `password = ...` line replaced by `source`
/// (e.g. `password_file = "..."`), so that exactly one secret source is set.
pub fn with_secret_source(account: &Account, source: &str) -> String {
    let mut out = String::new();
    for line in account.toml().lines() {
        if line.starts_with("password = ") {
            out.push_str(source);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The `method=` of every successful login in Dovecot's log.
pub fn dovecot_logins(dovecot: &Dovecot) -> Vec<String> {
    dovecot
        .log()
        .lines()
        .filter(|l| l.contains(": Login: "))
        .filter_map(|l| {
            let rest = &l[l.find("method=")? + "method=".len()..];
            Some(rest.split(',').next()?.to_owned())
        })
        .collect()
}

/// The `method=` of every successful login of user `name`.
pub fn dovecot_logins_of(dovecot: &Dovecot, name: &str) -> Vec<String> {
    let tag = format!("user=<{name}>");
    dovecot
        .log()
        .lines()
        .filter(|l| l.contains(": Login: ") && l.contains(&tag))
        .filter_map(|l| {
            let rest = &l[l.find("method=")? + "method=".len()..];
            Some(rest.split(',').next()?.to_owned())
        })
        .collect()
}

/// Lines of Dovecot's log showing a login attempt as user `name` (a login,
/// a failed one, a password check), whatever the outcome.
pub fn dovecot_auth_attempts_of(dovecot: &Dovecot, name: &str) -> Vec<String> {
    let tag = format!("user=<{name}>");
    let auth_tag = format!("({name},");
    dovecot
        .log()
        .lines()
        .filter(|l| (l.contains(&tag) || l.contains(&auth_tag)) && !l.contains("no auth attempts"))
        .map(str::to_owned)
        .collect()
}

/// Lines of Dovecot's log showing that a client tried to log in (a login,
/// a failed one, a password check), whatever the outcome.
pub fn dovecot_auth_attempts(dovecot: &Dovecot) -> Vec<String> {
    dovecot
        .log()
        .lines()
        .filter(|l| {
            l.contains(": Login: ")
                || l.contains("auth failed")
                || l.contains("Password mismatch")
                || l.contains("illegal chars")
                || l.contains("unknown user")
                || l.contains("Aborted login (auth attempts")
                || (l.contains("auth: ") && l.contains("(alice,"))
        })
        .map(str::to_owned)
        .collect()
}

#[track_caller]
pub fn assert_no_auth_attempt(dovecot: &Dovecot, out: &Output) {
    let attempts = dovecot_auth_attempts(dovecot);
    assert!(
        attempts.is_empty(),
        "the server must not have seen a login attempt; Dovecot logged:\n{}\n\
         popsync stderr:\n{}",
        attempts.join("\n"),
        out.stderr
    );
}

/// Strings that appear in any base64 text that carries `secret`: for each
/// of the three alignments, the part of the encoding that depends on the
/// secret alone.
pub fn base64_forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![B64.encode(secret)];
    for pad in 0..3usize {
        let mut data = vec![b'\0'; pad];
        data.extend_from_slice(secret);
        let enc = B64.encode(&data);
        // Skip the characters mixed with the padding in front, and the last
        // group, which depends on what follows the secret.
        let start = if pad == 0 { 0 } else { 4 };
        let end = enc.len().saturating_sub(4);
        if end > start + 4 {
            forms.push(enc[start..end].to_owned());
        }
    }
    forms
}

/// The stderr of a `-vv` run must not show the password, in clear or in
/// base64, and every client line of the dialogue must be a command with its
/// secrets redacted.
#[track_caller]
pub fn assert_no_secret_in_trace(stderr: &str, password: &str, what: &str) {
    assert!(
        !stderr.contains(password),
        "{what}: -vv shows the password:\n{stderr}"
    );
    for form in base64_forms(password.as_bytes()) {
        assert!(
            !stderr.contains(&form),
            "{what}: -vv shows the password in base64 ({form}):\n{stderr}"
        );
    }
    const VERBS: [&str; 15] = [
        "CAPA", "STLS", "USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "UIDL", "RETR", "TOP",
        "DELE", "RSET", "NOOP", "QUIT",
    ];
    for line in stderr.lines() {
        let Some(sent) = line.split_once("C: ").map(|(_, s)| s) else {
            continue;
        };
        let words: Vec<&str> = sent.split(' ').collect();
        let ok = match words[0] {
            "PASS" => sent == "PASS <redacted>",
            "APOP" => words.len() == 3 && words[2] == "<redacted>",
            // AUTH MECH, or AUTH MECH <redacted>
            "AUTH" => words.len() == 2 || (words.len() == 3 && words[2] == "<redacted>"),
            verb if VERBS.contains(&verb) => true,
            // A SASL answer: redacted, or the empty answer.
            _ => sent == "<redacted>" || sent.is_empty(),
        };
        assert!(ok, "{what}: -vv shows a secret in {line:?}:\n{stderr}");
    }
}
