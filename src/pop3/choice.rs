//! Which login mechanism to try, in what order: the default orders (over TLS,
//! and in clear text with `allow_plaintext`), `auth` as configured, what the
//! server offers, and, for `probe`, why each mechanism is in or out. The
//! mechanisms themselves are `auth`'s.

use super::auth::{AuthError, Mechanism, Sasl};
use super::codec::Capabilities;
use crate::sanitize::sanitize;

/// The default order over TLS (DESIGN.md "Config"): SCRAM, which proves
/// the server knows the password; then the password itself, which TLS
/// protects; CRAM-MD5 last, since it needs a plaintext-equivalent secret on
/// the server. APOP (MD5, the same secret, nothing TLS does not already
/// give) and the CRAM-SHA variants and OAuth only when `auth` names them:
/// a greeting's APOP timestamp says little about whether the server keeps
/// an APOP secret for the user.
const DEFAULT_OVER_TLS: [Mechanism; 6] = [
    Mechanism::Sasl(Sasl::ScramSha256),
    Mechanism::Sasl(Sasl::ScramSha1),
    Mechanism::Sasl(Sasl::Plain),
    Mechanism::Sasl(Sasl::Login),
    Mechanism::User,
    Mechanism::Sasl(Sasl::CramMd5),
];

/// The default order without TLS (`tls = "none"` with `allow_plaintext`):
/// whatever keeps the password off the wire comes first, APOP included.
const DEFAULT_IN_CLEAR: [Mechanism; 7] = [
    Mechanism::Apop,
    Mechanism::Sasl(Sasl::ScramSha256),
    Mechanism::Sasl(Sasl::ScramSha1),
    Mechanism::Sasl(Sasl::CramMd5),
    Mechanism::Sasl(Sasl::Plain),
    Mechanism::Sasl(Sasl::Login),
    Mechanism::User,
];

/// Every mechanism popsync speaks, for `probe`'s account of the order.
const ALL: [Mechanism; 11] = [
    Mechanism::Sasl(Sasl::ScramSha256),
    Mechanism::Sasl(Sasl::ScramSha1),
    Mechanism::Sasl(Sasl::Plain),
    Mechanism::Sasl(Sasl::Login),
    Mechanism::User,
    Mechanism::Sasl(Sasl::CramMd5),
    Mechanism::Sasl(Sasl::CramSha256),
    Mechanism::Sasl(Sasl::CramSha1),
    Mechanism::Apop,
    Mechanism::Sasl(Sasl::Xoauth2),
    Mechanism::Sasl(Sasl::OauthBearer),
];

/// The order popsync wants: `auth` as configured, else the default for
/// the connection (`in_clear`: no TLS).
fn wanted(configured: &[Mechanism], in_clear: bool) -> Vec<Mechanism> {
    if !configured.is_empty() {
        configured.to_vec()
    } else if in_clear {
        DEFAULT_IN_CLEAR.to_vec()
    } else {
        DEFAULT_OVER_TLS.to_vec()
    }
}

/// The mechanisms to try, in order: with `auth` unset those the server
/// offers of the default order (`in_clear`: the connection has no TLS);
/// with `auth` set, those of the list that the server offers, in the list's
/// order. Never empty.
///
/// `greeting` is the greeting received on this connection's security layer:
/// `None` after STLS, where the greeting came in clear text and RFC 2595
/// says to forget it, so that its timestamp cannot make APOP offered.
pub fn candidates(
    configured: &[Mechanism],
    capa: &Capabilities,
    greeting: Option<&str>,
    in_clear: bool,
) -> Result<Vec<Mechanism>, AuthError> {
    let after_stls = greeting.is_none();
    let greeting = greeting.unwrap_or("");
    let wanted = wanted(configured, in_clear);
    let offered: Vec<Mechanism> = wanted
        .iter()
        .copied()
        .filter(|m| m.offered(capa, greeting))
        .collect();
    if !offered.is_empty() {
        return Ok(offered);
    }
    // Server text, bound for a terminal.
    let mut server: Vec<String> = capa
        .sasl_mechanisms()
        .iter()
        .map(|m| sanitize(m.as_bytes(), MAX_MECHANISM_NAME))
        .collect();
    if Mechanism::User.offered(capa, greeting) {
        server.push("USER".into());
    }
    if Mechanism::Apop.offered(capa, greeting) {
        server.push("APOP".into());
    }
    let offered = if server.is_empty() {
        "nothing".into()
    } else {
        server.join(", ")
    };
    if after_stls && configured.contains(&Mechanism::Apop) {
        return Err(AuthError::ApopAfterStls { offered });
    }
    Err(AuthError::NoCommonMechanism {
        wanted: wanted
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        offered,
    })
}

/// The longest mechanism name shown in an error (SASL names have at most 20
/// characters, RFC 4422).
const MAX_MECHANISM_NAME: usize = 40;

/// The mechanism popsync tries first (arguments as for `candidates`).
pub fn choose(
    configured: &[Mechanism],
    capa: &Capabilities,
    greeting: Option<&str>,
    in_clear: bool,
) -> Result<Mechanism, AuthError> {
    candidates(configured, capa, greeting, in_clear).map(|c| c[0])
}

/// For `probe`: every mechanism popsync speaks, those it would try first
/// and in order ("1. SCRAM-SHA-256"), then each of the others with why it is
/// left out. Arguments as for `candidates`.
pub fn explain(
    configured: &[Mechanism],
    capa: &Capabilities,
    greeting: Option<&str>,
    in_clear: bool,
) -> Vec<String> {
    let after_stls = greeting.is_none();
    let greeting = greeting.unwrap_or("");
    let wanted = wanted(configured, in_clear);
    let mut tried = Vec::new();
    let mut left_out = Vec::new();
    for m in wanted.iter().copied() {
        if m.offered(capa, greeting) {
            tried.push(format!("{}. {}", tried.len() + 1, m.name()));
        } else if m == Mechanism::Apop && after_stls {
            left_out.push(
                "APOP: not after STLS (its timestamp came in clear text, RFC 2595)".to_owned(),
            );
        } else {
            left_out.push(format!("{}: not offered by the server", m.name()));
        }
    }
    for m in ALL.iter().copied().filter(|m| !wanted.contains(m)) {
        let why = if !configured.is_empty() {
            "not named in `auth`"
        } else {
            match m {
                Mechanism::Apop => "only when named in `auth` (or first with tls = \"none\")",
                Mechanism::Sasl(Sasl::Xoauth2 | Sasl::OauthBearer) => {
                    "only when named in `auth` (OAuth2)"
                }
                _ => "only when named in `auth`",
            }
        };
        left_out.push(format!("{}: {why}", m.name()));
    }
    tried.extend(left_out);
    tried
}
