//! APPEND in the scripted IMAP server, read step by step (the command line,
//! each literal, the lines between them) so that a fault can strike between
//! the steps: a refusal before the "+" of a synchronising literal, a drop
//! or a stall after the command line, in the middle of the first literal,
//! after the messages are stored but before the tagged OK, or after it.

use std::io;

use super::conn::{Conn, Flow, MAX_LITERAL};
use super::parse::{Part, Tok, literal_at_end, tokenize};
use super::state::mailbox_key;
use super::{Fault, Point, Stored, Trigger};

impl Conn {
    /// APPEND, read step by step so that faults can strike between the
    /// steps.
    pub(super) fn append(&mut self, tag: &str, first: Vec<u8>) -> io::Result<Flow> {
        let (n, caps_uidplus, limit) = {
            let mut state = self.shared.lock();
            state.appends_seen += 1;
            (
                state.appends_seen,
                state.caps.iter().any(|c| c == "UIDPLUS"),
                state.append_limit,
            )
        };
        let fault = self.shared.lock().take_fault(&Trigger::Append(n));
        let mut shown_line = String::from_utf8_lossy(&first).into_owned();
        match fault {
            Some(Fault::Stall(Point::AfterAppendLine)) => {
                self.record(shown_line.clone());
                self.stall(Point::AfterAppendLine);
                // Recorded; whatever follows is not recorded again.
                shown_line = String::new();
            }
            Some(Fault::Drop) => {
                self.record(shown_line);
                return Ok(Flow::Close);
            }
            _ => {}
        }
        // The mailbox, if it is on the first line (not itself a literal).
        let first_toks = tokenize(&[Part::Text(first.clone())]);
        let early_mailbox = if literal_at_end(&first).is_some() && first_toks.len() >= 3 {
            first_toks.get(2).and_then(Tok::text)
        } else {
            None
        };
        let missing = early_mailbox.as_ref().is_some_and(|name| {
            !self
                .shared
                .lock()
                .mailboxes
                .contains_key(&mailbox_key(name))
        });

        let mut parts = Vec::new();
        let mut line = first;
        let mut literal_index = 0;
        while let Some((size, nonsync)) = literal_at_end(&line) {
            parts.push(Part::Text(line));
            if size > MAX_LITERAL {
                self.record(shown_line);
                return Err(io::Error::other("literal too large"));
            }
            if !nonsync {
                // A synchronising literal can be refused before it is sent.
                if literal_index == 0 && missing {
                    self.record(shown_line);
                    self.send(&format!(
                        "{tag} NO [TRYCREATE] Mailbox doesn't exist: {}\r\n",
                        early_mailbox.unwrap_or_default()
                    ))?;
                    return Ok(Flow::Go);
                }
                if limit.is_some_and(|l| size > l) {
                    self.record(shown_line);
                    self.send(&format!(
                        "{tag} NO [TOOBIG] Message too large (APPENDLIMIT)\r\n"
                    ))?;
                    return Ok(Flow::Go);
                }
                self.send("+ Ready for literal data\r\n")?;
            }
            let mid = literal_index == 0
                && matches!(
                    fault,
                    Some(Fault::DropMidLiteral | Fault::Stall(Point::MidLiteral))
                );
            let bytes = if mid {
                let half = size / 2;
                let Some(mut head) = self.read_bytes(half)? else {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                };
                if fault == Some(Fault::DropMidLiteral) {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                }
                self.record(std::mem::take(&mut shown_line));
                self.stall(Point::MidLiteral);
                // The client was probably killed meanwhile; if not, go on.
                let Some(tail) = self.read_bytes(size - half)? else {
                    return Ok(Flow::Close);
                };
                head.extend_from_slice(&tail);
                head
            } else {
                let Some(bytes) = self.read_bytes(size)? else {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                };
                bytes
            };
            shown_line.push_str(&format!("<{} octets>", bytes.len()));
            parts.push(Part::Literal(bytes));
            literal_index += 1;
            let Some(next) = self.read_line()? else {
                self.record(shown_line);
                return Ok(Flow::Close);
            };
            shown_line.push_str(&String::from_utf8_lossy(&next));
            line = next;
        }
        parts.push(Part::Text(line));
        self.record(shown_line);

        // tag APPEND mailbox 1*( [flags] [date-time] literal )
        let toks = tokenize(&parts);
        let Some(mailbox) = toks.get(2).and_then(Tok::text) else {
            self.send(&format!("{tag} BAD Missing mailbox\r\n"))?;
            return Ok(Flow::Go);
        };
        let mut messages: Vec<(Vec<String>, Option<String>, Vec<u8>)> = Vec::new();
        let mut i = 3;
        while i < toks.len() {
            let mut flags = Vec::new();
            if toks[i] == Tok::Open {
                i += 1;
                while i < toks.len() && toks[i] != Tok::Close {
                    if let Some(f) = toks[i].text() {
                        flags.push(f);
                    }
                    i += 1;
                }
                i += 1;
            }
            let mut date = None;
            if let Some(Tok::Str(_)) = toks.get(i) {
                date = toks[i].text();
                i += 1;
            }
            match toks.get(i) {
                Some(Tok::Lit(bytes)) => messages.push((flags, date, bytes.clone())),
                _ => {
                    self.send(&format!("{tag} BAD Missing message literal\r\n"))?;
                    return Ok(Flow::Go);
                }
            }
            i += 1;
        }
        if messages.is_empty() {
            self.send(&format!("{tag} BAD Missing message literal\r\n"))?;
            return Ok(Flow::Go);
        }
        let multi = self.shared.lock().caps.iter().any(|c| c == "MULTIAPPEND");
        if messages.len() > 1 && !multi {
            self.send(&format!("{tag} BAD MULTIAPPEND not offered\r\n"))?;
            return Ok(Flow::Go);
        }
        if !self
            .shared
            .lock()
            .mailboxes
            .contains_key(&mailbox_key(&mailbox))
        {
            self.send(&format!(
                "{tag} NO [TRYCREATE] Mailbox doesn't exist: {mailbox}\r\n"
            ))?;
            return Ok(Flow::Go);
        }
        if limit.is_some_and(|l| messages.iter().any(|m| m.2.len() > l)) {
            self.send(&format!(
                "{tag} NO [TOOBIG] Message too large (APPENDLIMIT)\r\n"
            ))?;
            return Ok(Flow::Go);
        }
        if let Some(Fault::No(text)) = &fault {
            self.send(&format!("{tag} NO {text}\r\n"))?;
            return Ok(Flow::Go);
        }
        let (uidvalidity, uids) = {
            let mut state = self.shared.lock();
            let mbox = state
                .mailboxes
                .get_mut(&mailbox_key(&mailbox))
                .expect("checked above");
            let mut uids = Vec::new();
            for (flags, date, bytes) in messages {
                let uid = mbox.uidnext;
                mbox.uidnext += 1;
                uids.push(uid);
                mbox.messages.push(Stored {
                    uid,
                    flags,
                    internaldate: date,
                    bytes,
                });
            }
            (mbox.uidvalidity, uids)
        };
        if fault == Some(Fault::Stall(Point::AfterLiteral)) {
            self.stall(Point::AfterLiteral);
        }
        if fault == Some(Fault::DropBeforeOk) {
            return Ok(Flow::Close);
        }
        let code = if caps_uidplus {
            let set = if uids.len() == 1 {
                uids[0].to_string()
            } else {
                format!("{}:{}", uids[0], uids[uids.len() - 1])
            };
            format!("[APPENDUID {uidvalidity} {set}] ")
        } else {
            String::new()
        };
        self.send(&format!("{tag} OK {code}APPEND completed\r\n"))?;
        if fault == Some(Fault::Stall(Point::AfterTaggedOk)) {
            self.stall(Point::AfterTaggedOk);
        }
        Ok(Flow::Go)
    }
}
