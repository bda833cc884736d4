//! Reaching a POP3 server through a SOCKS5 proxy (RFC 1928, with the user
//! and password authentication of RFC 1929), as `proxy = "socks5://..."`
//! asks: the proxy resolves the server's name with `socks5h://`, popsync
//! with `socks5://`. TLS, if any, runs inside the tunnel (`net`).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::Proxy;
use crate::net::{self, NetError};

/// Connect to `host:port` through a SOCKS5 `proxy`: the proxy is reached
/// like any host (`net::connect_tcp`), then asked (RFC 1928) for
/// the server by name with `socks5h://`, or by the address resolved here
/// with `socks5://`. `timeout` bounds the whole connect. TLS, if any, runs
/// inside the tunnel and checks the server's own name.
pub async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
    proxy: &Proxy,
) -> Result<TcpStream, NetError> {
    let server = format!("{host}:{port}");
    let deadline = tokio::time::Instant::now() + timeout;
    let tunnel = async {
        let socket = net::connect_tcp(&proxy.host, proxy.port, timeout).await?;
        let target = if proxy.remote_dns {
            tokio_socks::TargetAddr::Domain(host.into(), port)
        } else {
            let resolved = tokio::net::lookup_host((host, port)).await;
            let first = resolved
                .map(|mut a| a.next())
                .map_err(|source| NetError::Resolve {
                    host: host.to_owned(),
                    source,
                })?;
            let Some(addr) = first else {
                return Err(NetError::Resolve {
                    host: host.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no address"),
                });
            };
            tokio_socks::TargetAddr::Ip(addr)
        };
        let stream = match &proxy.auth {
            Some((user, password)) => {
                tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                    socket, target, user, password,
                )
                .await
            }
            None => tokio_socks::tcp::Socks5Stream::connect_with_socket(socket, target).await,
        };
        match stream {
            Ok(s) => Ok(s.into_inner()),
            Err(e) => Err(NetError::Proxy {
                server: server.clone(),
                proxy: proxy.describe(),
                refused_login: matches!(
                    e,
                    tokio_socks::Error::PasswordAuthFailure(_)
                        | tokio_socks::Error::NoAcceptableAuthMethods
                        | tokio_socks::Error::AuthorizationRequired
                ),
                detail: e.to_string(),
            }),
        }
    };
    match tokio::time::timeout_at(deadline, tunnel).await {
        Ok(result) => result,
        Err(_) => Err(NetError::ConnectTimeout { server, timeout }),
    }
}
