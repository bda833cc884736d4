//! `proxy = "socks5://[USER:PASSWORD@]HOST[:PORT]"` (or `socks5h://`, where
//! the proxy resolves the server's name, as Tor needs): the SOCKS5 proxy
//! (RFC 1928, user/password authentication by RFC 1929) an account's POP3
//! connection goes through.

use url::Url;

/// A SOCKS5 proxy, resolved from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `socks5h://`: the proxy resolves the server's host name.
    pub remote_dns: bool,
    /// User and password (RFC 1929).
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for Proxy {
    // Never print the proxy password, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Proxy {
    /// The proxy's URL without its password.
    pub fn describe(&self) -> String {
        let scheme = if self.remote_dns { "socks5h" } else { "socks5" };
        let user = self
            .auth
            .as_ref()
            .map(|(u, _)| format!("{u}:***@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{}:{}", self.host, self.port)
    }

    /// Parse a `proxy` value; the error says what is wrong.
    pub fn parse(value: &str) -> Result<Proxy, String> {
        let url = Url::parse(value).map_err(|e| {
            format!("{value:?} is not a proxy URL ({e}); write socks5://HOST:PORT or socks5h://HOST:PORT")
        })?;
        let remote_dns = match url.scheme() {
            "socks5" => false,
            "socks5h" => true,
            other => {
                return Err(format!(
                    "proxy scheme {other:?} is not supported; use socks5:// or socks5h:// (the proxy resolves names)"
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{value:?} names no proxy host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if url.path() != "" && url.path() != "/" || url.query().is_some() {
            return Err(format!("{value:?}: a proxy URL has no path or query"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| format!("{value:?}: the proxy user or password is not UTF-8"))
        };
        let auth = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(password)) if !user.is_empty() => {
                let (user, password) = (decode(user)?, decode(password)?);
                // RFC 1929: each at most 255 octets.
                if user.len() > 255 || password.is_empty() || password.len() > 255 {
                    return Err(format!(
                        "{value:?}: the proxy user and password must be 1 to 255 bytes each"
                    ));
                }
                Some((user, password))
            }
            _ => {
                return Err(format!(
                    "{value:?}: give the proxy both a user and a password (USER:PASSWORD@), or neither"
                ));
            }
        };
        Ok(Proxy {
            host,
            port: url.port().unwrap_or(1080),
            remote_dns,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_the_password_never_shown() {
        let p = Proxy::parse("socks5h://me:p%40ss@127.0.0.1:9050").unwrap();
        assert_eq!(
            p,
            Proxy {
                host: "127.0.0.1".into(),
                port: 9050,
                remote_dns: true,
                auth: Some(("me".into(), "p@ss".into())),
            }
        );
        assert_eq!(format!("{p:?}"), "socks5h://me:***@127.0.0.1:9050");
        let q = Proxy::parse("socks5://proxy.example").unwrap();
        assert_eq!((q.port, q.remote_dns, q.auth), (1080, false, None));
        assert_eq!(Proxy::parse("socks5://[::1]:1080").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (value, says) in [
            ("http://proxy:3128", "not supported"),
            ("socks5://me@proxy", "both a user and a password"),
            ("socks5://proxy/path", "no path"),
            ("proxy:1080", "not supported"),
            ("not a url", "not a proxy URL"),
        ] {
            let e = Proxy::parse(value).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
    }
}
