//! The fault server's implicit TLS: a CA and a certificate made per server,
//! and the handshake, where `On::TlsHandshake` faults fire.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::conn::serve;
use super::{Fault, MAX_HOLD, On, State, lock};

/// A CA and a server certificate for 127.0.0.1 (and "localhost"), made per
/// server; the CA's PEM lives in a temp dir that goes with the server.
pub(crate) struct TestTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) fingerprint: String,
    pub(crate) ca_path: PathBuf,
    pub(super) _dir: tempfile::TempDir,
}

impl TestTls {
    pub(crate) fn new() -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "popsync fault server test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let digest = ring::digest::digest(&ring::digest::SHA256, cert.der().as_ref());
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        let fingerprint = format!("sha256:{}", hex.join(":"));

        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write CA PEM");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server TLS config");
        TestTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
            ca_path,
            _dir: dir,
        }
    }
}

pub(super) async fn serve_tls(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
    i: usize,
) {
    let fault = lock(&state).fire(On::TlsHandshake);
    if let Some(fault) = fault {
        match fault {
            Fault::Stall(d) => tokio::time::sleep(d).await,
            Fault::Raw(bytes) => {
                let _ = tcp.write_all(&bytes).await;
            }
            _ => {
                let mut hello = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut hello)).await;
            }
        }
        return;
    }
    if let Ok(Ok(stream)) = tokio::time::timeout(MAX_HOLD, acceptor.accept(tcp)).await {
        serve(stream, state, i).await;
    }
}
