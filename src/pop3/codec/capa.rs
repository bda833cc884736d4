//! CAPA replies (RFC 2449).

use super::*;

/// Parsed CAPA reply (RFC 2449). Capability names are case-insensitive; store them upper-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    entries: Vec<Capability>,
    raw: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Capability {
    name: String,
    args: Vec<String>,
}

impl Capabilities {
    /// Parse a decoded CAPA body; never fails and ignores empty lines, because
    /// a capability we cannot read is one we simply do not use.
    pub fn parse(body: &[u8]) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in body_lines(body) {
            let line = String::from_utf8_lossy(line.trim_ascii()).into_owned();
            let mut words = line.split_ascii_whitespace();
            if let Some(name) = words.next() {
                caps.entries.push(Capability {
                    name: name.to_ascii_uppercase(),
                    args: words.map(str::to_owned).collect(),
                });
            }
            caps.raw.push(line);
        }
        caps
    }

    /// Whether the server announced `name` (case-insensitive).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The arguments after `name`, as the server spelled them.
    pub fn args(&self, name: &str) -> Option<&[String]> {
        self.find(name).map(|c| c.args.as_slice())
    }

    /// STLS (RFC 2595).
    pub fn stls(&self) -> bool {
        self.has("STLS")
    }

    /// PIPELINING: commands may be sent without waiting for each reply.
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// UTF8 (RFC 6856): the server can be asked to send raw UTF-8 headers.
    pub fn utf8(&self) -> bool {
        self.has("UTF8")
    }

    /// TOP.
    pub fn top(&self) -> bool {
        self.has("TOP")
    }

    /// UIDL.
    pub fn uidl(&self) -> bool {
        self.has("UIDL")
    }

    /// USER/PASS login is allowed.
    pub fn user(&self) -> bool {
        self.has("USER")
    }

    /// RESP-CODES: "[" at the start of a reply text is a response code.
    pub fn resp_codes(&self) -> bool {
        self.has("RESP-CODES")
    }

    /// From "SASL PLAIN LOGIN", upper-cased; several SASL lines are merged.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|c| c.name == "SASL")
            .flat_map(|c| c.args.iter().map(|m| m.to_ascii_uppercase()))
            .collect()
    }

    /// LOGIN-DELAY n (seconds); may be "LOGIN-DELAY 900 USER" after login.
    pub fn login_delay(&self) -> Option<u64> {
        let first = self.args("LOGIN-DELAY")?.first()?;
        decimal(first.as_bytes())
    }

    /// EXPIRE: Some(Expire::Never) for "NEVER", Some(Expire::Days(n)); "USER" suffix ignored.
    pub fn expire(&self) -> Option<Expire> {
        let first = self.args("EXPIRE")?.first()?;
        if first.eq_ignore_ascii_case("NEVER") {
            Some(Expire::Never)
        } else {
            decimal(first.as_bytes()).map(Expire::Days)
        }
    }

    /// The raw lines, for `probe`. Server text: sanitise before printing.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.raw.iter().map(String::as_str)
    }

    fn find(&self, name: &str) -> Option<&Capability> {
        self.entries
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// The server's retention policy (RFC 2449 EXPIRE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// Messages are kept until deleted.
    Never,
    /// Messages may be deleted this many days after retrieval (0: at once).
    Days(u64),
}
