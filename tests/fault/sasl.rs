//! The fault server's SASL exchanges (RFC 5034 AUTH): PLAIN, LOGIN,
//! XOAUTH2, OAUTHBEARER, SCRAM-SHA-1 and SCRAM-SHA-256.

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, Reply};

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// AUTH MECH [INITIAL-RESPONSE]: PLAIN, LOGIN, XOAUTH2, OAUTHBEARER,
    /// SCRAM-SHA-1, SCRAM-SHA-256. Every line the client sends during the
    /// exchange is recorded like a command. "*" cancels (RFC 5034).
    pub(super) async fn auth(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mechanism = args.first().map(|m| m.to_ascii_uppercase());
        let Some(mechanism) = mechanism else {
            return Ok(Reply::err("AUTH needs a mechanism"));
        };
        if !matches!(
            mechanism.as_str(),
            "PLAIN" | "LOGIN" | "XOAUTH2" | "OAUTHBEARER" | "SCRAM-SHA-1" | "SCRAM-SHA-256"
        ) {
            return Ok(Reply::err("unsupported mechanism"));
        }
        if mechanism == "LOGIN" {
            return self.auth_login(args.get(1).copied()).await;
        }
        // The initial response: on the AUTH line ("=" is an empty one), or
        // the answer to an empty challenge.
        let initial = match args.get(1) {
            Some(p) => (*p).to_owned(),
            None => match self.challenge(b"").await? {
                Some(line) => line,
                None => return Ok(self.no_answer()),
            },
        };
        if initial == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let initial = if initial == "=" {
            Vec::new()
        } else {
            match b64_decode(&initial) {
                Some(d) => d,
                None => return Ok(Reply::err("initial response is not base64")),
            }
        };
        match mechanism.as_str() {
            "PLAIN" => {
                let parts: Vec<&[u8]> = initial.split(|&b| b == 0).collect();
                let ok = {
                    let s = self.state();
                    parts.len() == 3
                        && parts[1] == s.user.as_bytes()
                        && parts[2] == s.password.as_bytes()
                };
                Ok(self.login_reply(ok))
            }
            "XOAUTH2" | "OAUTHBEARER" => self.auth_oauth(&mechanism, &initial).await,
            _ => self.auth_scram(&mechanism, &initial).await,
        }
    }

    /// AUTH LOGIN: "Username:" (unless the name came on the AUTH line), then
    /// "Password:", each answered in base64.
    pub(super) async fn auth_login(&mut self, initial: Option<&str>) -> std::io::Result<Reply> {
        let user = match initial {
            Some(line) => line.to_owned(),
            None => match self.challenge(b"Username:").await? {
                Some(line) => line,
                None => return Ok(self.no_answer()),
            },
        };
        if user == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let Some(password) = self.challenge(b"Password:").await? else {
            return Ok(self.no_answer());
        };
        if password == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let ok = {
            let s = self.state();
            b64_decode(&user).as_deref() == Some(s.user.as_bytes())
                && b64_decode(&password).as_deref() == Some(s.password.as_bytes())
        };
        Ok(self.login_reply(ok))
    }

    /// Send "+ BASE64(data)" (just "+ " when empty) and read the answer
    /// line, recorded; None when the client left.
    /// A hand-off server throws away what came before the challenge; a
    /// strict one ends the exchange (None, see `no_answer`) if the answer
    /// was sent before the challenge.
    pub(super) async fn challenge(&mut self, data: &[u8]) -> std::io::Result<Option<String>> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        self.before_reply(true).await;
        self.write(format!("+ {text}\r\n").as_bytes()).await?;
        self.note_ahead();
        let Some((line, ahead)) = self.next_line().await? else {
            return Ok(None);
        };
        if self.strict && ahead {
            self.refused_ahead = true;
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// XOAUTH2 (`user=U^Aauth=Bearer T^A^A`) and OAUTHBEARER (RFC 7628,
    /// `n,a=U,^Aauth=Bearer T^A^A`); the token is the password, or one
    /// `Builder::bearer` accepts. A wrong user or token gets the error
    /// challenge (the JSON status), then, whatever the answer, -ERR (the
    /// two steps Microsoft and Google describe).
    pub(super) async fn auth_oauth(
        &mut self,
        mechanism: &str,
        initial: &[u8],
    ) -> std::io::Result<Reply> {
        let text = String::from_utf8_lossy(initial).into_owned();
        let mut fields = text.split('\x01');
        let first = fields.next().unwrap_or_default();
        let user = if mechanism == "XOAUTH2" {
            first.strip_prefix("user=").map(str::to_owned)
        } else {
            // gs2-header "n,a=USER," (the authzid, with "=2C" and "=3D").
            first
                .split(',')
                .find_map(|f| f.strip_prefix("a="))
                .map(|u| u.replace("=2C", ",").replace("=3D", "="))
        };
        let token = fields.find_map(|f| {
            let (key, value) = f.split_once('=')?;
            if !key.eq_ignore_ascii_case("auth") {
                return None;
            }
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("Bearer")
                .then(|| token.to_owned())
        });
        let (ok, json) = {
            let s = self.state();
            let token_ok = match (&s.bearer, token.as_deref()) {
                (Some(check), Some(token)) => (check.0)(token),
                (None, token) => token == Some(s.password.as_str()),
                (Some(_), None) => false,
            };
            let ok =
                user.as_deref() == Some(s.user.as_str()) && token_ok && text.ends_with("\x01\x01");
            (ok, s.oauth_error.clone())
        };
        if ok {
            return Ok(self.login_reply(true));
        }
        // RFC 7628 3.2.2 / Google's XOAUTH2: the status as a challenge; the
        // client answers (0x01, or an empty line), then the failure.
        if self.challenge(json.as_bytes()).await?.is_none() {
            return Ok(self.no_answer());
        }
        Ok(Reply::err("[AUTH] invalid token"))
    }

    /// SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802) without channel binding: the
    /// client's proof is checked; the server signature is sent as a final
    /// challenge, and the login completes when the client answers it.
    pub(super) async fn auth_scram(
        &mut self,
        mechanism: &str,
        initial: &[u8],
    ) -> std::io::Result<Reply> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sha1 = mechanism == "SCRAM-SHA-1";
        let client_first = String::from_utf8_lossy(initial).into_owned();
        // gs2-header "n,," or "y,," then client-first-bare "n=USER,r=NONCE".
        let Some(bare) = client_first
            .strip_prefix("n,,")
            .or_else(|| client_first.strip_prefix("y,,"))
        else {
            return Ok(Reply::err("SCRAM: bad gs2 header"));
        };
        let bare = bare.to_owned();
        let (Some(user), Some(client_nonce)) = (scram_attr(&bare, 'n'), scram_attr(&bare, 'r'))
        else {
            return Ok(Reply::err("SCRAM: bad client-first message"));
        };
        let user = user.replace("=2C", ",").replace("=3D", "=");
        let (known_user, password, bad_signature) = {
            let s = self.state();
            (s.user.clone(), s.password.clone(), s.scram_bad_signature)
        };
        let salt = b"popsync-fault-salt";
        let iterations = 4096u32;
        let nonce = format!("{client_nonce}fAuLtSeRvErNoNcE");
        let server_first = format!("r={nonce},s={},i={iterations}", b64.encode(salt));
        let Some(answer) = self.challenge(server_first.as_bytes()).await? else {
            return Ok(self.no_answer());
        };
        if answer == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let Some(client_final) = b64_decode(&answer).and_then(|d| String::from_utf8(d).ok()) else {
            return Ok(Reply::err("SCRAM: client-final is not base64"));
        };
        let Some((without_proof, proof)) = client_final.rsplit_once(",p=") else {
            return Ok(Reply::err("SCRAM: no proof"));
        };
        if scram_attr(without_proof, 'r') != Some(nonce.as_str()) {
            return Ok(Reply::err("SCRAM: wrong nonce"));
        }
        let (pbkdf, hmac_alg, digest_alg, len) = if sha1 {
            (
                ring::pbkdf2::PBKDF2_HMAC_SHA1,
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                20,
            )
        } else {
            (
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                ring::hmac::HMAC_SHA256,
                &ring::digest::SHA256,
                32,
            )
        };
        let mut salted = vec![0u8; len];
        ring::pbkdf2::derive(
            pbkdf,
            std::num::NonZeroU32::new(iterations).expect("non-zero"),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
            ring::hmac::sign(&ring::hmac::Key::new(hmac_alg, key), data)
                .as_ref()
                .to_vec()
        };
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(digest_alg, &client_key);
        let client_signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let expected: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if user != known_user || b64_decode(proof) != Some(expected) {
            return Ok(self.login_reply(false));
        }
        let mut signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        if bad_signature {
            signature[0] ^= 0xff;
        }
        let server_final = format!("v={}", b64.encode(&signature));
        match self.challenge(server_final.as_bytes()).await? {
            None => Ok(self.no_answer()),
            Some(line) if line == "*" => Ok(Reply::err("AUTH cancelled")),
            Some(_) => Ok(self.login_reply(true)),
        }
    }
}

/// Base64 (standard alphabet, padded) to bytes; None if it is not.
pub(super) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// The value of `attr=` in a SCRAM message ("a=1,b=2").
pub(super) fn scram_attr(text: &str, attr: char) -> Option<&str> {
    text.split(',').find_map(|part| {
        let rest = part.strip_prefix(attr)?;
        rest.strip_prefix('=')
    })
}
