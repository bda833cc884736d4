//! One logged-in IMAP connection to the target server (getting there is
//! `login`'s), through async-imap (its parser is imap-proto's): what the
//! server offers for APPEND, EXAMINE (or CREATE) the mailbox, APPEND spooled
//! messages with MULTIAPPEND and LITERAL+ where offered, UID SEARCH for
//! recovery. Every wait is bounded by the account's timeout.

use std::future::Future;
use std::time::Duration;

use async_imap::Session;
use async_imap::types::Capability;
use imap_proto::rfc4315::UidSetMember;
use imap_proto::{Response, ResponseCode, Status};
use tokio::io::AsyncWriteExt;

use super::ImapError;
use super::login::Greeted;
use super::spool::Spooled;
use crate::config::ImapSpec;
use crate::net::Transport;

/// The slowest a literal may be sent, on top of the timeout: 1 KiB/s.
const MIN_RATE: u64 = 1024;

/// What the server offers for APPEND (RFC 3502, 7888, 4315, 7889).
#[derive(Debug, Default, Clone, Copy)]
pub struct Caps {
    pub multiappend: bool,
    pub literal_plus: bool,
    pub literal_minus: bool,
    pub uidplus: bool,
    pub appendlimit: Option<u64>,
}

/// A mailbox's UIDVALIDITY and UIDNEXT when it was examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxState {
    pub uidvalidity: u32,
    pub uidnext: u32,
}

/// A logged-in connection.
pub struct Conn {
    pub(super) session: Session<Transport>,
    pub(super) server: String,
    pub(super) timeout: Duration,
    pub caps: Caps,
}

/// Run `f` within `secs`, naming what timed out.
pub(super) async fn bounded<T>(
    server: &str,
    timeout: Duration,
    during: &str,
    f: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(ImapError::Timeout {
            server: server.to_owned(),
            during: during.to_owned(),
            secs: timeout.as_secs(),
        })
    })
}

/// An async-imap error, as what it means for the delivery.
pub(super) fn from_imap(server: &str, during: &str, e: async_imap::error::Error) -> ImapError {
    use async_imap::error::Error;
    match e {
        Error::Io(_) | Error::ConnectionLost => ImapError::Dropped {
            server: server.to_owned(),
            during: during.to_owned(),
        },
        other => ImapError::Protocol {
            server: server.to_owned(),
            during: during.to_owned(),
            text: other.to_string(),
        },
    }
}

/// The server's own words in an async-imap `No`/`Bad` error, which wraps
/// them in debug formatting (`code: .., info: Some("...")`).
pub(super) fn server_text(error: &str) -> String {
    let text = ["information: Some(\"", "info: Some(\""]
        .iter()
        .find_map(|start| {
            let from = error.find(start)? + start.len();
            let to = error.rfind("\")")?;
            (to >= from).then(|| error[from..to].replace("\\\"", "\"").replace("\\\\", "\\"))
        })
        .unwrap_or_else(|| error.to_owned());
    crate::sanitize::sanitize(text.as_bytes(), 200)
}

impl Conn {
    /// Connect, secure the connection as configured, and log in.
    pub async fn open(
        spec: &ImapSpec,
        password: &str,
        timeout: Duration,
    ) -> Result<Conn, ImapError> {
        Greeted::connect(spec, timeout)
            .await?
            .login(spec, password, timeout)
            .await
    }

    pub(super) async fn capabilities(&mut self) -> Result<Caps, ImapError> {
        let server = self.server.clone();
        let list = bounded(&server, self.timeout, "to CAPABILITY", async {
            self.session
                .capabilities()
                .await
                .map_err(|e| from_imap(&server, "at CAPABILITY", e))
        })
        .await?;
        let mut caps = Caps::default();
        for c in list.iter() {
            if let Capability::Atom(a) = c {
                let a = a.to_ascii_uppercase();
                match a.as_str() {
                    "MULTIAPPEND" => caps.multiappend = true,
                    "LITERAL+" => caps.literal_plus = true,
                    "LITERAL-" => caps.literal_minus = true,
                    "UIDPLUS" => caps.uidplus = true,
                    _ => {
                        if let Some(n) = a.strip_prefix("APPENDLIMIT=") {
                            caps.appendlimit = n.parse().ok();
                        }
                    }
                }
            }
        }
        Ok(caps)
    }

    /// EXAMINE the mailbox (creating it first when asked to and it is
    /// missing): its UIDVALIDITY and UIDNEXT.
    pub async fn examine(
        &mut self,
        mailbox: &str,
        create: bool,
    ) -> Result<MailboxState, ImapError> {
        let wire = wire_name(mailbox);
        match self.try_examine(mailbox, &wire).await {
            Err(ImapError::MailboxMissing { .. }) if create => {
                let server = self.server.clone();
                bounded(&server, self.timeout, "to CREATE", async {
                    self.session.create(&wire).await.map_err(|e| match e {
                        async_imap::error::Error::No(text) => ImapError::Refused {
                            server: server.clone(),
                            mailbox: mailbox.to_owned(),
                            text: format!("CREATE: {}", server_text(&text)),
                        },
                        e => from_imap(&server, "at CREATE", e),
                    })
                })
                .await?;
                self.try_examine(mailbox, &wire).await
            }
            other => other,
        }
    }

    /// EXAMINE `wire`, the server's name for `mailbox`.
    async fn try_examine(&mut self, mailbox: &str, wire: &str) -> Result<MailboxState, ImapError> {
        let server = self.server.clone();
        let m = bounded(&server, self.timeout, "to EXAMINE", async {
            self.session.examine(wire).await.map_err(|e| match e {
                // A mailbox that cannot be examined cannot take mail either.
                async_imap::error::Error::No(text) => ImapError::MailboxMissing {
                    server: server.clone(),
                    mailbox: mailbox.to_owned(),
                    text: server_text(&text),
                },
                e => from_imap(&server, "at EXAMINE", e),
            })
        })
        .await?;
        match (m.uid_validity, m.uid_next) {
            (Some(uidvalidity), Some(uidnext)) => Ok(MailboxState {
                uidvalidity,
                uidnext,
            }),
            _ => Err(ImapError::Protocol {
                server,
                during: "to EXAMINE".into(),
                text: "no UIDVALIDITY or UIDNEXT".into(),
            }),
        }
    }

    /// UID SEARCH in the examined mailbox.
    pub async fn search(&mut self, query: &str) -> Result<Vec<u32>, ImapError> {
        let server = self.server.clone();
        let found = bounded(&server, self.timeout, "to UID SEARCH", async {
            self.session
                .uid_search(query)
                .await
                .map_err(|e| from_imap(&server, "at UID SEARCH", e))
        })
        .await?;
        let mut uids: Vec<u32> = found.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// APPEND `messages` to `mailbox` in one command (MULTIAPPEND when there
    /// are several), streaming each from its spool file as a literal.
    /// Returns the APPENDUID (UIDVALIDITY and UIDs) when the server sent one.
    pub async fn append(
        &mut self,
        mailbox: &str,
        flags: &[String],
        messages: &mut [Spooled],
    ) -> Result<Option<(u32, Vec<u32>)>, ImapError> {
        if messages.is_empty() {
            return Ok(None);
        }
        let server = self.server.clone();
        let total: u64 = messages.iter().map(|m| m.crlf_size).sum();
        if let Some(limit) = self.caps.appendlimit
            && let Some(big) = messages.iter().find(|m| m.crlf_size > limit)
        {
            return Err(ImapError::TooBig {
                server,
                size: big.crlf_size,
                limit,
            });
        }
        let deadline = self.timeout + Duration::from_secs(total / MIN_RATE);
        let caps = self.caps;
        let session = &mut self.session;
        bounded(&server, deadline, "during APPEND", async {
            // Whatever the I/O error, the connection is gone.
            let lost = |_: std::io::Error| ImapError::dropped(&server, "during APPEND");
            let flag_list = format!("({})", flags.join(" "));
            let mut line = format!("APPEND {}", quote(&wire_name(mailbox)));
            let mut tag = None;
            for (i, m) in messages.iter_mut().enumerate() {
                // LITERAL- allows non-synchronising literals up to 4096 octets.
                let plus = caps.literal_plus || (caps.literal_minus && m.crlf_size <= 4096);
                line.push_str(&format!(
                    " {flag_list} {} {{{}{}}}",
                    m.internaldate,
                    m.crlf_size,
                    if plus { "+" } else { "" }
                ));
                if i == 0 {
                    tag = Some(
                        session
                            .run_command(&line)
                            .await
                            .map_err(|e| from_imap(&server, "during APPEND", e))?,
                    );
                } else {
                    line.push_str("\r\n");
                    session
                        .get_mut()
                        .write_all(line.as_bytes())
                        .await
                        .map_err(lost)?;
                    session.get_mut().flush().await.map_err(lost)?;
                }
                line.clear();
                if !plus {
                    wait_for_continuation(session, &server, mailbox).await?;
                }
                m.send_crlf(session.get_mut()).await.map_err(|e| match e {
                    super::spool::SendError::Read(source) => ImapError::Spool {
                        server: server.clone(),
                        source,
                    },
                    super::spool::SendError::Write(e) => lost(e),
                })?;
            }
            session.get_mut().write_all(b"\r\n").await.map_err(lost)?;
            session.get_mut().flush().await.map_err(lost)?;
            let Some(tag) = tag else {
                return Ok(None);
            };
            loop {
                let Some(resp) = session.read_response().await.map_err(lost)? else {
                    return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
                };
                if let Response::Done {
                    tag: t,
                    status,
                    outcome,
                } = resp.parsed()
                    && *t == tag
                {
                    return match status {
                        Status::Ok => Ok(match &outcome.code {
                            Some(ResponseCode::AppendUid(validity, set)) => {
                                Some((*validity, uids_of(set)))
                            }
                            _ => None,
                        }),
                        _ => Err(refusal(
                            &server,
                            mailbox,
                            status,
                            &outcome.code,
                            outcome.information.as_deref(),
                        )),
                    };
                }
            }
        })
        .await
    }

    /// LOGOUT, politely; the deliveries are already committed.
    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.session.logout()).await;
    }
}

/// The server's reply to a synchronising literal: `+` to go on, or a
/// tagged refusal (a mailbox that is missing, a message too big).
async fn wait_for_continuation(
    session: &mut Session<Transport>,
    server: &str,
    mailbox: &str,
) -> Result<(), ImapError> {
    loop {
        let resp = session
            .read_response()
            .await
            .ok()
            .flatten()
            .ok_or_else(|| ImapError::dropped(server, "during APPEND"))?;
        match resp.parsed() {
            Response::Continue(_) => return Ok(()),
            Response::Done {
                status, outcome, ..
            } => {
                return Err(refusal(
                    server,
                    mailbox,
                    status,
                    &outcome.code,
                    outcome.information.as_deref(),
                ));
            }
            // Untagged EXISTS and the like: not for us.
            _ => {}
        }
    }
}

/// A tagged NO or BAD to APPEND, as the delivery error it means.
fn refusal(
    server: &str,
    mailbox: &str,
    status: &Status,
    code: &Option<ResponseCode<'_>>,
    information: Option<&str>,
) -> ImapError {
    let text = crate::sanitize::sanitize(information.unwrap_or("").as_bytes(), 200);
    match (status, code) {
        (_, Some(ResponseCode::TryCreate)) => ImapError::MailboxMissing {
            server: server.to_owned(),
            mailbox: mailbox.to_owned(),
            text: format!("[TRYCREATE] {text}"),
        },
        (Status::No, _) => ImapError::Refused {
            server: server.to_owned(),
            mailbox: mailbox.to_owned(),
            text,
        },
        _ => ImapError::Protocol {
            server: server.to_owned(),
            during: "in reply to APPEND".into(),
            text: format!("{status:?} {text}"),
        },
    }
}

fn uids_of(set: &[UidSetMember]) -> Vec<u32> {
    let mut out = Vec::new();
    for m in set {
        match m {
            UidSetMember::Uid(u) => out.push(*u),
            UidSetMember::UidRange(r) => out.extend(r.clone()),
        }
    }
    out
}

/// An IMAP quoted string (RFC 9051 4.3); the config refuses CR, LF and NUL.
/// A mailbox name as the server knows it: modified UTF-7 (RFC 3501,
/// section 5.1.3). The config holds the name as the user reads it, so
/// "Entwürfe" goes out as "Entw&APw-rfe" and "&" as "&-".
pub fn wire_name(mailbox: &str) -> String {
    utf7_imap::encode_utf7_imap(mailbox.to_owned())
}

pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_words_are_taken_out_of_async_imaps_wrapping() {
        assert_eq!(
            server_text(
                r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text(
                r#"outcome: Outcome { code: None, information: Some("No \"such\" mailbox") }"#
            ),
            "No \"such\" mailbox"
        );
        assert_eq!(server_text("plain words"), "plain words");
    }

    /// The error a tagged reply to APPEND means, parsed as the client will.
    fn refusal_of(line: &[u8]) -> ImapError {
        let Ok((
            _,
            Response::Done {
                status, outcome, ..
            },
        )) = imap_proto::Response::parse(line)
        else {
            panic!("not a tagged reply: {line:?}");
        };
        refusal(
            "imap.example:993",
            "INBOX",
            &status,
            &outcome.code,
            outcome.information.as_deref(),
        )
    }

    #[test]
    fn append_refusals_keep_their_codes_and_exit_74_or_76() {
        for (line, exit, words) in [
            (
                &b"A1 NO [OVERQUOTA] Quota exceeded\r\n"[..],
                74,
                "[OVERQUOTA] Quota exceeded",
            ),
            (b"A1 NO [LIMIT] Too many\r\n", 74, "[LIMIT] Too many"),
            (b"A1 NO [TOOBIG] too big\r\n", 74, "[TOOBIG] too big"),
            (
                b"A1 NO [TRYCREATE] Mailbox doesn't exist\r\n",
                74,
                "create = true",
            ),
            (b"A1 BAD Invalid arguments\r\n", 76, "Invalid arguments"),
        ] {
            let e = refusal_of(line);
            assert_eq!(e.exit_code() as i32, exit, "{e}");
            let text = e.to_string();
            assert!(text.contains(words), "{text}");
            assert!(text.contains("imap.example:993"), "{text}");
        }
        assert!(matches!(
            refusal_of(b"A1 NO [TRYCREATE] x\r\n"),
            ImapError::MailboxMissing { .. }
        ));
    }

    #[test]
    fn mailbox_names_go_out_in_modified_utf7() {
        assert_eq!(wire_name("INBOX"), "INBOX");
        assert_eq!(wire_name("Archive/2026"), "Archive/2026");
        assert_eq!(wire_name("Entwürfe & Co"), "Entw&APw-rfe &- Co");
        assert_eq!(
            wire_name("Отправленные"),
            "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"
        );
    }

    #[test]
    fn mailbox_names_are_quoted() {
        assert_eq!(quote("INBOX"), "\"INBOX\"");
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
