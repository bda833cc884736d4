//! `probe` for an IMAP target: the TLS the server speaks, what its greeting
//! offers, and with `--login` whether the login works, whether the mailbox
//! exists, and what the server offers for APPEND (MULTIAPPEND, LITERAL+,
//! UIDPLUS, APPENDLIMIT). Changes nothing: the mailbox is only EXAMINEd,
//! never created.

use std::time::Duration;

use serde::Serialize;

use super::ImapError;
use super::client::Caps;
use super::login::Greeted;
use crate::config::ImapSpec;
use crate::sanitize::sanitize;

/// What `probe` found out about an IMAP target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImapReport {
    pub server: String,
    pub mailbox: String,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub capabilities: Vec<String>,
    pub login: Option<String>,
    pub mailbox_state: Option<String>,
    pub multiappend: Option<bool>,
    pub literal_plus: Option<bool>,
    pub uidplus: Option<bool>,
    pub append_limit: Option<u64>,
}

/// Probe the target; `password` is asked for only with `login`.
pub async fn probe(
    spec: &ImapSpec,
    login: bool,
    password: impl FnOnce() -> Result<String, ImapError>,
    timeout: Duration,
    report: &mut ImapReport,
) -> Result<(), ImapError> {
    report.server = spec.server();
    report.mailbox = spec.mailbox.clone();
    let greeted = Greeted::connect(spec, timeout).await?;
    if let Some(info) = greeted.tls_info() {
        report.tls_version = Some(info.version);
        report.tls_cipher = Some(info.cipher);
    }
    report.capabilities = greeted
        .offered
        .iter()
        .map(|c| sanitize(c.as_bytes(), 60))
        .collect();
    if !login {
        return Ok(());
    }
    let mut conn = match greeted.login(spec, &password()?, timeout).await {
        Ok(c) => c,
        Err(e) => {
            report.login = Some("failed".into());
            return Err(e);
        }
    };
    report.login = Some("ok".into());
    let Caps {
        multiappend,
        literal_plus,
        uidplus,
        appendlimit,
        ..
    } = conn.caps;
    report.multiappend = Some(multiappend);
    report.literal_plus = Some(literal_plus);
    report.uidplus = Some(uidplus);
    report.append_limit = appendlimit;
    let examined = conn.examine(&spec.mailbox, false).await;
    report.mailbox_state = Some(match &examined {
        Ok(s) => format!(
            "exists (UIDVALIDITY {}, UIDNEXT {})",
            s.uidvalidity, s.uidnext
        ),
        Err(ImapError::MailboxMissing { text, .. }) if spec.create => {
            format!("missing ({text}); popsync will create it (create = true)")
        }
        Err(ImapError::MailboxMissing { text, .. }) => format!("missing ({text})"),
        Err(e) => format!("unknown: {e}"),
    });
    conn.logout().await;
    match examined {
        Err(ImapError::MailboxMissing { .. }) if spec.create => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

impl ImapReport {
    /// The lines `probe` prints for the target, with `line(key, value)`.
    pub fn lines(&self, mut line: impl FnMut(&str, &str)) {
        line(
            "imap target:",
            &format!("{} mailbox {:?}", self.server, self.mailbox),
        );
        if let (Some(v), Some(c)) = (&self.tls_version, &self.tls_cipher) {
            line("imap tls:", &format!("{v}, {c}"));
        }
        if !self.capabilities.is_empty() {
            line("imap capa:", &self.capabilities.join(" "));
        }
        if let Some(l) = &self.login {
            line("imap login:", l);
        }
        if let Some(m) = &self.mailbox_state {
            line("imap mailbox:", m);
        }
        let yes = |b: Option<bool>| b.map(|b| if b { "yes" } else { "no" });
        if let (Some(m), Some(l), Some(u)) = (
            yes(self.multiappend),
            yes(self.literal_plus),
            yes(self.uidplus),
        ) {
            line(
                "imap append:",
                &format!(
                    "MULTIAPPEND {m}, LITERAL+ {l}, UIDPLUS {u}, APPENDLIMIT {}",
                    self.append_limit
                        .map_or("none".to_owned(), |n| format!("{n} bytes"))
                ),
            );
        }
    }
}
