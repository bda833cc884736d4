//! Getting logged in to the IMAP target: connect with implicit TLS,
//! STARTTLS (refusing to go on in clear text) or, where the config allows
//! it, clear text; read the greeting and the capabilities it lists; log in
//! with PLAIN, LOGIN, XOAUTH2 or OAUTHBEARER.

use std::time::Duration;

use async_imap::{Client, Session};
use imap_proto::{Response, ResponseCode, Status};

use super::ImapError;
use super::client::{Caps, Conn, bounded, from_imap, server_text};
use crate::config::{ImapAuth, ImapSpec, TlsMode};
use crate::net::{self, TlsSettings, Transport};

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
        let tcp = net::connect(&spec.host, spec.port, timeout, spec.proxy.as_ref())
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
