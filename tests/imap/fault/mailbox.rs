//! The scripted IMAP server's mailbox commands: SELECT and EXAMINE, STATUS,
//! LIST and LSUB, SEARCH and FETCH (with or without UID) of the selected
//! mailbox.

use std::io;

use super::conn::Conn;
use super::message::fetch_item;
use super::parse::{Tok, quoted};
use super::search::{Key, in_set, parse_key, parse_set};
use super::state::{Mbox, mailbox_key};

impl Conn {
    pub(super) fn select(&mut self, tag: &str, verb: &str, args: &[Tok]) -> io::Result<()> {
        let name = args.first().and_then(Tok::text).unwrap_or_default();
        let mbox = self
            .shared
            .lock()
            .mailboxes
            .get(&mailbox_key(&name))
            .cloned();
        let Some(mbox) = mbox else {
            self.selected = None;
            return self.send(&format!(
                "{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n"
            ));
        };
        self.selected = Some(mailbox_key(&name));
        let rw = if verb == "SELECT" {
            "READ-WRITE"
        } else {
            "READ-ONLY"
        };
        self.send(&format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n\
             * {} EXISTS\r\n* 0 RECENT\r\n\
             * OK [UIDVALIDITY {}] UIDs valid\r\n\
             * OK [UIDNEXT {}] Predicted next UID\r\n\
             {tag} OK [{rw}] {verb} completed\r\n",
            mbox.messages.len(),
            mbox.uidvalidity,
            mbox.uidnext
        ))
    }

    pub(super) fn status(&mut self, tag: &str, args: &[Tok]) -> io::Result<()> {
        let name = args.first().and_then(Tok::text).unwrap_or_default();
        let mbox = self
            .shared
            .lock()
            .mailboxes
            .get(&mailbox_key(&name))
            .cloned();
        let Some(mbox) = mbox else {
            return self.send(&format!(
                "{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n"
            ));
        };
        let mut items = Vec::new();
        for t in &args[1.min(args.len())..] {
            let Some(item) = t.text() else { continue };
            let value = match item.to_ascii_uppercase().as_str() {
                "MESSAGES" => mbox.messages.len() as u64,
                "UIDNEXT" => u64::from(mbox.uidnext),
                "UIDVALIDITY" => u64::from(mbox.uidvalidity),
                "UNSEEN" => mbox
                    .messages
                    .iter()
                    .filter(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
                    .count() as u64,
                "RECENT" => 0,
                "SIZE" => mbox.messages.iter().map(|m| m.bytes.len() as u64).sum(),
                _ => continue,
            };
            items.push(format!("{} {value}", item.to_ascii_uppercase()));
        }
        self.send(&format!(
            "* STATUS {} ({})\r\n{tag} OK STATUS completed\r\n",
            quoted(&name),
            items.join(" ")
        ))
    }

    pub(super) fn list(&mut self, tag: &str, verb: &str, args: &[Tok]) -> io::Result<()> {
        let pattern = args.get(1).and_then(Tok::text).unwrap_or_default();
        let names: Vec<String> = self.shared.lock().mailboxes.keys().cloned().collect();
        let mut out = String::new();
        if pattern.is_empty() {
            out.push_str(&format!("* {verb} (\\Noselect) \"/\" \"\"\r\n"));
        }
        for name in names {
            if wildcard_match(&pattern, &name) {
                out.push_str(&format!(
                    "* {verb} (\\HasNoChildren) \"/\" {}\r\n",
                    quoted(&name)
                ));
            }
        }
        out.push_str(&format!("{tag} OK {verb} completed\r\n"));
        self.send(&out)
    }

    pub(super) fn selected_mbox(&self) -> Option<Mbox> {
        let name = self.selected.as_ref()?;
        self.shared.lock().mailboxes.get(name).cloned()
    }

    pub(super) fn search(&mut self, tag: &str, uid: bool, args: &[Tok]) -> io::Result<()> {
        let Some(mbox) = self.selected_mbox() else {
            return self.send(&format!("{tag} BAD No mailbox selected\r\n"));
        };
        let mut args = args;
        if args
            .first()
            .and_then(Tok::text)
            .is_some_and(|t| t.eq_ignore_ascii_case("CHARSET"))
        {
            args = &args[2.min(args.len())..];
        }
        let mut pos = 0;
        let mut keys = Vec::new();
        while pos < args.len() {
            match parse_key(args, &mut pos, &mbox) {
                Ok(k) => keys.push(k),
                Err(e) => return self.send(&format!("{tag} BAD Search: {e}\r\n")),
            }
        }
        let key = Key::And(keys);
        let hits: Vec<String> = mbox
            .messages
            .iter()
            .enumerate()
            .filter(|(i, m)| key.matches(*i as u32 + 1, m))
            .map(|(i, m)| {
                if uid {
                    m.uid.to_string()
                } else {
                    (i + 1).to_string()
                }
            })
            .collect();
        let mut line = String::from("* SEARCH");
        for h in hits {
            line.push(' ');
            line.push_str(&h);
        }
        self.send(&format!("{line}\r\n{tag} OK SEARCH completed\r\n"))
    }

    pub(super) fn fetch(&mut self, tag: &str, uid: bool, args: &[Tok]) -> io::Result<()> {
        let Some(mbox) = self.selected_mbox() else {
            return self.send(&format!("{tag} BAD No mailbox selected\r\n"));
        };
        let Some(set) = args.first().and_then(Tok::text) else {
            return self.send(&format!("{tag} BAD Missing sequence set\r\n"));
        };
        let mut items: Vec<String> = Vec::new();
        for t in &args[1.min(args.len())..] {
            if let Some(s) = t.text() {
                items.push(s.to_ascii_uppercase());
            }
        }
        let mut expanded = Vec::new();
        for item in items {
            match item.as_str() {
                "FAST" => {
                    expanded.extend(["FLAGS", "INTERNALDATE", "RFC822.SIZE"].map(String::from))
                }
                "ALL" | "FULL" => {
                    expanded.extend(["FLAGS", "INTERNALDATE", "RFC822.SIZE"].map(String::from))
                }
                _ => expanded.push(item),
            }
        }
        if uid && !expanded.iter().any(|i| i == "UID") {
            expanded.insert(0, "UID".into());
        }
        let max = if uid {
            mbox.messages.last().map_or(0, |m| m.uid)
        } else {
            mbox.messages.len() as u32
        };
        let Some(ranges) = parse_set(&set, max) else {
            return self.send(&format!("{tag} BAD Bad sequence set\r\n"));
        };
        let mut out: Vec<u8> = Vec::new();
        for (i, m) in mbox.messages.iter().enumerate() {
            let seq = i as u32 + 1;
            let n = if uid { m.uid } else { seq };
            if !in_set(&ranges, n) {
                continue;
            }
            let mut fields: Vec<Vec<u8>> = Vec::new();
            for item in &expanded {
                let field = match fetch_item(item, m) {
                    Some(f) => f,
                    None => return self.send(&format!("{tag} BAD Unknown FETCH item {item}\r\n")),
                };
                fields.push(field);
            }
            out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
            out.extend_from_slice(&fields.join(&b' '));
            out.extend_from_slice(b")\r\n");
        }
        out.extend_from_slice(format!("{tag} OK FETCH completed\r\n").as_bytes());
        self.send_bytes(&out)
    }
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some(b'%') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != b'/')
                .any(|k| go(&p[1..], &n[k..])),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
        || (pattern.eq_ignore_ascii_case("INBOX") && name == "INBOX")
}
