//! Getting a byte stream to the server: TCP with a timeout (every address
//! raced by `eyeballs`, or through a SOCKS5 proxy by `socks`), implicit TLS,
//! the STLS upgrade, and certificate verification (system roots plus
//! `ca_file`, or a `tls_fingerprint` pin; host name always checked; TLS 1.2
//! or newer).
//!
//! `login` (session setup, which `fetch`, `check`, `peek` and `probe` share)
//! and the IMAP target connect through this; `probe` also reads certificates
//! with it. The
//! session layer above sees any `AsyncRead + AsyncWrite`; `Transport` is the
//! concrete stream for real servers.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{Fingerprint, Proxy};
use crate::exit::ExitCode;

/// A failure to reach or secure the server.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot resolve host name {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: io::Error },
    #[error("connecting to {server} timed out after {}s (timeout)", timeout.as_secs())]
    ConnectTimeout { server: String, timeout: Duration },
    #[error("TLS certificate of {server} {problem}")]
    Certificate { server: String, problem: String },
    #[error("TLS handshake with {server} failed: {detail}")]
    Handshake { server: String, detail: String },
    #[error("TLS handshake with {server} timed out after {}s (timeout)", timeout.as_secs())]
    HandshakeTimeout { server: String, timeout: Duration },
    #[error("cannot load ca_file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("cannot reach {server} through the proxy {proxy}: {detail}")]
    Proxy {
        server: String,
        proxy: String,
        detail: String,
        /// The proxy refused our user and password (RFC 1929).
        refused_login: bool,
    },
}

impl NetError {
    /// DESIGN.md: unreachable 69; certificate problems 77; bad ca_file 78;
    /// timeouts 75; a server that breaks the TLS protocol 76.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            NetError::Resolve { .. } | NetError::Connect { .. } => ExitCode::Unavailable,
            NetError::ConnectTimeout { .. } | NetError::HandshakeTimeout { .. } => {
                ExitCode::TempFail
            }
            NetError::Certificate { .. } => ExitCode::NoPerm,
            NetError::Handshake { .. } => ExitCode::Protocol,
            NetError::CaFile { .. } | NetError::ServerName { .. } => ExitCode::Config,
            NetError::Proxy {
                refused_login: true,
                ..
            } => ExitCode::NoPerm,
            NetError::Proxy { .. } => ExitCode::Unavailable,
        }
    }
}

/// A TCP stream, plain or inside TLS.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    Plain(TcpStream),
    Tls(tokio_rustls::client::TlsStream<TcpStream>),
}

impl std::fmt::Debug for Transport {
    // The IMAP client wants its stream printable; what matters is which.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain(_) => "Transport::Plain",
            Transport::Tls(_) => "Transport::Tls",
        })
    }
}

impl Transport {
    /// Whether the stream is encrypted (credentials may be sent).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// TLS facts for `probe` and `-v`: protocol version, cipher suite, and the
    /// server's certificate chain.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Transport::Tls(s) = self else { return None };
        let conn = s.get_ref().1;
        Some(TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}").replace('_', "."))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            chain: conn
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                .unwrap_or_default(),
        })
    }
}

/// What a TLS handshake settled.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub chain: Vec<CertificateDer<'static>>,
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connect over TCP to `host:port`: every address the name resolves to
/// (A and AAAA), raced by Happy Eyeballs (RFC 8305), so that an unreachable
/// address costs 250 ms instead of the whole timeout. `timeout` bounds the
/// resolution and the whole race.
pub async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, NetError> {
    let server = format!("{host}:{port}");
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs: Vec<_> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(source)) => {
                return Err(NetError::Resolve {
                    host: host.to_owned(),
                    source,
                });
            }
            Err(_) => return Err(NetError::ConnectTimeout { server, timeout }),
        };
    let race = crate::eyeballs::race(addrs, crate::eyeballs::ATTEMPT_DELAY, TcpStream::connect);
    match tokio::time::timeout_at(deadline, race).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(NetError::Connect { server, source }),
        Err(_) => Err(NetError::ConnectTimeout { server, timeout }),
    }
}

/// Connect to `host:port` directly (`connect_tcp`), or through a SOCKS5
/// `proxy` (`socks::connect`). `timeout` bounds the whole connect.
pub async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
    proxy: Option<&Proxy>,
) -> Result<TcpStream, NetError> {
    match proxy {
        None => connect_tcp(host, port, timeout).await,
        Some(proxy) => crate::socks::connect(host, port, timeout, proxy).await,
    }
}

/// The system's trust anchors as certificates, read once per process: they
/// are the same for every account, and reading and parsing some hundred
/// certificates costs milliseconds each time. Unreadable system certificates
/// are skipped: a machine with none still works with `ca_file` or a pin.
fn system_certs() -> &'static [CertificateDer<'static>] {
    static CERTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    CERTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The system's trust anchors as a root store (built once, as above, and
/// shared by every account without a `ca_file`).
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        for cert in system_certs() {
            let _ = roots.add(cert.clone());
        }
        Arc::new(roots)
    })
}

/// The certificates of a `ca_file` (PEM); an empty file is an error.
fn ca_file_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let ca_err = |detail: String| NetError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificates in it".into()));
    }
    Ok(certs)
}

/// The trust anchors the POP3 side uses (system roots plus `ca_file`), as
/// certificates, for the HTTPS client of the OAuth2 endpoints.
pub fn trust_anchor_certs(
    ca_file: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let mut certs = system_certs().to_vec();
    if let Some(path) = ca_file {
        certs.extend(ca_file_certs(path)?);
    }
    Ok(certs)
}

/// Start reading the system's trust anchors in the background, so that it
/// overlaps with reading the configuration and opening the seen-store
/// instead of delaying the first connection.
pub fn preload_system_roots() {
    std::thread::spawn(system_roots);
}

/// TLS settings for one account.
#[derive(Clone)]
pub struct TlsSettings {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    pinned: bool,
    presented: Arc<Mutex<Vec<CertificateDer<'static>>>>,
}

impl TlsSettings {
    /// Build the verifier: system roots plus `ca_file`, or the pin.
    pub fn new(
        host: &str,
        port: u16,
        ca_file: Option<&Path>,
        pin: Option<Fingerprint>,
    ) -> Result<TlsSettings, NetError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match ca_file {
            None => system_roots().clone(),
            Some(path) => {
                let mut roots = RootCertStore::clone(system_roots());
                for cert in ca_file_certs(path)? {
                    roots.add(cert).map_err(|e| NetError::CaFile {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?;
                }
                Arc::new(roots)
            }
        };
        let webpki = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .ok()
        };
        let presented = Arc::new(Mutex::new(Vec::new()));
        let verifier = Arc::new(Verifier {
            webpki,
            presented: presented.clone(),
            pin,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| NetError::Handshake {
                server: format!("{host}:{port}"),
                detail: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| NetError::ServerName {
                host: host.to_owned(),
            })?;
        Ok(TlsSettings {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            host: host.to_owned(),
            port,
            pinned: pin.is_some(),
            presented,
        })
    }

    /// The certificate chain the server presented in the last handshake,
    /// whether or not it was accepted.
    pub fn presented_chain(&self) -> Vec<CertificateDer<'static>> {
        self.presented.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Run the TLS handshake over an established TCP stream (implicit TLS, or
    /// after STLS was accepted).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<Transport, NetError> {
        let server = format!("{}:{}", self.host, self.port);
        match tokio::time::timeout(
            timeout,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(s)) => Ok(Transport::Tls(s)),
            Ok(Err(e)) => Err(self.classify(server, e)),
            Err(_) => Err(NetError::HandshakeTimeout { server, timeout }),
        }
    }

    fn classify(&self, server: String, e: io::Error) -> NetError {
        let rustls_err = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let Some(rustls::Error::InvalidCertificate(cert)) = rustls_err else {
            let detail = match rustls_err {
                Some(r) => r.to_string(),
                None if e.kind() == io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection (is this port really TLS? for STLS on port 110 use tls = \"starttls\")".into()
                }
                None => e.to_string(),
            };
            return NetError::Handshake { server, detail };
        };
        let host = &self.host;
        let problem = match cert {
            CertificateError::UnknownIssuer => "is not trusted: it is issued by an authority that is neither in the system roots nor in ca_file; if you run your own CA, set ca_file = \"/path/to/ca.pem\", or pin this certificate with tls_fingerprint (see `popsync probe`)".to_owned(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "is not valid for the host name {host:?} ({cert:?}); set host to a name the certificate lists"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "has expired ({cert:?}); the server's administrator must renew it"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "is not valid yet ({cert:?}); check this machine's clock"
            ),
            CertificateError::ApplicationVerificationFailure if self.pinned => {
                "does not match tls_fingerprint; if the server's certificate was renewed, check the new one with `popsync probe` and update tls_fingerprint".to_owned()
            }
            other => format!("was rejected: {other:?}"),
        };
        NetError::Certificate { server, problem }
    }
}

/// Chain verification by webpki, or, with a pin, the pin plus the host name.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// The chain the server presented, kept even when it is rejected, so
    /// that `probe` can show the certificate a person may want to pin.
    presented: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// SHA-256 of a DER certificate: what `tls_fingerprint` pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.presented.lock() {
            *seen = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        if let Some(pin) = self.pin {
            if fingerprint(end_entity) != pin {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
            // The pin replaces the chain of trust, not the host name check.
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            cert.verify_is_valid_for_subject_name(server_name)
                .map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                })?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
