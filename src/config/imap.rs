//! `deliver = { imap = {...} }`: the settings of an IMAP mailbox that popsync
//! APPENDs to, checked as the account's own settings are, so that an error
//! names the file, the line and the key.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Fingerprint, SecretSource, TlsMode};

/// How popsync logs in to the IMAP server (`auth` in the imap table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ImapAuth {
    /// AUTHENTICATE PLAIN (RFC 4616).
    #[serde(rename = "plain")]
    Plain,
    /// The LOGIN command (RFC 9051 6.2.3).
    #[serde(rename = "login")]
    Login,
    /// AUTHENTICATE XOAUTH2; the secret is the access token.
    #[serde(rename = "xoauth2")]
    Xoauth2,
    /// AUTHENTICATE OAUTHBEARER (RFC 7628); the secret is the access token.
    #[serde(rename = "oauthbearer")]
    Oauthbearer,
}

impl ImapAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ImapAuth::Plain => "plain",
            ImapAuth::Login => "login",
            ImapAuth::Xoauth2 => "xoauth2",
            ImapAuth::Oauthbearer => "oauthbearer",
        }
    }
}

/// An IMAP mailbox to deliver into, every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapSpec {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub tls_fingerprint: Option<Fingerprint>,
    pub user: String,
    pub secret: SecretSource,
    /// Mechanisms to try, in order; empty: PLAIN where offered, else LOGIN.
    pub auth: Vec<ImapAuth>,
    pub mailbox: String,
    /// Flags set on every appended message (none: it arrives unread).
    pub flags: Vec<String>,
    /// Create `mailbox` when it is missing instead of failing.
    pub create: bool,
    /// The account's SOCKS5 proxy: every connection of the account goes
    /// through it, this one too.
    pub proxy: Option<super::Proxy>,
}

impl ImapSpec {
    /// `host:port`, as errors name the server.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The imap table as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImap {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<TlsMode>,
    pub(super) ca_file: Option<String>,
    pub(super) tls_fingerprint: Option<Fingerprint>,
    pub(super) user: String,
    pub(super) password: Option<String>,
    pub(super) password_command: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) auth: Option<Vec<ImapAuth>>,
    pub(super) mailbox: Option<String>,
    pub(super) flags: Option<Vec<String>>,
    pub(super) create: Option<bool>,
    pub(super) allow_plaintext: Option<bool>,
}

/// The default IMAP port for a TLS mode (RFC 8314: 993 with implicit TLS).
fn default_port(tls: TlsMode) -> u16 {
    match tls {
        TlsMode::Implicit => 993,
        TlsMode::Starttls | TlsMode::None => 143,
    }
}

/// What is wrong with an imap table: the key (under `deliver.imap`) and why.
pub(super) type Invalid = (&'static str, String);

impl RawImap {
    /// Check and resolve the table; `expand` expands `~` and `$VARS` in a
    /// path (for the key named).
    pub(super) fn resolve(
        &self,
        expand: impl Fn(&str, &'static str) -> Result<PathBuf, Invalid>,
    ) -> Result<ImapSpec, Invalid> {
        let bad = |key: &'static str, why: &str| Err((key, why.to_owned()));
        let no_controls = |s: &str| !s.contains(['\r', '\n', '\0']);
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return bad("host", "host must be a host name or address");
        }
        if self.user.is_empty() || !no_controls(&self.user) {
            return bad(
                "user",
                "user must not be empty or contain CR, LF or NUL characters",
            );
        }
        let tls = self.tls.unwrap_or(TlsMode::Implicit);
        if tls == TlsMode::None && self.allow_plaintext != Some(true) {
            return bad(
                "allow_plaintext",
                "the imap target has tls = \"none\", which sends the password in clear text; add allow_plaintext = true to its table to accept that, or use tls = \"implicit\" or \"starttls\"",
            );
        }
        let port = self.port.unwrap_or_else(|| default_port(tls));
        if port == 0 {
            return bad("port", "port 0 is not a valid port");
        }
        let secret = match (&self.password, &self.password_command, &self.password_file) {
            (Some(p), None, None) => SecretSource::Password(p.clone()),
            (None, Some(c), None) => SecretSource::Command(c.clone()),
            (None, None, Some(f)) => SecretSource::File(expand(f, "password_file")?),
            (None, None, None) => {
                return bad(
                    "password",
                    "the imap target needs password_command = \"...\", password_file = \"...\" or password = \"...\"",
                );
            }
            _ => {
                return bad(
                    "password",
                    "the imap target has more than one of password, password_command and password_file; keep one",
                );
            }
        };
        if self.auth.as_ref().is_some_and(Vec::is_empty) {
            return bad(
                "auth",
                "auth is an empty list; remove it to use PLAIN or LOGIN, whichever the server offers",
            );
        }
        let mailbox = self.mailbox.clone().unwrap_or_else(|| "INBOX".to_owned());
        if mailbox.is_empty() || !no_controls(&mailbox) {
            return bad(
                "mailbox",
                "mailbox must not be empty or contain CR, LF or NUL characters",
            );
        }
        let flags = self.flags.clone().unwrap_or_default();
        for f in &flags {
            // A flag is an atom, or a system flag: a backslash and an atom
            // (RFC 9051 section 9, flag).
            let atom = f.strip_prefix('\\').unwrap_or(f);
            let atom_ok = !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b));
            if !atom_ok || f.eq_ignore_ascii_case("\\Recent") {
                return Err((
                    "flags",
                    format!(
                        "{f:?} is not a flag popsync can set; use system flags such as \"\\\\Seen\" or \"\\\\Flagged\", or keywords without spaces or ()%*\"\\]"
                    ),
                ));
            }
        }
        let ca_file = match &self.ca_file {
            Some(p) => Some(expand(p, "ca_file")?),
            None => None,
        };
        Ok(ImapSpec {
            host: self.host.clone(),
            port,
            tls,
            ca_file,
            tls_fingerprint: self.tls_fingerprint,
            user: self.user.clone(),
            secret,
            auth: self.auth.clone().unwrap_or_default(),
            mailbox,
            flags,
            create: self.create.unwrap_or(false),
            // Set with the account's other settings (`resolve`).
            proxy: None,
        })
    }
}
