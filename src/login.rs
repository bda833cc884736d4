//! Session setup, shared by `fetch`, `check`, `peek` and `probe`: the
//! account's TLS settings, connect (implicit TLS, STLS, or clear text only
//! with `allow_plaintext`), CAPA, the choice of login mechanism and the
//! fallback between them, LOGIN-DELAY bookkeeping, and the `-vv` trace.
//! Everything after login (listing, plan, delivery) is `sync`'s.

use chrono::{DateTime, Utc};

use crate::config::{Account, Credential, SecretError, TlsMode};
use crate::exit::ExitCode;
use crate::net::{self, NetError, TlsSettings, Transport};
use crate::oauth::OAuthError;
use crate::pop3::auth::{self, AuthError};
use crate::pop3::codec::RespCode;
use crate::pop3::session::{Connection, Greeted, SessionError, Trace, Transaction};
use crate::sanitize::sanitize;
use crate::store::{self, Store, StoreError};
use crate::sync::RunOptions;
use crate::ui::Ui;

/// Why a session could not be set up. Each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{server}: {source}")]
    Auth { server: String, source: AuthError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{server} does not offer STLS, and tls = \"starttls\" forbids continuing in clear text; use tls = \"implicit\" (port 995) if the server has it"
    )]
    NoStls { server: String },
    #[error(
        "{server}: refusing to send the password over a connection without TLS; set tls = \"implicit\" or \"starttls\""
    )]
    Plaintext { server: String },
    #[error(
        "{server} allows a login only every {delay} s (LOGIN-DELAY) and the last one was at {last}; skipped, try again after {retry_at}, or now by hand with --ignore-login-delay (`popsync fetch {account} --ignore-login-delay`)"
    )]
    LoginDelay {
        server: String,
        account: String,
        delay: u64,
        last: DateTime<Utc>,
        retry_at: DateTime<Utc>,
    },
}

impl SetupError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SetupError::Secret(_) => ExitCode::Config,
            SetupError::OAuth(e) => e.exit_code(),
            SetupError::Net(e) => e.exit_code(),
            SetupError::Session(e) => e.exit_code(),
            SetupError::Auth { source, .. } => source.exit_code(),
            SetupError::Store(e) => e.exit_code(),
            SetupError::NoStls { .. } => ExitCode::NoPerm,
            SetupError::Plaintext { .. } => ExitCode::Config,
            SetupError::LoginDelay { .. } => ExitCode::TempFail,
        }
    }
}

/// A connection in the AUTHORIZATION state, secured as the account says.
pub struct Connected {
    pub greeted: Greeted<Transport>,
    /// The address actually connected to.
    pub peer: Option<std::net::SocketAddr>,
    /// With STLS: the capabilities the server announced before TLS.
    pub capa_before_tls: Option<crate::pop3::codec::Capabilities>,
}

/// The `-vv` protocol trace for an account, when asked for.
pub fn trace_for(account: &Account, ui: &Ui) -> Option<Trace> {
    ui.tracing().then(|| {
        let name = account.name.clone();
        Box::new(move |line: &str| crate::ui::stderr_line(&format!("{name}: {line}"))) as Trace
    })
}

/// The TLS settings of an account (`None` for `tls = "none"`).
pub fn tls_settings(account: &Account) -> Result<Option<TlsSettings>, SetupError> {
    Ok(match account.tls {
        TlsMode::None => None,
        _ => Some(TlsSettings::new(
            &account.host,
            account.port,
            account.ca_file.as_deref(),
            account.tls_fingerprint,
        )?),
    })
}

/// Connect and secure the connection: implicit TLS, or STLS (refusing to go
/// on in clear text when the server does not offer it), or plain TCP only
/// with `allow_plaintext`.
pub async fn connect(
    account: &Account,
    tls: Option<&TlsSettings>,
    trace: Option<Trace>,
) -> Result<Connected, SetupError> {
    let server = format!("{}:{}", account.host, account.port);
    let tcp = net::connect(
        &account.host,
        account.port,
        account.timeout,
        account.proxy.as_ref(),
    )
    .await?;
    let peer = tcp.peer_addr().ok();
    let new_conn = |stream, trace| Connection::new(stream, server.clone(), account.timeout, trace);
    let (greeted, capa_before_tls) = match (tls, account.tls) {
        (Some(tls), TlsMode::Implicit) => {
            let stream = tls.handshake(tcp, account.timeout).await?;
            (Greeted::start(new_conn(stream, trace)).await?, None)
        }
        (Some(tls), TlsMode::Starttls) => {
            let plain = Greeted::start(new_conn(Transport::Plain(tcp), trace)).await?;
            if !plain.capa.stls() {
                return Err(SetupError::NoStls { server });
            }
            let before = plain.capa.clone();
            let (stream, settings) = plain.stls().await?;
            let Transport::Plain(tcp) = stream else {
                return Err(SetupError::NoStls { server });
            };
            let secured = tls.handshake(tcp, account.timeout).await?;
            // RFC 2595: forget what was learnt in clear text, the greeting
            // and its APOP timestamp included; ask CAPA again.
            let mut g = Greeted::resume(settings.resume(secured), String::new());
            g.refresh_capa().await?;
            (g, Some(before))
        }
        _ => {
            if !account.allow_plaintext {
                return Err(SetupError::Plaintext { server });
            }
            (
                Greeted::start(new_conn(Transport::Plain(tcp), trace)).await?,
                None,
            )
        }
    };
    Ok(Connected {
        greeted,
        peer,
        capa_before_tls,
    })
}

/// The login mechanism popsync would use with this server.
pub fn mechanism(
    account: &Account,
    greeted: &Greeted<Transport>,
) -> Result<auth::Mechanism, SetupError> {
    auth::choose(
        &account.mechanisms(),
        &greeted.capa,
        greeting_for_auth(account, greeted),
        account.tls == TlsMode::None,
    )
    .map_err(|source| SetupError::Auth {
        server: greeted.conn.server().to_owned(),
        source,
    })
}

/// For `probe`: the mechanisms popsync would try with this server, in
/// order, then why each other one is left out.
pub fn mechanism_order(account: &Account, greeted: &Greeted<Transport>) -> Vec<String> {
    auth::explain(
        &account.mechanisms(),
        &greeted.capa,
        greeting_for_auth(account, greeted),
        account.tls == TlsMode::None,
    )
}

/// The greeting that may vouch for APOP: none after STLS, where it came in
/// clear text (RFC 2595), so that APOP is not offered then.
fn greeting_for_auth<'a>(account: &Account, greeted: &'a Greeted<Transport>) -> Option<&'a str> {
    (account.tls != TlsMode::Starttls).then_some(greeted.greeting.as_str())
}

/// The longest LOGIN-DELAY (seconds) honoured. RFC 2449 sets no bound, and a
/// broken or hostile server may announce any number; more than a day between
/// logins is not a real policy, and a bounded value can be added to a time.
const MAX_LOGIN_DELAY: u64 = 24 * 60 * 60;

/// A logged-in session: LOGIN-DELAY honoured (the account is skipped while
/// the server's delay since the last login has not passed), the secret
/// fetched, connected, logged in. Every command that logs in goes through
/// here and then `record_login`, `check`, `peek` and `--dry-run` included:
/// the server counts their logins too. The listing may already be on its
/// way (`Greeted::into_listing_transaction`): `Transaction::listing` comes
/// next.
pub async fn open_session(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
) -> Result<Transaction<Transport>, SetupError> {
    if let Some(store::LastLogin {
        at: last,
        login_delay: Some(delay),
    }) = store.last_login(&account.name)?
        && !opts.ignore_login_delay
    {
        // Clamped here too: a store written by an older popsync may hold
        // any value the server sent.
        let delay = delay.min(MAX_LOGIN_DELAY);
        // At most a day: the cast cannot wrap.
        let retry_at = last
            .checked_add_signed(chrono::Duration::seconds(delay as i64))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if opts.now < retry_at {
            return Err(SetupError::LoginDelay {
                server: format!("{}:{}", account.host, account.port),
                account: account.name.clone(),
                delay,
                last,
                retry_at,
            });
        }
    }
    let password = secret(account, &opts.state_dir, None)?;
    let outcome = login(account, &password, opts).await;
    match outcome {
        // The provider may have revoked the access token early, or the
        // clocks disagree: refresh it once and try once more.
        Err(SetupError::Session(SessionError::AuthFailed { code, .. }))
            if matches!(account.credential, Credential::OAuth(_))
                && !code.as_ref().is_some_and(|c| c.is_temporary()) =>
        {
            opts.ui.verbose(&format!(
                "{}: the server refused the access token; refreshing it and trying again",
                account.name
            ));
            let fresh = secret(account, &opts.state_dir, Some(&password))?;
            login(account, &fresh, opts).await
        }
        outcome => outcome,
    }
}

/// The secret an account logs in with: its password (or a token helper's
/// token), or with `oauth` the stored access token, refreshed when it is
/// about to expire or is `rejected`. Blocking work goes through
/// `command::blocking`.
pub fn secret(
    account: &Account,
    state_dir: &std::path::Path,
    rejected: Option<&str>,
) -> Result<String, SetupError> {
    Ok(match &account.credential {
        Credential::Secret(s) => crate::command::blocking(|| s.resolve(account.command_timeout))?,
        Credential::OAuth(_) => {
            crate::command::blocking(|| crate::oauth::access_token(account, state_dir, rejected))?
        }
    })
}

/// Remember a login and the server's LOGIN-DELAY (from the capabilities
/// after login, so call it after `listing`).
pub fn record_login(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
    session: &Transaction<Transport>,
) -> Result<(), SetupError> {
    let delay = session.capa.login_delay().map(|d| d.min(MAX_LOGIN_DELAY));
    Ok(store.record_login(&account.name, opts.now, delay)?)
}

/// Connect, secure the connection as configured, and log in.
async fn login(
    account: &Account,
    password: &str,
    opts: &RunOptions,
) -> Result<Transaction<Transport>, SetupError> {
    let tls = tls_settings(account)?;
    let mut greeted = connect(account, tls.as_ref(), trace_for(account, &opts.ui))
        .await?
        .greeted;
    authenticate(account, &mut greeted, password, &opts.ui).await?;
    Ok(greeted.into_listing_transaction().await?)
}

/// Log in with the first mechanism of the account's order that works, the
/// way `fetch` and `probe --login` both do; the mechanism that worked.
/// The next one is tried only when nothing was sent that could count
/// against the account: an AUTH mechanism refused without [AUTH] or a
/// busy code, or a password SCRAM cannot send (SASLprep refuses it).
pub async fn authenticate(
    account: &Account,
    greeted: &mut Greeted<Transport>,
    password: &str,
    ui: &Ui,
) -> Result<auth::Mechanism, SetupError> {
    let server = greeted.conn.server().to_owned();
    let candidates = auth::candidates(
        &account.mechanisms(),
        &greeted.capa,
        greeting_for_auth(account, greeted),
        account.tls == TlsMode::None,
    )
    .map_err(|source| SetupError::Auth {
        server: server.clone(),
        source,
    })?;
    let mut tried = candidates.iter();
    while let Some(&mech) = tried.next() {
        ui.verbose(&format!(
            "{}: logging in to {server} as {} with {}",
            account.name,
            account.user,
            mech.name()
        ));
        let err = match greeted.authenticate(&account.user, password, mech).await {
            Ok(()) => return Ok(mech),
            Err(e) => e,
        };
        let why = match &err {
            _ if tried.len() == 0 => None,
            // The server refused an AUTH mechanism without saying the
            // credentials are wrong ([AUTH]) or that it is busy: try the next
            // one it offers. Never after [AUTH], and never after a refused
            // PASS or APOP: that is how accounts get locked.
            SessionError::AuthFailed {
                code: None | Some(RespCode::Other(_)),
                text,
                ..
            } if matches!(mech, auth::Mechanism::Sasl(_)) => {
                Some(format!("was refused ({})", sanitize(text.as_bytes(), 120)))
            }
            // SASLprep refused the password before anything was sent.
            SessionError::Auth {
                source: source @ auth::AuthError::SaslPrep { .. },
                ..
            } => Some(format!("cannot be used: {source}")),
            _ => None,
        };
        match why {
            Some(why) => ui.verbose(&format!(
                "{}: {} {why}; trying the next mechanism",
                account.name,
                mech.name(),
            )),
            None => return Err(err.into()),
        }
    }
    Err(SetupError::Session(SessionError::NoUsableAuth {
        server,
        message: "no login mechanism to try".into(),
    }))
}
