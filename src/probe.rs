//! `popsync probe ACCOUNT`: what a person needs to configure or debug an
//! account — the address connected, TLS version and cipher, the server's
//! certificate (ready to paste as `tls_fingerprint`, shown even when it is not
//! trusted), CAPA before and after STLS, SASL mechanisms and the one popsync
//! would use, LOGIN-DELAY, EXPIRE, PIPELINING; with `--login`, whether the
//! login works. Changes nothing on the server or on disk.

use std::path::Path;

use serde::Serialize;

use crate::config::{Account, Delivery};
use crate::deliver::imap::{self, ImapError, probe::ImapReport};
use crate::exit::ExitCode;
use crate::login::{self, SetupError};
use crate::net::{self, NetError, Transport};
use crate::pop3::codec::{Capabilities, Expire};
use crate::pop3::session::Greeted;
use crate::sanitize::sanitize;
use crate::ui::Ui;

/// One certificate, described.
#[derive(Debug, Clone, Serialize)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub sha256: String,
}

/// Everything `probe` found out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub account: String,
    pub server: String,
    /// The account's SOCKS5 proxy (its password masked); `address` is then
    /// the proxy's.
    pub proxy: Option<String>,
    pub address: Option<String>,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub certificates: Vec<CertFacts>,
    pub certificate_verified: Option<bool>,
    pub capa_before_tls: Option<Vec<String>>,
    pub capa: Vec<String>,
    pub sasl: Vec<String>,
    pub would_use: Option<String>,
    /// The mechanisms popsync would try, in order, then why each other one
    /// is left out.
    pub auth_order: Vec<String>,
    pub login_delay: Option<u64>,
    pub expire: Option<String>,
    pub pipelining: bool,
    pub login: Option<String>,
    pub capa_after_login: Option<Vec<String>>,
    /// The IMAP delivery target, when the account has one.
    pub imap: Option<ImapReport>,
    pub error: Option<String>,
    #[serde(skip)]
    pub code: ExitCode,
}

fn capa_lines(c: &Capabilities) -> Vec<String> {
    c.lines().map(|l| sanitize(l.as_bytes(), 200)).collect()
}

/// The longest certificate subject or issuer shown, in characters.
const MAX_NAME: usize = 500;

/// Describe a DER certificate; unparseable ones still get their fingerprint.
pub fn describe_cert(der: &pki_types::CertificateDer<'_>) -> CertFacts {
    let sha256 = net::fingerprint(der).to_string();
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        // The names are server text, bound for a terminal.
        Ok((_, cert)) => CertFacts {
            subject: sanitize(cert.subject().to_string().as_bytes(), MAX_NAME),
            issuer: sanitize(cert.issuer().to_string().as_bytes(), MAX_NAME),
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
            sha256,
        },
        Err(e) => CertFacts {
            subject: format!("(unparseable certificate: {e})"),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            sha256,
        },
    }
}

/// Probe one account.
pub async fn probe(account: &Account, state_dir: &Path, login: bool, ui: &Ui) -> Report {
    let mut report = Report {
        account: account.name.clone(),
        server: format!("{}:{}", account.host, account.port),
        proxy: account.proxy.as_ref().map(crate::config::Proxy::describe),
        ..Report::default()
    };
    if let Err(e) = run(account, state_dir, login, ui, &mut report).await {
        report.code = e.exit_code();
        report.error = Some(e.to_string());
    }
    if let Delivery::Imap(spec) = &account.deliver {
        let mut imap = ImapReport::default();
        let password = || {
            spec.secret
                .resolve(account.command_timeout)
                .map_err(ImapError::Secret)
        };
        let probed = imap::probe::probe(spec, login, password, account.timeout, &mut imap).await;
        report.imap = Some(imap);
        // The POP3 side's failure is named first: it is the one to fix first.
        if let Err(e) = probed
            && report.error.is_none()
        {
            report.code = e.exit_code();
            report.error = Some(e.to_string());
        }
    }
    report
}

async fn run(
    account: &Account,
    state_dir: &Path,
    login: bool,
    ui: &Ui,
    report: &mut Report,
) -> Result<(), SetupError> {
    let tls = login::tls_settings(account)?;
    let connected = login::connect(account, tls.as_ref(), login::trace_for(account, ui)).await;
    if let Some(tls) = &tls {
        report.certificates = tls.presented_chain().iter().map(describe_cert).collect();
    }
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            if let SetupError::Net(NetError::Certificate { .. }) = e {
                report.certificate_verified = Some(false);
            }
            return Err(e);
        }
    };
    report.address = connected.peer.map(|a| a.to_string());
    report.capa_before_tls = connected.capa_before_tls.as_ref().map(capa_lines);
    let mut greeted: Greeted<Transport> = connected.greeted;
    if let Some(info) = greeted.conn.stream().tls_info() {
        report.tls_version = Some(info.version);
        report.tls_cipher = Some(info.cipher);
        report.certificate_verified = Some(true);
    }
    describe_capa(&greeted.capa, report);
    let mech = login::mechanism(account, &greeted);
    report.auth_order = login::mechanism_order(account, &greeted);
    report.would_use = Some(match &mech {
        Ok(m) => m.name().to_owned(),
        Err(e) => format!("none: {e}"),
    });
    if !login {
        let mut conn = greeted.conn;
        let _ = conn.simple(&crate::pop3::codec::Command::Quit).await;
        return Ok(());
    }
    // No mechanism to use: said before the secret is asked for.
    mech?;
    let password = login::secret(account, state_dir, None)?;
    // The same order and fallback as `fetch`, so that what probe says
    // works is what a fetch will do.
    let logged_in = match login::authenticate(account, &mut greeted, &password, ui).await {
        Ok(mech) => greeted
            .into_transaction()
            .await
            .map(|session| (mech, session))
            .map_err(SetupError::from),
        Err(e) => Err(e),
    };
    match logged_in {
        Ok((mech, session)) => {
            report.login = Some(format!("ok ({})", mech.name()));
            report.capa_after_login = Some(capa_lines(&session.capa));
            describe_capa(&session.capa, report);
            let _ = session.quit().await;
            Ok(())
        }
        Err(e) => {
            report.login = Some("failed".into());
            Err(e)
        }
    }
}

fn describe_capa(capa: &Capabilities, report: &mut Report) {
    if report.capa_after_login.is_none() {
        report.capa = capa_lines(capa);
        report.sasl = capa
            .sasl_mechanisms()
            .iter()
            .map(|m| sanitize(m.as_bytes(), 40))
            .collect();
    }
    report.login_delay = capa.login_delay().or(report.login_delay);
    report.expire = match capa.expire() {
        Some(Expire::Never) => Some("never".into()),
        Some(Expire::Days(d)) => Some(format!("{d} days")),
        None => report.expire.take(),
    };
    report.pipelining |= capa.pipelining();
}

impl Report {
    /// The human-readable form, one fact per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<19} {v}\n"));
        line("account:", &self.account);
        line("server:", &self.server);
        if let Some(p) = &self.proxy {
            line("proxy:", p);
        }
        match (&self.address, &self.proxy) {
            (Some(a), Some(_)) => line("address:", &format!("{a} (the proxy)")),
            (Some(a), None) => line("address:", a),
            (None, _) => {}
        }
        if let (Some(v), Some(c)) = (&self.tls_version, &self.tls_cipher) {
            line("tls:", &format!("{v}, {c}"));
        }
        for (i, c) in self.certificates.iter().enumerate() {
            let label = if i == 0 { "certificate:" } else { "chain:" };
            line(label, &format!("subject {}", c.subject));
            line("", &format!("issuer  {}", c.issuer));
            line("", &format!("valid   {} .. {}", c.not_before, c.not_after));
            line("", &c.sha256);
        }
        if let Some(first) = self.certificates.first() {
            line(
                "pin with:",
                &format!("tls_fingerprint = \"{}\"", first.sha256),
            );
        }
        match self.certificate_verified {
            Some(true) => line("verified:", "yes"),
            Some(false) => line("verified:", "NO (see the error below)"),
            None => {}
        }
        if let Some(before) = &self.capa_before_tls {
            line("capa before STLS:", &before.join(" | "));
        }
        if !self.capa.is_empty() {
            line("capa:", &self.capa.join(" | "));
        }
        line(
            "sasl:",
            &if self.sasl.is_empty() {
                "(none)".to_owned()
            } else {
                self.sasl.join(" ")
            },
        );
        for (i, l) in self.auth_order.iter().enumerate() {
            line(if i == 0 { "auth order:" } else { "" }, l);
        }
        if let Some(m) = &self.would_use {
            line("would use:", m);
        }
        line(
            "login-delay:",
            &self.login_delay.map_or("none".into(), |d| format!("{d} s")),
        );
        line("expire:", self.expire.as_deref().unwrap_or("not announced"));
        line("pipelining:", if self.pipelining { "yes" } else { "no" });
        if let Some(l) = &self.login {
            line("login:", l);
        }
        if let Some(after) = &self.capa_after_login {
            line("capa after login:", &after.join(" | "));
        }
        if let Some(imap) = &self.imap {
            imap.lines(&mut line);
        }
        if let Some(e) = &self.error {
            line("error:", e);
        }
        out
    }
}
