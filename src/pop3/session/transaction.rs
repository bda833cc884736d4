//! The TRANSACTION state (`Transaction`): the listing (STAT, UIDL, LIST),
//! RETR and TOP streamed under their bounds, DELE, RSET and QUIT. The
//! listing goes out with the CAPA after login when the CAPA before login
//! listed PIPELINING (`Greeted::into_listing_transaction`); everything
//! else is pipelined only when the CAPA after login lists it; `send_retr` and `send_top` send in one write what they are
//! given, and their callers (`sync::command_window`) decide how many.

use std::convert::Infallible;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{BodyError, Connection, LISTING_LINE, SessionError, retr_limit};
use crate::pop3::codec::{self, Capabilities, Command, Status};

/// One message as listed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub msg: u32,
    pub uidl: String,
    pub size: u64,
}

/// A logged-in session (TRANSACTION state).
pub struct Transaction<S> {
    pub conn: Connection<S>,
    pub capa: Capabilities,
    /// Messages are marked deleted (DELE since the last RSET).
    pub(super) marked: bool,
    /// STAT, UIDL and LIST went out with the CAPA after login
    /// (`Greeted::into_listing_transaction`); `listing` reads their replies.
    pub(super) listing_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transaction<S> {
    /// UIDL and LIST of the whole mailbox, joined by message number. STAT
    /// comes first: its count bounds the listings, so a server that lists
    /// more messages than it has (or lists for ever) is refused at once.
    pub async fn listing(&mut self) -> Result<Vec<Listed>, SessionError> {
        let server = self.conn.server.clone();
        let malformed = |command: &str| {
            let server = server.clone();
            let command = command.to_owned();
            move |source| SessionError::Malformed {
                server: server.clone(),
                command: command.clone(),
                source,
            }
        };
        // All three are on their way when they went out with the CAPA after
        // login, or go out now in one write with PIPELINING; without it one
        // command at a time (RFC 2449).
        let sent = std::mem::take(&mut self.listing_sent);
        let all_sent = sent || self.capa.pipelining();
        if !sent {
            if all_sent {
                self.conn
                    .send_many(&[Command::Stat, Command::Uidl(None), Command::List(None)])
                    .await?;
            } else {
                self.conn.send(&Command::Stat).await?;
            }
        }
        let stat = self.conn.expect_ok("STAT").await?;
        let (count, _) = codec::parse_stat(&stat.text).map_err(malformed("STAT"))?;
        let max = u64::from(count)
            .saturating_mul(LISTING_LINE)
            .saturating_add(LISTING_LINE);
        let why = "more than the messages STAT counted can take";

        if !all_sent {
            self.conn.send(&Command::Uidl(None)).await?;
        }
        let uidl_reply = self.conn.read_status("UIDL").await?;
        let uidls = if uidl_reply.status == Status::Ok {
            let body = self.conn.read_listing("UIDL", max, why).await?;
            Some(codec::parse_uidl_listing(&body).map_err(malformed("UIDL"))?)
        } else if uidl_reply.code.is_some() || self.capa.uidl() {
            // A response code (e.g. [SYS/TEMP]) or a server that announces
            // UIDL means "not now", not "not supported".
            return Err(SessionError::Rejected {
                server,
                command: "UIDL".into(),
                code: uidl_reply.code,
                text: uidl_reply.text,
            });
        } else {
            None
        };
        let Some(uidls) = uidls else {
            if all_sent {
                // LIST's reply is on its way: read it, so that nothing is
                // left unread behind the error.
                if self.conn.read_status("LIST").await?.status == Status::Ok {
                    self.conn.read_listing("LIST", max, why).await?;
                }
            }
            return Err(SessionError::Protocol {
                server,
                command: "UIDL".into(),
                message: "the server does not support UIDL, which popsync needs to tell new mail from old; ask the provider to enable it".into(),
            });
        };
        if !all_sent {
            self.conn.send(&Command::List(None)).await?;
        }
        self.conn.expect_ok("LIST").await?;
        let body = self.conn.read_listing("LIST", max, why).await?;
        let sizes = codec::parse_list_listing(&body).map_err(malformed("LIST"))?;
        let numbered = |command: &str, numbers: &mut dyn Iterator<Item = u32>| {
            let mut seen = std::collections::HashSet::new();
            for msg in numbers {
                if msg == 0 || msg > count || !seen.insert(msg) {
                    return Err(SessionError::Protocol {
                        server: server.clone(),
                        command: command.to_owned(),
                        message: format!(
                            "message {msg} is listed {}, but STAT counts {count} messages",
                            if seen.contains(&msg) && msg <= count && msg > 0 {
                                "twice"
                            } else {
                                "out of range"
                            }
                        ),
                    });
                }
            }
            Ok(())
        };
        numbered("UIDL", &mut uidls.iter().map(|(m, _)| *m))?;
        numbered("LIST", &mut sizes.iter().map(|(m, _)| *m))?;
        let size_of: std::collections::HashMap<u32, u64> = sizes.into_iter().collect();
        let mut out = Vec::with_capacity(uidls.len());
        for (msg, uidl) in uidls {
            let Some(&size) = size_of.get(&msg) else {
                return Err(SessionError::Protocol {
                    server,
                    command: "LIST".into(),
                    message: format!("message {msg} is in the UIDL listing but not in LIST"),
                });
            };
            out.push(Listed { msg, uidl, size });
        }
        out.sort_by_key(|l| l.msg);
        Ok(out)
    }

    /// Send RETR for a message without waiting (pipelining).
    pub async fn send_retr(&mut self, msgs: &[u32]) -> Result<(), SessionError> {
        let cmds: Vec<Command> = msgs.iter().map(|&m| Command::Retr(m)).collect();
        self.conn.send_many(&cmds).await
    }

    /// Read the reply to a RETR sent earlier, streaming the message into
    /// `sink`. `listed` is the size LIST gave: a message that runs far past
    /// it, or arrives slower than `MIN_RATE` allows, is stopped.
    pub async fn read_retr<F, E>(
        &mut self,
        msg: u32,
        listed: u64,
        sink: F,
    ) -> Result<u64, BodyError<E>>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let label = format!("RETR {msg}");
        self.conn.expect_ok(&label).await?;
        let bound = self
            .conn
            .bound(retr_limit(listed), "far more than the size LIST announced");
        self.conn.read_body(&label, bound, sink).await
    }

    /// Send TOP for several messages without waiting (pipelining).
    pub async fn send_top(&mut self, msgs: &[u32], lines: u32) -> Result<(), SessionError> {
        let cmds: Vec<Command> = msgs
            .iter()
            .map(|&msg| Command::Top { msg, lines })
            .collect();
        self.conn.send_many(&cmds).await
    }

    /// Read the reply to a TOP sent earlier: the headers and `lines` body
    /// lines, of which at most `limit` bytes are kept (the rest is read and
    /// dropped, so the stream stays in step).
    pub async fn read_top(
        &mut self,
        msg: u32,
        listed: u64,
        limit: usize,
    ) -> Result<Vec<u8>, SessionError> {
        let label = format!("TOP {msg}");
        self.conn.expect_ok(&label).await?;
        let bound = self
            .conn
            .bound(retr_limit(listed), "far more than the size LIST announced");
        let mut kept = Vec::new();
        self.conn
            .read_body(&label, bound, |chunk| {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                Ok::<(), Infallible>(())
            })
            .await
            .map_err(BodyError::into_session)?;
        Ok(kept)
    }

    /// Mark messages deleted; they go at QUIT.
    pub async fn dele(&mut self, msgs: &[u32]) -> Result<(), SessionError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Command> = msgs.iter().map(|&m| Command::Dele(m)).collect();
        self.marked = true;
        if self.capa.pipelining() {
            // A window, as for RETR: a server that stops reading must not
            // leave popsync blocked in a write of every DELE at once.
            for (cmds, msgs) in cmds
                .chunks(crate::window::MAX_COMMANDS)
                .zip(msgs.chunks(crate::window::MAX_COMMANDS))
            {
                self.conn.send_many(cmds).await?;
                for m in msgs {
                    self.conn.expect_ok(&format!("DELE {m}")).await?;
                }
            }
        } else {
            for cmd in &cmds {
                self.conn.simple(cmd).await?;
            }
        }
        Ok(())
    }

    /// Undo DELEs of this session.
    pub async fn rset(&mut self) -> Result<(), SessionError> {
        self.conn.simple(&Command::Rset).await?;
        self.marked = false;
        Ok(())
    }

    /// QUIT: the server commits DELEs (UPDATE state). Only an +OK means they
    /// were committed, so with messages marked the reply is awaited. With
    /// none marked the reply carries no news: the connection is closed once
    /// QUIT is on its way, which saves a round trip.
    pub async fn quit(mut self) -> Result<(), SessionError> {
        if self.marked {
            self.conn.simple(&Command::Quit).await?;
            // Some servers (Courier) answer QUIT before they remove the
            // messages, and over TLS their removal stops when the client
            // hangs up first: wait for the server to close.
            self.conn.await_close().await;
            return Ok(());
        }
        self.conn.send(&Command::Quit).await?;
        self.conn.close().await;
        Ok(())
    }
}
