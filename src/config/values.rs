//! Typed values of config keys: parsed once, when the file is read, so the rest
//! of popsync never sees an unchecked string (parse, don't validate).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::pop3::auth::{Mechanism, Sasl};
use serde::de::{self, Deserializer, Visitor};

/// How the connection is secured (`tls = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// POP3S: TLS from the first byte (RFC 8314), port 995.
    Implicit,
    /// STLS on the plain port (RFC 2595), port 110; refusing to continue without it.
    Starttls,
    /// No TLS at all; only with `allow_plaintext = true`.
    None,
}

impl TlsMode {
    /// The port used when the account names none.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::Implicit => 995,
            TlsMode::Starttls | TlsMode::None => 110,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }
}

/// A login mechanism named in `auth = [...]`, strongest first in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum AuthMech {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-1")]
    ScramSha1,
    #[serde(rename = "cram-sha256")]
    CramSha256,
    #[serde(rename = "cram-sha1")]
    CramSha1,
    #[serde(rename = "cram-md5")]
    CramMd5,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "login")]
    Login,
    #[serde(rename = "apop")]
    Apop,
    #[serde(rename = "user")]
    User,
    #[serde(rename = "xoauth2")]
    Xoauth2,
    #[serde(rename = "oauthbearer")]
    OauthBearer,
}

impl From<AuthMech> for Mechanism {
    /// The session's mechanism for a config name (config depends on the
    /// protocol layer, never the other way round).
    fn from(m: AuthMech) -> Mechanism {
        match m {
            AuthMech::ScramSha256 => Mechanism::Sasl(Sasl::ScramSha256),
            AuthMech::ScramSha1 => Mechanism::Sasl(Sasl::ScramSha1),
            AuthMech::CramSha256 => Mechanism::Sasl(Sasl::CramSha256),
            AuthMech::CramSha1 => Mechanism::Sasl(Sasl::CramSha1),
            AuthMech::CramMd5 => Mechanism::Sasl(Sasl::CramMd5),
            AuthMech::Plain => Mechanism::Sasl(Sasl::Plain),
            AuthMech::Login => Mechanism::Sasl(Sasl::Login),
            AuthMech::Apop => Mechanism::Apop,
            AuthMech::User => Mechanism::User,
            AuthMech::Xoauth2 => Mechanism::Sasl(Sasl::Xoauth2),
            AuthMech::OauthBearer => Mechanism::Sasl(Sasl::OauthBearer),
        }
    }
}

impl AuthMech {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMech::ScramSha256 => "scram-sha-256",
            AuthMech::ScramSha1 => "scram-sha-1",
            AuthMech::CramSha256 => "cram-sha256",
            AuthMech::CramSha1 => "cram-sha1",
            AuthMech::CramMd5 => "cram-md5",
            AuthMech::Plain => "plain",
            AuthMech::Login => "login",
            AuthMech::Apop => "apop",
            AuthMech::User => "user",
            AuthMech::Xoauth2 => "xoauth2",
            AuthMech::OauthBearer => "oauthbearer",
        }
    }
}

/// How long delivered mail stays on the server (`retention = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Never DELE (the default).
    Forever,
    /// DELE once the message was first downloaded at least this many days ago;
    /// 0 means right after its delivery is committed.
    Days(u32),
}

/// The longest retention in days (about 273 years): a due date computed
/// from it stays far inside the calendar that dates can hold.
pub const MAX_RETENTION_DAYS: u32 = 100_000;

impl FromStr for Retention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "forever" {
            return Ok(Retention::Forever);
        }
        let days = s
            .strip_suffix('d')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "invalid retention {s:?}: use \"forever\", \"0d\" (delete after delivery) or a number of days such as \"14d\""
                )
            })?;
        days.parse::<u32>()
            .ok()
            .filter(|&n| n <= MAX_RETENTION_DAYS)
            .map(Retention::Days)
            .ok_or_else(|| {
                format!(
                    "retention {s:?} is longer than popsync can count (at most \"{MAX_RETENTION_DAYS}d\"); use \"forever\" to keep mail on the server"
                )
            })
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("forever"),
            Retention::Days(n) => write!(f, "{n}d"),
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A size in octets (`max_size = "25MB"` or a plain integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?}: use a number of bytes, or a number with KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), such as \"25MB\""
            )
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "KiB" => 1024,
            "MiB" => 1024_u64.pow(2),
            "GiB" => 1024_u64.pow(3),
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 26214400 or \"25MB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A SHA-256 pin of the server's end-entity certificate (`tls_fingerprint`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid tls_fingerprint {s:?}: expected \"sha256:\" and 64 hex digits (colons optional), as `popsync probe` prints"
            )
        };
        let hex: String = s
            .strip_prefix("sha256:")
            .or_else(|| s.strip_prefix("SHA256:"))
            .ok_or_else(bad)?
            .chars()
            .filter(|&c| c != ':')
            .collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_accepts_forever_and_days() {
        assert_eq!("forever".parse(), Ok(Retention::Forever));
        assert_eq!("0d".parse(), Ok(Retention::Days(0)));
        assert_eq!("14d".parse(), Ok(Retention::Days(14)));
        for bad in ["14", "14x", "d", "-1d", "", "14 d", "+1d"] {
            assert!(bad.parse::<Retention>().is_err(), "{bad:?} accepted");
        }
    }

    /// Issue 14 item 11: a retention past the end of the calendar was
    /// accepted, and made every fetch with delivered mail panic.
    #[test]
    fn retention_beyond_the_calendar_is_refused_and_says_forever() {
        assert_eq!("100000d".parse(), Ok(Retention::Days(MAX_RETENTION_DAYS)));
        for bad in ["100001d", "100000000d", "99999999999d"] {
            let e = bad.parse::<Retention>().unwrap_err();
            assert!(e.contains("forever"), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_use_decimal_and_binary_units() {
        let cases = [
            ("100", 100),
            ("25MB", 25_000_000),
            ("1KiB", 1024),
            ("2 GiB", 2 * 1024 * 1024 * 1024),
            ("3kB", 3000),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse(), Ok(ByteSize(want)), "{text}");
        }
        for bad in ["", "MB", "25XB", "-3", "99999999999999999999GB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fingerprint_accepts_colons_and_any_case_and_prints_probe_form() {
        let colon = "sha256:".to_owned() + &["ab"; 32].join(":");
        let plain = "sha256:".to_owned() + &"AB".repeat(32);
        let a: Fingerprint = colon.parse().unwrap();
        let b: Fingerprint = plain.parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "sha256:".to_owned() + &["AB"; 32].join(":"));
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
        assert!(
            ("md5:".to_owned() + &"ab".repeat(32))
                .parse::<Fingerprint>()
                .is_err()
        );
        assert!(
            ("sha256:".to_owned() + &"zz".repeat(32))
                .parse::<Fingerprint>()
                .is_err()
        );
    }
}
