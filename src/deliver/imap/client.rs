//! One IMAP connection to the target server, through async-imap (its parser
//! is imap-proto's): connect with implicit TLS, STARTTLS or, when allowed,
//! in clear text; log in; EXAMINE (or CREATE) the mailbox; APPEND spooled
//! messages, with MULTIAPPEND and LITERAL+ where offered; UID SEARCH for
//! recovery. Every wait is bounded by the account's timeout.

use std::future::Future;
use std::time::Duration;

use async_imap::types::Capability;
use async_imap::{Client, Session};
use imap_proto::rfc4315::UidSetMember;
use imap_proto::{Response, ResponseCode, Status};
use tokio::io::AsyncWriteExt;

use super::ImapError;
use super::spool::Spooled;
use crate::config::{ImapAuth, ImapSpec, TlsMode};
use crate::net::{self, TlsSettings, Transport};

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
    session: Session<Transport>,
    server: String,
    timeout: Duration,
    pub caps: Caps,
}

/// Run `f` within `secs`, naming what timed out.
async fn bounded<T>(
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
fn from_imap(server: &str, during: &str, e: async_imap::error::Error) -> ImapError {
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
fn server_text(error: &str) -> String {
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

/// SASL PLAIN, XOAUTH2 or OAUTHBEARER: one initial response, sent when the
/// server asks with an empty challenge.
struct OneShot(Vec<u8>);

impl async_imap::Authenticator for &mut OneShot {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        // After the first answer the server only sends an error challenge;
        // answering it with nothing ends the exchange (RFC 7628 3.2.3).
        std::mem::take(&mut self.0)
    }
}

/// A connection secured as configured, not yet logged in.
pub struct Greeted {
    client: Client<Transport>,
    server: String,
    /// The capabilities the greeting listed (none after STARTTLS, where
    /// the greeting came in clear text).
    pub offered: Vec<String>,
}

impl Greeted {
    /// Connect and secure the connection: implicit TLS, STARTTLS (refusing
    /// to go on in clear text), or clear text where the config allows it.
    pub async fn connect(spec: &ImapSpec, timeout: Duration) -> Result<Greeted, ImapError> {
        let server = spec.server();
        let tls = match spec.tls {
            TlsMode::None => None,
            _ => Some(
                TlsSettings::new(
                    &spec.host,
                    spec.port,
                    spec.ca_file.as_deref(),
                    spec.tls_fingerprint,
                )
                .map_err(ImapError::Net)?,
            ),
        };
        let tcp = net::connect_tcp(&spec.host, spec.port, timeout)
            .await
            .map_err(ImapError::Net)?;
        let stream = match (&tls, spec.tls) {
            (Some(tls), TlsMode::Implicit) => {
                tls.handshake(tcp, timeout).await.map_err(ImapError::Net)?
            }
            (Some(tls), TlsMode::Starttls) => {
                let mut client = Client::new(Transport::Plain(tcp));
                let greeting = greeting(&server, timeout, &mut client).await?;
                let _ = greeting;
                bounded(&server, timeout, "to STARTTLS", async {
                    client
                        .run_command_and_check_ok("STARTTLS", None)
                        .await
                        .map_err(|e| match e {
                            async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                                ImapError::NoStarttls {
                                    server: server.clone(),
                                }
                            }
                            e => from_imap(&server, "at STARTTLS", e),
                        })
                })
                .await?;
                // What arrived after the STARTTLS reply in clear text is
                // dropped with the client (RFC 2595 3.1).
                let Transport::Plain(tcp) = client.into_inner() else {
                    return Err(ImapError::NoStarttls { server });
                };
                tls.handshake(tcp, timeout).await.map_err(ImapError::Net)?
            }
            _ => Transport::Plain(tcp),
        };
        let mut client = Client::new(stream);
        let offered = if spec.tls == TlsMode::Starttls {
            Vec::new()
        } else {
            greeting(&server, timeout, &mut client).await?
        };
        Ok(Greeted {
            client,
            server,
            offered,
        })
    }

    /// TLS version and cipher, when the connection has TLS.
    pub fn tls_info(&self) -> Option<net::TlsInfo> {
        self.client.get_ref().tls_info()
    }

    /// Log in; then ask what the server offers for APPEND.
    pub async fn login(
        self,
        spec: &ImapSpec,
        password: &str,
        timeout: Duration,
    ) -> Result<Conn, ImapError> {
        let session = login(
            spec,
            password,
            &self.server,
            timeout,
            self.client,
            &self.offered,
        )
        .await?;
        let mut conn = Conn {
            session,
            server: self.server,
            timeout,
            caps: Caps::default(),
        };
        conn.caps = conn.capabilities().await?;
        Ok(conn)
    }
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

    async fn capabilities(&mut self) -> Result<Caps, ImapError> {
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
        match self.try_examine(mailbox).await {
            Err(ImapError::MailboxMissing { .. }) if create => {
                let server = self.server.clone();
                bounded(&server, self.timeout, "to CREATE", async {
                    self.session.create(mailbox).await.map_err(|e| match e {
                        async_imap::error::Error::No(text) => ImapError::Refused {
                            server: server.clone(),
                            mailbox: mailbox.to_owned(),
                            text: format!("CREATE: {}", server_text(&text)),
                        },
                        e => from_imap(&server, "at CREATE", e),
                    })
                })
                .await?;
                self.try_examine(mailbox).await
            }
            other => other,
        }
    }

    async fn try_examine(&mut self, mailbox: &str) -> Result<MailboxState, ImapError> {
        let server = self.server.clone();
        let m = bounded(&server, self.timeout, "to EXAMINE", async {
            self.session.examine(mailbox).await.map_err(|e| match e {
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
            let mut line = format!("APPEND {}", quote(mailbox));
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

/// Read the greeting; returns the capabilities it lists, if any.
async fn greeting(
    server: &str,
    timeout: Duration,
    client: &mut Client<Transport>,
) -> Result<Vec<String>, ImapError> {
    bounded(server, timeout, "with a greeting", async {
        let resp = client
            .read_response()
            .await
            .ok()
            .flatten()
            .ok_or_else(|| ImapError::dropped(server, "before its greeting"))?;
        match resp.parsed() {
            Response::Data {
                status: Status::Ok,
                outcome,
            } => Ok(match &outcome.code {
                Some(ResponseCode::Capabilities(c)) => c.iter().map(cap_name).collect(),
                _ => Vec::new(),
            }),
            other => Err(ImapError::Protocol {
                server: server.to_owned(),
                during: "as its greeting".into(),
                text: crate::sanitize::sanitize(format!("{other:?}").as_bytes(), 200),
            }),
        }
    })
    .await
}

fn cap_name(c: &imap_proto::Capability<'_>) -> String {
    match c {
        imap_proto::Capability::Imap4rev1 => "IMAP4rev1".into(),
        imap_proto::Capability::Auth(a) => format!("AUTH={a}"),
        imap_proto::Capability::Atom(a) => a.to_string(),
    }
}

/// Log in with the first of the configured mechanisms (default: PLAIN when
/// the greeting offers it, else LOGIN).
async fn login(
    spec: &ImapSpec,
    password: &str,
    server: &str,
    timeout: Duration,
    client: Client<Transport>,
    offered: &[String],
) -> Result<Session<Transport>, ImapError> {
    let mech = match spec.auth.first() {
        Some(m) => *m,
        None if offered.iter().any(|c| c.eq_ignore_ascii_case("AUTH=PLAIN")) => ImapAuth::Plain,
        None => ImapAuth::Login,
    };
    let refused = |e: async_imap::error::Error| match e {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
            ImapError::Login {
                server: server.to_owned(),
                user: spec.user.clone(),
                text: server_text(&text),
            }
        }
        e => from_imap(server, "at login", e),
    };
    let user = &spec.user;
    let initial = match mech {
        ImapAuth::Login => None,
        ImapAuth::Plain => Some(("PLAIN", format!("\0{user}\0{password}"))),
        ImapAuth::Xoauth2 => Some((
            "XOAUTH2",
            format!("user={user}\x01auth=Bearer {password}\x01\x01"),
        )),
        ImapAuth::Oauthbearer => Some((
            "OAUTHBEARER",
            format!("n,a={user},\x01auth=Bearer {password}\x01\x01"),
        )),
    };
    bounded(server, timeout, "to the login", async {
        match initial {
            None => client
                .login(user, password)
                .await
                .map_err(|(e, _)| refused(e)),
            Some((name, response)) => {
                let mut auth = OneShot(response.into_bytes());
                client
                    .authenticate(name, &mut auth)
                    .await
                    .map_err(|(e, _)| refused(e))
            }
        }
    })
    .await
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
    fn mailbox_names_are_quoted() {
        assert_eq!(quote("INBOX"), "\"INBOX\"");
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
