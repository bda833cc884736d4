//! The AUTHORIZATION state (`Greeted`): the greeting, CAPA, STLS, UTF8 and
//! login by USER/PASS, APOP or SASL, each command waiting for its reply.
//! Its way out is `Transaction`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Connection, MAX_CAPA, Reply, SessionError, Settings, Transaction};
use crate::pop3::auth::{self, Mechanism};
use crate::pop3::codec::{Capabilities, Command, Status};

/// A connection in the AUTHORIZATION state.
///
/// Every command here changes the state or may (USER, PASS, APOP, AUTH and
/// its continuation lines, STLS, UTF8), so each one waits for its reply
/// before anything else is sent (RFC 2449 allows pipelining only in the
/// TRANSACTION state). Servers that hand a logged-in connection to another
/// process (Courier) drop whatever was sent behind the login, and others
/// (Cyrus) refuse it, which would misalign every reply after it.
pub struct Greeted<S> {
    pub conn: Connection<S>,
    /// The greeting text; holds the APOP timestamp when the server offers APOP.
    pub greeting: String,
    pub capa: Capabilities,
    /// UTF8 (RFC 6856) was asked for on this connection.
    utf8_asked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Greeted<S> {
    /// Read the server greeting, then ask its capabilities. Nothing is sent
    /// before the greeting has arrived: a server may discard input that
    /// comes before it.
    pub async fn start(mut conn: Connection<S>) -> Result<Greeted<S>, SessionError> {
        let reply = conn.expect_ok("greeting").await?;
        let mut g = Greeted::resume(conn, reply.text);
        g.refresh_capa().await?;
        Ok(g)
    }

    /// A greeted connection continued over a new stream (after STLS), its
    /// capabilities not yet asked.
    pub fn resume(conn: Connection<S>, greeting: String) -> Greeted<S> {
        Greeted {
            conn,
            greeting,
            capa: Capabilities::default(),
            utf8_asked: false,
        }
    }

    /// Ask CAPA again (after STLS and after login the answer can change).
    /// A server without CAPA (RFC 1939 only) has an empty capability list.
    pub async fn refresh_capa(&mut self) -> Result<(), SessionError> {
        self.capa = capa(&mut self.conn).await?;
        Ok(())
    }

    /// Send STLS and, on +OK, hand back the bare stream for the handshake.
    pub async fn stls(mut self) -> Result<(S, Settings), SessionError> {
        self.conn.simple(&Command::Stls).await?;
        self.conn.into_parts("STLS")
    }

    /// Log in with `mech` and enter the TRANSACTION state; a rejection is
    /// failed authentication (`probe --login` uses this; `fetch` tries
    /// mechanisms in turn with `authenticate`).
    pub async fn login(
        mut self,
        user: &str,
        password: &str,
        mech: Mechanism,
    ) -> Result<Transaction<S>, SessionError> {
        self.authenticate(user, password, mech).await?;
        self.into_transaction().await
    }

    /// Try one login mechanism. On a plain rejection the session stays in
    /// the AUTHORIZATION state, so another mechanism may be tried.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        mech: Mechanism,
    ) -> Result<(), SessionError> {
        self.utf8_if_offered().await?;
        match mech {
            Mechanism::User => {
                self.conn.send(&Command::User(user.to_owned())).await?;
                self.auth_reply(user, "USER").await?;
                self.conn.send(&Command::Pass(password.to_owned())).await?;
                self.auth_reply(user, "USER/PASS").await?;
            }
            Mechanism::Apop => {
                let digest = auth::apop_digest(&self.greeting, password).map_err(|source| {
                    SessionError::Auth {
                        server: self.conn.server.clone(),
                        source,
                    }
                })?;
                self.conn
                    .send(&Command::Apop {
                        user: user.to_owned(),
                        digest,
                    })
                    .await?;
                self.auth_reply(user, "APOP").await?;
            }
            Mechanism::Sasl(kind) => self.sasl(user, password, kind).await?,
        }
        Ok(())
    }

    /// After a successful `authenticate`: the TRANSACTION state. CAPA is
    /// asked again and awaited, and its answer alone decides about
    /// pipelining: some servers (Gmail) announce PIPELINING, TOP, UIDL only
    /// after login. `probe --login` uses this; a session that goes on to
    /// list the mailbox uses `into_listing_transaction`.
    pub async fn into_transaction(self) -> Result<Transaction<S>, SessionError> {
        self.enter_transaction(false).await
    }

    /// As `into_transaction`, with STAT, UIDL and LIST sent in the same
    /// write as the CAPA when the CAPA before login listed PIPELINING. RFC
    /// 2449 announces PIPELINING in both states and does not let it differ
    /// after login (section 6.6), so that the client may rely on the CAPA
    /// before login for it (section 5); the CAPA after login is still read
    /// first, and decides for everything after the listing. The caller
    /// must call `Transaction::listing` next, which reads their replies.
    pub async fn into_listing_transaction(self) -> Result<Transaction<S>, SessionError> {
        let early = self.capa.pipelining();
        self.enter_transaction(early).await
    }

    async fn enter_transaction(self, with_listing: bool) -> Result<Transaction<S>, SessionError> {
        let mut conn = self.conn;
        let asked = std::time::Instant::now();
        if with_listing {
            conn.send_many(&[
                Command::Capa,
                Command::Stat,
                Command::Uidl(None),
                Command::List(None),
            ])
            .await?;
        } else {
            conn.send(&Command::Capa).await?;
        }
        let capa = capa_reply(&mut conn, asked).await?;
        Ok(Transaction {
            conn,
            capa,
            marked: false,
            listing_sent: with_listing,
        })
    }

    /// RFC 6856: when the server offers UTF8, ask for it before logging in,
    /// so that it sends headers with raw UTF-8 as they are stored instead of
    /// rewriting them (Courier does). A refusal changes nothing: the session
    /// goes on as before. Asked once per connection.
    async fn utf8_if_offered(&mut self) -> Result<(), SessionError> {
        if self.utf8_asked || !self.capa.utf8() {
            return Ok(());
        }
        self.utf8_asked = true;
        self.conn.send(&Command::Utf8).await?;
        let reply = self.conn.read_status("UTF8").await?;
        if reply.status == Status::Continue {
            return Err(SessionError::Protocol {
                server: self.conn.server.clone(),
                command: "UTF8".into(),
                message: "unexpected \"+\" continuation".into(),
            });
        }
        Ok(())
    }

    async fn auth_reply(&mut self, user: &str, mechanism: &str) -> Result<Reply, SessionError> {
        let reply = self.conn.read_status(mechanism).await?;
        match reply.status {
            Status::Ok => Ok(reply),
            _ => Err(SessionError::AuthFailed {
                server: self.conn.server.clone(),
                user: user.to_owned(),
                mechanism: mechanism.to_owned(),
                code: reply.code,
                text: reply.text,
            }),
        }
    }

    async fn sasl(
        &mut self,
        user: &str,
        password: &str,
        kind: auth::Sasl,
    ) -> Result<(), SessionError> {
        let server = self.conn.server.clone();
        let wrap = |source| SessionError::Auth {
            server: server.clone(),
            source,
        };
        let mut client = auth::SaslClient::new(kind, user, password).map_err(&wrap)?;
        let name = kind.name();
        let initial = client.initial_response().map_err(&wrap)?;
        // RFC 5034: the whole command must fit in 255 octets, else send the
        // initial response after an empty challenge.
        let cmd = match initial {
            Some(ir) if 5 + name.len() + 1 + ir.len() + 2 <= 255 => Command::Auth {
                mechanism: name.to_owned(),
                initial_response: Some(ir),
            },
            Some(ir) => {
                client.defer_initial(ir);
                Command::Auth {
                    mechanism: name.to_owned(),
                    initial_response: None,
                }
            }
            None => Command::Auth {
                mechanism: name.to_owned(),
                initial_response: None,
            },
        };
        self.conn.send(&cmd).await?;
        let label = format!("AUTH {name}");
        loop {
            let reply = self.conn.read_status(&label).await?;
            match reply.status {
                Status::Ok => {
                    client.finish(&reply.text).map_err(&wrap)?;
                    return Ok(());
                }
                Status::Err => {
                    return Err(SessionError::AuthFailed {
                        server: self.conn.server.clone(),
                        user: user.to_owned(),
                        mechanism: label,
                        code: reply.code,
                        text: client.error_detail().unwrap_or(reply.text),
                    });
                }
                Status::Continue => {
                    let answer = client.step(&reply.text).map_err(&wrap)?;
                    self.conn.send(&Command::AuthResponse(answer)).await?;
                }
            }
        }
    }
}

async fn capa<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
) -> Result<Capabilities, SessionError> {
    let asked = std::time::Instant::now();
    conn.send(&Command::Capa).await?;
    capa_reply(conn, asked).await
}

/// The reply to a CAPA sent at `asked`, which is also a round-trip sample.
async fn capa_reply<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    asked: std::time::Instant,
) -> Result<Capabilities, SessionError> {
    let reply = conn.read_status("CAPA").await?;
    conn.note_rtt(asked.elapsed());
    capa_listing(conn, reply).await
}

async fn capa_listing<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    reply: Reply,
) -> Result<Capabilities, SessionError> {
    match reply.status {
        Status::Ok => Ok(Capabilities::parse(
            &conn
                .read_listing("CAPA", MAX_CAPA, "the most popsync reads of a CAPA")
                .await?,
        )),
        // RFC 1939-only servers answer -ERR: they simply have no extensions.
        _ => Ok(Capabilities::default()),
    }
}
