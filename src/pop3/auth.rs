//! Login mechanisms, and SASL exchanges as pure step functions (no I/O: the
//! session feeds challenges in and sends answers out). Choosing one is
//! `choice`'s (re-exported here).
//!
//! Hashing comes from well-kept crates: `ring` for SHA-1/SHA-256, HMAC and
//! PBKDF2 (SCRAM), `md-5` and `hmac` for the legacy APOP and CRAM-MD5.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

use super::codec::Capabilities;
use crate::exit::ExitCode;
use crate::sanitize::sanitize;

/// A SASL mechanism popsync speaks (RFC 5034 AUTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sasl {
    ScramSha256,
    ScramSha1,
    CramSha256,
    CramSha1,
    CramMd5,
    Plain,
    Login,
    Xoauth2,
    OauthBearer,
}

impl Sasl {
    /// The IANA name, as sent in AUTH and listed in CAPA's SASL line.
    pub fn name(self) -> &'static str {
        match self {
            Sasl::ScramSha256 => "SCRAM-SHA-256",
            Sasl::ScramSha1 => "SCRAM-SHA-1",
            Sasl::CramSha256 => "CRAM-SHA256",
            Sasl::CramSha1 => "CRAM-SHA1",
            Sasl::CramMd5 => "CRAM-MD5",
            Sasl::Plain => "PLAIN",
            Sasl::Login => "LOGIN",
            Sasl::Xoauth2 => "XOAUTH2",
            Sasl::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// How to log in: RFC 1939 USER/PASS or APOP, or SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    User,
    Apop,
    Sasl(Sasl),
}

impl Mechanism {
    /// Name for messages ("USER", "APOP", "PLAIN", ...).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::User => "USER",
            Mechanism::Apop => "APOP",
            Mechanism::Sasl(s) => s.name(),
        }
    }

    /// Whether the server, by its CAPA and greeting, offers this mechanism.
    pub fn offered(self, capa: &Capabilities, greeting: &str) -> bool {
        match self {
            // RFC 1939 servers without CAPA still take USER/PASS.
            Mechanism::User => capa.user() || capa.lines().next().is_none(),
            Mechanism::Apop => apop_timestamp(greeting).is_some(),
            Mechanism::Sasl(s) => capa
                .sasl_mechanisms()
                .iter()
                .any(|m| m.eq_ignore_ascii_case(s.name())),
        }
    }
}

pub use super::choice::{candidates, choose, explain};

/// A login that cannot proceed for a reason on our side or a broken exchange.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no login mechanism in common: popsync would use {wanted}, the server offers {offered}; adjust `auth` in the config"
    )]
    NoCommonMechanism { wanted: String, offered: String },
    #[error(
        "APOP is not used with tls = \"starttls\": its timestamp came in the clear-text greeting, which RFC 2595 says to forget once STLS has secured the connection. Over TLS the server offers {offered}: name one of those in `auth`, or use tls = \"implicit\" if the server has it"
    )]
    ApopAfterStls { offered: String },
    #[error("APOP needs a <timestamp> in the server greeting, and this server sent none")]
    NoApopTimestamp,
    #[error("malformed {mechanism} challenge from the server: {detail}")]
    BadChallenge {
        mechanism: &'static str,
        detail: String,
    },
    #[error(
        "the server's SCRAM signature is wrong: it does not know the password, or something is intercepting the connection"
    )]
    BadServerSignature,
    #[error("the server ended {mechanism} without proving it knows the password")]
    MissingServerSignature { mechanism: &'static str },
    #[error("the server rejected SCRAM: {0}")]
    ScramServerError(String),
    #[error(
        "the password holds characters SCRAM cannot send (SASLprep, RFC 4013: {detail}); name another mechanism in `auth`, or change the password"
    )]
    SaslPrep { detail: String },
}

impl AuthError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AuthError::NoCommonMechanism { .. }
            | AuthError::ApopAfterStls { .. }
            | AuthError::NoApopTimestamp => ExitCode::NoPerm,
            AuthError::BadServerSignature
            | AuthError::MissingServerSignature { .. }
            | AuthError::ScramServerError(_) => ExitCode::NoPerm,
            AuthError::BadChallenge { .. } => ExitCode::Protocol,
            AuthError::SaslPrep { .. } => ExitCode::Config,
        }
    }
}

/// The `<...>` timestamp of an APOP-capable greeting.
fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let ts = &greeting[start..=end];
    ts.contains('@').then_some(ts)
}

/// RFC 1939 APOP digest: hex MD5 of timestamp and password.
pub fn apop_digest(greeting: &str, password: &str) -> Result<String, AuthError> {
    let ts = apop_timestamp(greeting).ok_or(AuthError::NoApopTimestamp)?;
    let mut h = Md5::new();
    h.update(ts.as_bytes());
    h.update(password.as_bytes());
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One SASL exchange, driven by the session.
pub struct SaslClient {
    kind: Sasl,
    user: String,
    password: String,
    step: u32,
    deferred: Option<String>,
    scram: Option<ScramState>,
    server_verified: bool,
    error_detail: Option<String>,
}

struct ScramState {
    client_first_bare: String,
    client_nonce: String,
    expected_server_signature: Option<Vec<u8>>,
}

impl SaslClient {
    pub fn new(kind: Sasl, user: &str, password: &str) -> Result<SaslClient, AuthError> {
        let password = match kind {
            // RFC 5802 2.2: SCRAM hashes the SASLprep'd password (RFC 4013),
            // so that "pässwörd" means the same bytes to client and server
            // whatever the Unicode normalisation it was typed in.
            Sasl::ScramSha1 | Sasl::ScramSha256 => stringprep::saslprep(password)
                .map_err(|e| AuthError::SaslPrep {
                    // Without the character it quotes: that is part of
                    // the password, and may be a control character.
                    detail: e
                        .to_string()
                        .split('`')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                })?
                .into_owned(),
            _ => password.to_owned(),
        };
        Ok(SaslClient {
            kind,
            user: user.to_owned(),
            password,
            step: 0,
            deferred: None,
            scram: None,
            server_verified: false,
            error_detail: None,
        })
    }

    /// The base64 initial response, for mechanisms that have one ("=" when empty).
    pub fn initial_response(&mut self) -> Result<Option<String>, AuthError> {
        Ok(match self.kind {
            Sasl::Plain => Some(B64.encode(format!("\0{}\0{}", self.user, self.password))),
            Sasl::Xoauth2 => Some(B64.encode(format!(
                "user={}\x01auth=Bearer {}\x01\x01",
                self.user, self.password
            ))),
            Sasl::OauthBearer => Some(B64.encode(format!(
                "n,a={},\x01auth=Bearer {}\x01\x01",
                sasl_name(&self.user),
                self.password
            ))),
            Sasl::ScramSha1 | Sasl::ScramSha256 => {
                let nonce = random_nonce()?;
                let bare = format!("n={},r={}", sasl_name(&self.user), nonce);
                let first = format!("n,,{bare}");
                self.scram = Some(ScramState {
                    client_first_bare: bare,
                    client_nonce: nonce,
                    expected_server_signature: None,
                });
                Some(B64.encode(first))
            }
            Sasl::CramSha256 | Sasl::CramSha1 | Sasl::CramMd5 | Sasl::Login => None,
        })
    }

    /// The initial response did not fit the command line (RFC 5034's 255
    /// octets): send it as the answer to the first, empty, challenge.
    pub fn defer_initial(&mut self, ir: String) {
        self.deferred = Some(ir);
    }

    /// Answer one "+ challenge" (base64 text), in base64.
    pub fn step(&mut self, challenge_b64: &str) -> Result<String, AuthError> {
        if let Some(ir) = self.deferred.take() {
            return Ok(ir);
        }
        self.step += 1;
        let mechanism = self.kind.name();
        let bad = |detail: String| AuthError::BadChallenge { mechanism, detail };
        let challenge = B64
            .decode(challenge_b64.trim())
            .map_err(|e| bad(format!("not base64 ({e})")))?;
        match self.kind {
            Sasl::Plain => Ok(String::new()),
            Sasl::Login => {
                // "Username:" then "Password:"; some servers vary the prompt,
                // so go by position and by the word when it is there.
                let prompt = String::from_utf8_lossy(&challenge).to_ascii_lowercase();
                if prompt.contains("pass") || (self.step >= 2 && !prompt.contains("user")) {
                    Ok(B64.encode(&self.password))
                } else {
                    Ok(B64.encode(&self.user))
                }
            }
            Sasl::CramMd5 => {
                let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(self.password.as_bytes())
                    .map_err(|e| bad(e.to_string()))?;
                mac.update(&challenge);
                let digest = hex(&mac.finalize().into_bytes());
                Ok(B64.encode(format!("{} {}", self.user, digest)))
            }
            // Courier's CRAM-SHA1 and CRAM-SHA256: CRAM-MD5 (RFC 2195) with
            // another HMAC.
            Sasl::CramSha1 | Sasl::CramSha256 => {
                let algorithm = if self.kind == Sasl::CramSha1 {
                    ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY
                } else {
                    ring::hmac::HMAC_SHA256
                };
                let key = ring::hmac::Key::new(algorithm, self.password.as_bytes());
                let digest = hex(ring::hmac::sign(&key, &challenge).as_ref());
                Ok(B64.encode(format!("{} {}", self.user, digest)))
            }
            Sasl::Xoauth2 => {
                // An error: the JSON status arrives as a challenge; an empty
                // answer makes the server send its -ERR.
                self.error_detail = Some(String::from_utf8_lossy(&challenge).into_owned());
                Ok(String::new())
            }
            Sasl::OauthBearer => {
                self.error_detail = Some(String::from_utf8_lossy(&challenge).into_owned());
                // RFC 7628 3.2.3: a single %x01 acknowledges the error.
                Ok(B64.encode([1u8]))
            }
            Sasl::ScramSha1 | Sasl::ScramSha256 => self.scram_step(&challenge),
        }
    }

    fn scram_step(&mut self, challenge: &[u8]) -> Result<String, AuthError> {
        let mechanism = self.kind.name();
        let bad = |detail: &str| AuthError::BadChallenge {
            mechanism,
            detail: detail.to_owned(),
        };
        let text = std::str::from_utf8(challenge).map_err(|_| bad("not UTF-8"))?;
        let state = self
            .scram
            .as_mut()
            .ok_or_else(|| bad("challenge before client-first"))?;
        if let Some(expected) = &state.expected_server_signature {
            // server-final: "v=signature" or "e=error".
            return match scram_attr(text, 'v') {
                Some(v) => {
                    let got = B64.decode(v).map_err(|_| bad("bad server signature"))?;
                    // In constant time: how much of a forged signature
                    // matched must not show in the time taken.
                    if !bool::from(got.as_slice().ct_eq(expected.as_slice())) {
                        return Err(AuthError::BadServerSignature);
                    }
                    self.server_verified = true;
                    Ok(String::new())
                }
                // Server text, bound for a terminal.
                None => Err(AuthError::ScramServerError(sanitize(
                    scram_attr(text, 'e').unwrap_or(text).as_bytes(),
                    200,
                ))),
            };
        }
        // server-first: r=nonce,s=salt,i=iterations
        let nonce = scram_attr(text, 'r').ok_or_else(|| bad("no nonce"))?;
        if !nonce.starts_with(&state.client_nonce) || nonce.len() <= state.client_nonce.len() {
            return Err(bad("server nonce does not extend ours"));
        }
        let salt = B64
            .decode(scram_attr(text, 's').ok_or_else(|| bad("no salt"))?)
            .map_err(|_| bad("salt is not base64"))?;
        let iterations: u32 = scram_attr(text, 'i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| (1..=10_000_000).contains(&i))
            .ok_or_else(|| bad("bad iteration count"))?;
        let (pbkdf, hmac_alg, digest_alg, len) = match self.kind {
            Sasl::ScramSha1 => (
                ring::pbkdf2::PBKDF2_HMAC_SHA1,
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                20,
            ),
            _ => (
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                ring::hmac::HMAC_SHA256,
                &ring::digest::SHA256,
                32,
            ),
        };
        let mut salted = vec![0u8; len];
        let iterations =
            std::num::NonZeroU32::new(iterations).ok_or_else(|| bad("zero iterations"))?;
        ring::pbkdf2::derive(
            pbkdf,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
            ring::hmac::sign(&ring::hmac::Key::new(hmac_alg, key), data)
                .as_ref()
                .to_vec()
        };
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(digest_alg, &client_key);
        let without_proof = format!("c={},r={}", B64.encode("n,,"), nonce);
        let auth_message = format!("{},{},{}", state.client_first_bare, text, without_proof);
        let client_signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        state.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(B64.encode(format!("{without_proof},p={}", B64.encode(proof))))
    }

    /// The server said +OK. For SCRAM the server must have proved itself,
    /// in a final challenge or in the +OK text.
    pub fn finish(&mut self, ok_text: &str) -> Result<(), AuthError> {
        if !matches!(self.kind, Sasl::ScramSha1 | Sasl::ScramSha256) || self.server_verified {
            return Ok(());
        }
        let mechanism = self.kind.name();
        if let Ok(data) = B64.decode(ok_text.trim())
            && !data.is_empty()
        {
            self.scram_step(&data)?;
        }
        if self.server_verified {
            Ok(())
        } else {
            Err(AuthError::MissingServerSignature { mechanism })
        }
    }

    /// The server's own words about a failed OAuth login (its JSON status).
    pub fn error_detail(&mut self) -> Option<String> {
        self.error_detail.take()
    }
}

/// RFC 5802 saslname: ',' and '=' escaped.
fn sasl_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn scram_attr(text: &str, attr: char) -> Option<&str> {
    text.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(attr) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

fn random_nonce() -> Result<String, AuthError> {
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::BadChallenge {
            mechanism: "SCRAM",
            detail: "no system randomness for the nonce".into(),
        })?;
    Ok(B64.encode(bytes))
}

#[cfg(test)]
impl SaslClient {
    fn with_nonce(kind: Sasl, user: &str, password: &str, nonce: &str) -> SaslClient {
        let mut c = SaslClient::new(kind, user, password).unwrap();
        let bare = format!("n={},r={}", sasl_name(user), nonce);
        c.scram = Some(ScramState {
            client_first_bare: bare,
            client_nonce: nonce.to_owned(),
            expected_server_signature: None,
        });
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capa(lines: &str) -> Capabilities {
        Capabilities::parse(lines.as_bytes())
    }

    #[test]
    fn strongest_offered_mechanism_is_chosen() {
        let c = capa("USER\nSASL PLAIN LOGIN SCRAM-SHA-1 CRAM-MD5\n");
        assert_eq!(
            choose(&[], &c, Some("+OK"), false).unwrap(),
            Mechanism::Sasl(Sasl::ScramSha1)
        );
        let c = capa("USER\n");
        assert_eq!(
            choose(&[], &c, Some("+OK"), false).unwrap(),
            Mechanism::User
        );
    }

    /// Issue 19: over TLS the default order is SCRAM-SHA-256, SCRAM-SHA-1,
    /// PLAIN, LOGIN, USER, CRAM-MD5, and APOP (or anything else) only when
    /// named; without TLS APOP goes first.
    #[test]
    fn apop_is_left_out_over_tls_and_first_in_clear() {
        let greeting = Some("+OK POP3 Ready <15191.1796164247@host>");
        let c = capa("USER\nSASL CRAM-MD5 LOGIN PLAIN CRAM-SHA256\n");
        assert_eq!(
            candidates(&[], &c, greeting, false).unwrap(),
            vec![
                Mechanism::Sasl(Sasl::Plain),
                Mechanism::Sasl(Sasl::Login),
                Mechanism::User,
                Mechanism::Sasl(Sasl::CramMd5),
            ]
        );
        assert_eq!(
            candidates(&[], &c, greeting, true).unwrap()[0],
            Mechanism::Apop
        );
        assert_eq!(
            candidates(&[Mechanism::Apop], &c, greeting, false).unwrap(),
            vec![Mechanism::Apop]
        );
        let why = explain(&[], &c, greeting, false);
        assert_eq!(why[0], "1. PLAIN");
        assert!(why.contains(&"4. CRAM-MD5".to_owned()), "{why:?}");
        assert!(
            why.contains(&"SCRAM-SHA-256: not offered by the server".to_owned()),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|l| l.starts_with("APOP: only when named in `auth`")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|l| l.starts_with("CRAM-SHA256: only when named")),
            "{why:?}"
        );
    }

    /// Issue 19: the password is SASLprep'd (RFC 4013) before SCRAM hashes
    /// it: a non-ASCII password in decomposed form (as some keyboards and
    /// files give it) proves the same as the composed one; a prohibited
    /// character is refused with exit 78.
    #[test]
    fn scram_saslprep_the_password() {
        let composed = "p\u{e4}ssw\u{f6}rd";
        let decomposed = "pa\u{308}sswo\u{308}rd";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let proof = |password: &str| {
            let mut c =
                SaslClient::with_nonce(Sasl::ScramSha256, "user", password, "rOprNGfwEbeRWgbNEkqO");
            c.step(&B64.encode(server_first)).unwrap()
        };
        assert_eq!(proof(composed), proof(decomposed));
        assert_ne!(proof(composed), proof("passwoerd"));
        // U+00A0 NO-BREAK SPACE maps to a plain space (RFC 4013 2.1).
        assert_eq!(proof("a\u{a0}b"), proof("a b"));
        let e = SaslClient::new(Sasl::ScramSha256, "user", "bad\u{7}bell")
            .err()
            .unwrap();
        assert!(matches!(e, AuthError::SaslPrep { .. }), "{e}");
        assert_eq!(e.exit_code(), ExitCode::Config);
        assert!(
            e.to_string()
                .contains("(SASLprep, RFC 4013: prohibited character)"),
            "the message names the problem, not the password's character: {e}"
        );
        // Other mechanisms send the password as given.
        assert!(SaslClient::new(Sasl::Plain, "user", "bad\u{7}bell").is_ok());
    }

    #[test]
    fn configured_mechanisms_are_tried_in_their_order_and_only_those() {
        let c = capa("USER\nSASL PLAIN SCRAM-SHA-256\n");
        assert_eq!(
            choose(
                &[
                    Mechanism::Sasl(Sasl::Plain),
                    Mechanism::Sasl(Sasl::ScramSha256)
                ],
                &c,
                Some(""),
                false
            )
            .unwrap(),
            Mechanism::Sasl(Sasl::Plain)
        );
        let e = choose(&[Mechanism::Sasl(Sasl::CramMd5)], &c, Some(""), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRAM-MD5") && e.contains("PLAIN"), "{e}");
    }

    /// Issue 14 item 14: after STLS the clear-text greeting's timestamp
    /// does not make APOP offered; asked for APOP alone, the error says why.
    #[test]
    fn apop_is_not_offered_after_stls() {
        let c = capa("USER\nSASL PLAIN\n");
        let greeting = "ready <1.2@host>";
        assert_eq!(
            choose(
                &[Mechanism::Apop, Mechanism::Sasl(Sasl::Plain)],
                &c,
                Some(greeting),
                false
            )
            .unwrap(),
            Mechanism::Apop
        );
        assert_eq!(
            choose(
                &[Mechanism::Apop, Mechanism::Sasl(Sasl::Plain)],
                &c,
                None,
                false
            )
            .unwrap(),
            Mechanism::Sasl(Sasl::Plain)
        );
        assert_eq!(
            choose(&[], &c, None, false).unwrap(),
            Mechanism::Sasl(Sasl::Plain)
        );
        let e = choose(&[Mechanism::Apop], &c, None, false).unwrap_err();
        assert!(matches!(e, AuthError::ApopAfterStls { .. }), "{e}");
        assert_eq!(e.exit_code(), ExitCode::NoPerm);
        let e = e.to_string();
        assert!(e.contains("RFC 2595") && e.contains("PLAIN, USER"), "{e}");
    }

    /// Issue 14 item 13: server text in errors is sanitised.
    #[test]
    fn offered_mechanisms_and_scram_errors_are_sanitised() {
        let c = capa("SASL X-\x1b[2J\u{202e}EVIL\n");
        let e = choose(&[Mechanism::Sasl(Sasl::CramMd5)], &c, Some(""), false)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\x1b') && !e.contains('\u{202e}'), "{e:?}");
        assert!(e.contains("X-\\x1b[2J"), "{e:?}");

        let mut client =
            SaslClient::with_nonce(Sasl::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        client.step(&B64.encode(server_first)).unwrap();
        let e = client
            .step(&B64.encode("e=other-error\x1b]0;owned\x07"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\x1b') && !e.contains('\x07'), "{e:?}");
        assert!(e.contains("other-error"), "{e:?}");
    }

    #[test]
    fn oauth_is_never_picked_unless_configured() {
        let c = capa("SASL XOAUTH2 OAUTHBEARER\n");
        assert!(choose(&[], &c, Some(""), false).is_err());
    }

    #[test]
    fn apop_digest_matches_rfc1939_example() {
        let d = apop_digest(
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
            "tanstaaf",
        )
        .unwrap();
        assert_eq!(d, "c4c9334bac560ecc979e58001b3e22fb");
    }

    #[test]
    fn cram_md5_matches_rfc2195_example() {
        let mut c = SaslClient::new(Sasl::CramMd5, "tim", "tanstaaftanstaaf").unwrap();
        let challenge = B64.encode("<1896.697170952@postoffice.reston.mci.net>");
        let answer = B64.decode(c.step(&challenge).unwrap()).unwrap();
        assert_eq!(answer, b"tim b913a602c7eda7a495b4e6e7334d3890");
    }

    #[test]
    fn cram_sha1_and_sha256_are_cram_md5_with_another_hmac() {
        let challenge = B64.encode("<1896.697170952@postoffice.reston.mci.net>");
        for (kind, digest) in [
            (Sasl::CramSha1, "8cb10ed0a8b764ab0e05125dd6eaa295f19b5943"),
            (
                Sasl::CramSha256,
                "f0011bbf7c1618ef90e3f18148e5eda4e15631c9c38ebef062bf7143ff72e944",
            ),
        ] {
            let mut c = SaslClient::new(kind, "tim", "tanstaaftanstaaf").unwrap();
            assert_eq!(c.initial_response().unwrap(), None);
            let answer = B64.decode(c.step(&challenge).unwrap()).unwrap();
            assert_eq!(answer, format!("tim {digest}").as_bytes());
        }
    }

    #[test]
    fn scram_sha1_matches_rfc5802_example_and_checks_the_server() {
        let mut c = SaslClient::with_nonce(
            Sasl::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        let server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let answer = B64
            .decode(c.step(&B64.encode(server_first)).unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        let good = B64.encode("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        assert_eq!(c.step(&good).unwrap(), "");
        c.finish("").unwrap();
    }

    #[test]
    fn scram_sha256_matches_rfc7677_example() {
        let mut c =
            SaslClient::with_nonce(Sasl::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let answer = B64
            .decode(c.step(&B64.encode(server_first)).unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let bad = B64.encode("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert!(matches!(c.step(&bad), Err(AuthError::BadServerSignature)));
    }

    #[test]
    fn scram_without_server_proof_is_refused() {
        let mut c =
            SaslClient::with_nonce(Sasl::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        c.step(&B64.encode(server_first)).unwrap();
        assert!(matches!(
            c.finish(""),
            Err(AuthError::MissingServerSignature { .. })
        ));
    }

    #[test]
    fn scram_refuses_a_nonce_that_does_not_extend_ours() {
        let mut c = SaslClient::with_nonce(Sasl::ScramSha256, "user", "pencil", "abc");
        let e = c
            .step(&B64.encode("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096"))
            .unwrap_err();
        assert!(matches!(e, AuthError::BadChallenge { .. }));
    }

    #[test]
    fn oauthbearer_error_challenge_is_answered_with_0x01_and_kept_for_the_user() {
        let mut c = SaslClient::new(Sasl::OauthBearer, "me@x", "tok").unwrap();
        let ir = B64.decode(c.initial_response().unwrap().unwrap()).unwrap();
        assert_eq!(ir, b"n,a=me@x,\x01auth=Bearer tok\x01\x01");
        let json = r#"{"status":"invalid_token"}"#;
        assert_eq!(c.step(&B64.encode(json)).unwrap(), "AQ==");
        assert_eq!(c.error_detail().as_deref(), Some(json));
    }

    #[test]
    fn deferred_initial_response_answers_the_first_empty_challenge() {
        let mut c = SaslClient::new(Sasl::Xoauth2, "me", &"t".repeat(400)).unwrap();
        let ir = c.initial_response().unwrap().unwrap();
        c.defer_initial(ir.clone());
        assert_eq!(c.step("").unwrap(), ir);
    }

    #[test]
    fn login_answers_user_then_password() {
        let mut c = SaslClient::new(Sasl::Login, "me", "pw").unwrap();
        assert_eq!(c.step(&B64.encode("Username:")).unwrap(), B64.encode("me"));
        assert_eq!(c.step(&B64.encode("Password:")).unwrap(), B64.encode("pw"));
    }
}
