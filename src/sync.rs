//! One account, end to end: lock, resolve interrupted deliveries, connect,
//! log in, list, plan, then deliver → commit → DELE → QUIT. That order, which
//! keeps DESIGN.md's promises, lives here and only here.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::{Account, Delivery, Retention, SecretError, TlsMode};
use crate::deliver::maildir::Maildir;
use crate::deliver::mbox::Mbox;
use crate::deliver::mda::Mda;
use crate::deliver::{self, DeliveryError, MessageInfo, Prepared, Target};
use crate::exit::ExitCode;
use crate::filter::{self, FilterError};
use crate::net::{self, NetError, TlsSettings, Transport};
use crate::policy::{self, Action, DeleteReason, Plan, PlanSettings, SkipReason, Verdicts};
use crate::pop3::auth::{self, AuthError};
use crate::pop3::codec::{Expire, RespCode};
use crate::pop3::session::{BodyError, Connection, Greeted, SessionError, Trace, Transaction};
use crate::report::{AccountReport, Tally, report};
use crate::sanitize::sanitize;
use crate::store::{self, PendingRow, Store, StoreError};
use crate::ui::Ui;
use crate::window::{self, Window};

/// Most mail (server octets) delivered in one batch before it is synced and
/// committed; and the longest a batch may take.
const BATCH_BYTES: u64 = 32 << 20;
const BATCH_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Most header bytes handed to a filter.
const MAX_FILTER_HEADERS: usize = 1 << 20;

/// Settings of one run that are not per account.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub now: DateTime<Utc>,
    pub dry_run: bool,
    pub accept_uidl_reset: bool,
    pub ui: Ui,
}

/// Why an account's session failed. Each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "another popsync run is working on this account (lock {}); skipped, the next run will catch up",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot create lock file {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Session(SessionError),
    #[error("{server}: {source}")]
    Auth { server: String, source: AuthError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Filter(FilterError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(
        "{server} does not offer STLS, and tls = \"starttls\" forbids continuing in clear text; use tls = \"implicit\" (port 995) if the server has it"
    )]
    NoStls { server: String },
    #[error(
        "{server}: refusing to send the password over a connection without TLS; set tls = \"implicit\" or \"starttls\""
    )]
    Plaintext { server: String },
    #[error(
        "{server}: every one of the {on_server} UIDLs on the server is unknown, while the seen-store knows {known} messages of this account: the server has probably renumbered its UIDLs. Nothing was fetched, to avoid downloading the whole mailbox again. If you do want everything again, run `popsync fetch {account} --accept-uidl-reset`"
    )]
    UidlReset {
        server: String,
        account: String,
        on_server: usize,
        known: usize,
    },
    #[error(
        "{server} allows a login only every {delay} s (LOGIN-DELAY) and the last one was at {last}; skipped, try again after {retry_at}"
    )]
    LoginDelay {
        server: String,
        delay: u64,
        last: DateTime<Utc>,
        retry_at: DateTime<Utc>,
    },
    #[error(
        "the seen-store records an interrupted delivery to {target:?}, which popsync cannot check; resolve it with `popsync seen forget`"
    )]
    UnknownPending { target: String },
}

impl From<SessionError> for SyncError {
    fn from(e: SessionError) -> Self {
        SyncError::Session(e)
    }
}

impl From<BodyError<DeliveryError>> for SyncError {
    /// A RETR streamed into a delivery: the session failed, or the delivery.
    fn from(e: BodyError<DeliveryError>) -> Self {
        match e {
            BodyError::Session(e) => SyncError::Session(e),
            BodyError::Sink(e) => SyncError::Delivery(e),
        }
    }
}

impl SyncError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SyncError::Locked { .. } | SyncError::LoginDelay { .. } => ExitCode::TempFail,
            SyncError::LockFile { .. } => ExitCode::IoError,
            SyncError::Secret(_) => ExitCode::Config,
            SyncError::Net(e) => e.exit_code(),
            SyncError::Session(e) => e.exit_code(),
            SyncError::Auth { source, .. } => source.exit_code(),
            SyncError::Store(e) => e.exit_code(),
            SyncError::Filter(e) => e.exit_code(),
            SyncError::Delivery(e) => e.exit_code(),
            SyncError::NoStls { .. } => ExitCode::NoPerm,
            SyncError::Plaintext { .. } => ExitCode::Config,
            SyncError::UidlReset { .. } => ExitCode::Protocol,
            SyncError::UnknownPending { .. } => ExitCode::IoError,
        }
    }
}

/// Sync one account. Never panics on server or disk input; every failure
/// becomes the report's error and exit code.
pub async fn run_account(account: &Account, opts: &RunOptions) -> AccountReport {
    let started = Instant::now();
    let mut tally = Tally::default();
    let result = sync(account, opts, &mut tally).await;
    report(account, started, tally, result)
}

/// A logged-in session and its plan.
pub(crate) struct Planned {
    pub(crate) session: Transaction<Transport>,
    pub(crate) plan: Plan,
    /// A header filter failed for some message (it stays on the server).
    pub(crate) filter_error: Option<FilterError>,
}

/// Everything up to the plan: LOGIN-DELAY, secret, connect, log in, list.
pub(crate) async fn connect_and_plan(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
    tally: &mut Tally,
) -> Result<Planned, SyncError> {
    let mut session = open_session(account, opts, store).await?;
    let server = session.conn.server().to_owned();
    let listing = session.listing().await?;
    crate::command::blocking(|| record_login(account, opts, store, &session))?;
    warn_about_expire(account, &session, opts);
    let seen = crate::command::blocking(|| store.rows(&account.name))?;
    let settings = PlanSettings {
        retention: account.retention,
        max_size: account.max_size,
        accept_uidl_reset: opts.accept_uidl_reset,
    };
    let mut plan = policy::plan(&listing, &seen, opts.now, settings, &Verdicts::new());
    if let Some(reset) = plan.uidl_reset {
        return Err(SyncError::UidlReset {
            server,
            account: account.name.clone(),
            on_server: reset.on_server,
            known: reset.known,
        });
    }
    let mut filter_error = None;
    if let Some(command) = &account.filter {
        let verdicts = run_filter(account, command, &plan, &mut session).await?;
        filter_error = first_filter_error(&verdicts);
        plan = policy::plan(&listing, &seen, opts.now, settings, &verdicts);
    }
    tally.new = plan.new_count() as u64;
    Ok(Planned {
        session,
        plan,
        filter_error,
    })
}

/// Commands to keep in flight: a window with PIPELINING, else one at a time.
pub fn command_window(session: &Transaction<Transport>) -> usize {
    if session.capa.pipelining() {
        window::MAX_COMMANDS
    } else {
        1
    }
}

/// Ask the header filter about every message the plan would fetch: TOP n 0
/// (pipelined when the server allows), the headers to the filter's stdin.
async fn run_filter(
    account: &Account,
    command: &str,
    plan: &Plan,
    session: &mut Transaction<Transport>,
) -> Result<Verdicts, SyncError> {
    let candidates = plan.to_fetch();
    let window = command_window(session);
    let mut verdicts = Verdicts::new();
    for batch in candidates.chunks(window) {
        let msgs: Vec<u32> = batch.iter().map(|p| p.listed.msg).collect();
        session.send_top(&msgs, 0).await?;
        for p in batch {
            let headers = session
                .read_top(p.listed.msg, p.listed.size, MAX_FILTER_HEADERS)
                .await?;
            let sender = deliver::envelope_sender(&headers);
            let verdict = crate::command::blocking(|| {
                filter::judge(
                    command,
                    &headers,
                    &sender,
                    p.listed.size,
                    account.command_timeout,
                )
            });
            verdicts.insert(p.key(), verdict);
        }
    }
    Ok(verdicts)
}

fn first_filter_error(verdicts: &Verdicts) -> Option<FilterError> {
    // A temporary failure counts only if every failure was temporary.
    let mut errors: Vec<&FilterError> =
        verdicts.values().filter_map(|v| v.as_ref().err()).collect();
    errors.sort_by_key(|e| e.exit_code() == ExitCode::TempFail);
    errors.first().map(|e| (*e).clone())
}

async fn sync(account: &Account, opts: &RunOptions, tally: &mut Tally) -> Result<(), SyncError> {
    let _lock = lock_account(&opts.state_dir, &account.name)?;
    let mut store = crate::command::blocking(|| Store::open_in(&opts.state_dir))?;
    let mut target = open_target(&account.deliver, account, opts);
    if !opts.dry_run {
        crate::command::blocking(|| resolve_pending(account, &mut store, opts))?;
    }
    let Planned {
        mut session,
        plan,
        filter_error,
    } = connect_and_plan(account, opts, &mut store, tally).await?;

    if opts.dry_run {
        for p in &plan.messages {
            let _ = crate::ui::stdout_line(&p.to_string());
        }
        // Nothing was RETRieved or DELEted: QUIT changes nothing.
        session.quit().await?;
        return filter_error.map_or(Ok(()), |e| Err(SyncError::Filter(e)));
    }

    for p in &plan.messages {
        if let Action::Skip(why) = &p.action {
            tally.skipped += 1;
            let why = match why {
                SkipReason::TooBig { .. } => "larger than max_size".to_owned(),
                SkipReason::Filter => "the filter said not now".to_owned(),
                SkipReason::FilterFailed(e) => e.clone(),
            };
            opts.ui.verbose(&format!(
                "{}: skipped {} ({} bytes): {why}",
                account.name,
                sanitize(p.listed.uidl.as_bytes(), 80),
                p.listed.size
            ));
        }
    }

    let mut to_delete = fetch_new(
        account,
        opts,
        &plan,
        &mut session,
        &mut store,
        target.as_mut(),
        tally,
    )
    .await?;
    let mut filtered = Vec::new();
    for p in &plan.messages {
        match p.action {
            Action::Delete(DeleteReason::Retention { .. }) => {
                to_delete.push((p.listed.msg, p.key()))
            }
            Action::Delete(DeleteReason::Filter) => filtered.push(p),
            _ => {}
        }
    }

    // Only committed deliveries (and what the filter condemned unread) reach
    // this point: DELE them, then QUIT.
    let mut msgs: Vec<u32> = to_delete.iter().map(|(m, _)| *m).collect();
    msgs.extend(filtered.iter().map(|p| p.listed.msg));
    session.dele(&msgs).await?;
    session.quit().await?;
    let keys: Vec<_> = to_delete.into_iter().map(|(_, k)| k).collect();
    crate::command::blocking(|| store.mark_deleted(&account.name, &keys, opts.now))?;
    let filtered_keys: Vec<_> = filtered.iter().map(|p| (p.key(), p.listed.size)).collect();
    crate::command::blocking(|| store.record_filtered(&account.name, &filtered_keys, opts.now))?;
    tally.deleted = (keys.len() + filtered_keys.len()) as u64;
    for (uidl, _) in &keys {
        opts.ui.verbose(&format!(
            "{}: deleted {} on the server",
            account.name,
            sanitize(uidl.as_bytes(), 80)
        ));
    }
    for ((uidl, _), size) in &filtered_keys {
        opts.ui.verbose(&format!(
            "{}: deleted {} ({size} bytes) on the server without downloading it (filter)",
            account.name,
            sanitize(uidl.as_bytes(), 80)
        ));
    }
    // An empty listing keeps the rows of mail retention still keeps on the
    // server (see `policy::kept_when_absent`).
    let on_server: HashSet<_> = if plan.messages.is_empty() {
        crate::command::blocking(|| store.rows(&account.name))?
            .into_iter()
            .filter(|(_, row)| policy::kept_when_absent(row, opts.now, account.retention))
            .map(|(key, _)| key)
            .collect()
    } else {
        plan.keys()
    };
    crate::command::blocking(|| store.prune(&account.name, &on_server))?;
    filter_error.map_or(Ok(()), |e| Err(SyncError::Filter(e)))
}

/// RETR every message the plan fetches, deliver it, and commit it to the
/// store. Returns the messages to DELE because retention is `0d`.
async fn fetch_new(
    account: &Account,
    opts: &RunOptions,
    plan: &Plan,
    session: &mut Transaction<Transport>,
    store: &mut Store,
    target: &mut dyn Target,
    tally: &mut Tally,
) -> Result<Vec<(u32, store::MessageKey)>, SyncError> {
    let fetch = plan.to_fetch();
    let sizes: Vec<u64> = fetch.iter().map(|p| p.listed.size).collect();
    let mut window = Window::new(session.capa.pipelining(), session.conn.rtt());
    let proto = match account.tls {
        TlsMode::Implicit => "POP3S",
        TlsMode::Starttls => "POP3 (STLS)",
        TlsMode::None => "POP3",
    };
    // The same for every message of the session (the clock is fixed per run).
    let received = account
        .received_header
        .then(|| deliver::received_header(&account.host, &account.user, proto, opts.now));
    let bar = opts.ui.account_bar(
        &account.name,
        fetch.len(),
        fetch.iter().map(|p| p.listed.size).sum(),
    );
    let describe = target.describe();
    let mut to_delete = Vec::new();
    let mut sent = 0;
    let mut next = 0;
    while next < fetch.len() {
        // On SIGINT/SIGTERM: no new RETRs; the ones already sent are
        // delivered (their replies are on the way), then DELE and QUIT.
        if crate::stop::requested().is_some() && next >= sent {
            break;
        }
        // A batch: up to the target's limit and BATCH_BYTES of mail.
        let mut end = next;
        let mut bytes: u64 = 0;
        while end < fetch.len()
            && end - next < target.batch_limit()
            && (end == next || bytes.saturating_add(fetch[end].listed.size) <= BATCH_BYTES)
        {
            bytes = bytes.saturating_add(fetch[end].listed.size);
            end += 1;
        }
        let batch = &fetch[next..end];
        // Promise 2: the pending rows are durable before any byte is written.
        let prepared = crate::command::blocking(|| target.prepare_batch(batch.len()))?;
        let rows: Vec<_> = batch
            .iter()
            .zip(&prepared)
            .map(|(p, prep)| PendingRow {
                uidl: p.listed.uidl.clone(),
                copy: p.copy,
                target: describe.clone(),
                location: prep.location.clone(),
                offset: prep.offset,
                started_at: opts.now,
            })
            .collect();
        crate::command::blocking(|| store.begin_pending(&account.name, &rows))?;

        let started = Instant::now();
        let mut finished = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (k, (p, prep)) in batch.iter().zip(&prepared).enumerate() {
            let i = next + k;
            let stopping = crate::stop::requested().is_some();
            // End the batch early on a stop, or when it has taken long (a
            // slow link): what is written should not wait long uncommitted.
            if (stopping && i >= sent) || (k > 0 && started.elapsed() > BATCH_TIME) {
                break;
            }
            let one = async {
                // Keep the window of RETRs in flight; replies come back in order.
                if !stopping {
                    let upto =
                        i + window.extend(&sizes[i..], sent.saturating_sub(i), Instant::now());
                    if sent < upto {
                        let msgs: Vec<u32> =
                            fetch[sent..upto].iter().map(|p| p.listed.msg).collect();
                        session.send_retr(&msgs).await?;
                        sent = upto;
                    }
                }
                let mut sink = target.start(
                    prep,
                    &MessageInfo {
                        server_size: p.listed.size,
                        received: received.as_deref(),
                    },
                )?;
                session
                    .read_retr(p.listed.msg, p.listed.size, |chunk| {
                        if let Some(b) = &bar {
                            b.inc(chunk.len() as u64);
                        }
                        sink.write(chunk)
                    })
                    .await?;
                window.arrived(p.listed.size);
                // An MDA runs here, for up to command_timeout.
                Ok::<_, SyncError>(crate::command::blocking(move || sink.finish())?)
            };
            match one.await {
                Ok(f) => finished.push(f),
                Err(e) => {
                    // The messages finished before the failure are whole:
                    // commit them below, then report the failure.
                    failure = Some(e);
                    break;
                }
            }
        }

        // Durable on disk, then recorded: only now may these be DELEted.
        let sizes: Vec<u64> = finished.iter().map(|f| f.size).collect();
        let done = finished.len();
        let committed = crate::command::blocking(|| target.commit(finished));
        for w in target.take_warnings() {
            opts.ui.warn(&format!("{}: {w}", account.name));
        }
        let locations = match committed {
            Ok(l) => l,
            Err(e) => return Err(failure.unwrap_or_else(|| e.into())),
        };
        let delivered: Vec<_> = batch[..done]
            .iter()
            .zip(sizes.iter().zip(&locations))
            .map(|(p, (size, location))| (p.key(), *size, location.as_str()))
            .collect();
        let abandoned: Vec<_> = batch[done..].iter().map(|p| p.key()).collect();
        crate::command::blocking(|| {
            store.finish_batch(&account.name, &delivered, &abandoned, opts.now)
        })?;
        for (p, (key, size, location)) in batch.iter().zip(&delivered) {
            tally.fetched += 1;
            tally.bytes = tally.bytes.saturating_add(*size);
            opts.ui.verbose(&format!(
                "{}: fetched {} ({size} bytes) -> {location}",
                account.name,
                sanitize(key.0.as_bytes(), 80),
            ));
            if let Action::Fetch { then_delete: true } = p.action {
                to_delete.push((p.listed.msg, key.clone()));
            }
        }
        if let Some(b) = &bar {
            b.set_message(format!("{}/{} messages", tally.fetched, fetch.len()));
        }
        if let Some(e) = failure {
            return Err(e);
        }
        next += done;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(to_delete)
}

fn open_target(deliver: &Delivery, account: &Account, opts: &RunOptions) -> Box<dyn Target> {
    match deliver {
        Delivery::Maildir(path) => Box::new(Maildir::new(path.clone())),
        Delivery::Mbox(path) => Box::new(
            Mbox::new(path.clone(), opts.now, account.timeout)
                .journal_in(&opts.state_dir, &account.name),
        ),
        Delivery::Mda(command) => Box::new(Mda::new(
            command.clone(),
            account.user.clone(),
            account.command_timeout,
            opts.state_dir.clone(),
        )),
    }
}

/// The target a pending row was recorded for (`Target::describe` form); the
/// config may have changed since.
fn target_of_pending(
    description: &str,
    account: &Account,
    opts: &RunOptions,
) -> Option<Box<dyn Target>> {
    let (kind, rest) = description.split_once(':')?;
    let deliver = match kind {
        "maildir" => Delivery::Maildir(PathBuf::from(rest)),
        "mbox" => Delivery::Mbox(PathBuf::from(rest)),
        "mda" => Delivery::Mda(rest.to_owned()),
        _ => return None,
    };
    Some(open_target(&deliver, account, opts))
}

/// Finish or roll back deliveries that a killed run left pending: a Maildir
/// file that made it into new/ or cur/ is recorded as delivered; a torn mbox
/// append is cut off; anything else is forgotten, so the message is fetched
/// again.
fn resolve_pending(
    account: &Account,
    store: &mut Store,
    opts: &RunOptions,
) -> Result<(), SyncError> {
    for row in store.pending(&account.name)? {
        let key = (row.uidl.clone(), row.copy);
        let Some(mut target) = target_of_pending(&row.target, account, opts) else {
            return Err(SyncError::UnknownPending { target: row.target });
        };
        let prepared = Prepared {
            location: row.location.clone(),
            offset: row.offset,
        };
        let outcome = target.recover(&prepared, row.started_at);
        for w in target.take_warnings() {
            opts.ui.warn(&format!("{}: {w}", account.name));
        }
        let uidl = sanitize(row.uidl.as_bytes(), 80);
        match outcome? {
            Some(location) => {
                let size = std::fs::metadata(&location).map(|m| m.len()).unwrap_or(0);
                store.mark_delivered(&account.name, &key, size, &location, opts.now)?;
                opts.ui.verbose(&format!(
                    "{}: interrupted delivery of {uidl} had completed ({location})",
                    account.name
                ));
            }
            None => {
                store.drop_pending(&account.name, &key)?;
                opts.ui.verbose(&format!(
                    "{}: interrupted delivery of {uidl} rolled back; it will be fetched again",
                    account.name
                ));
            }
        }
    }
    Ok(())
}

/// An exclusive, non-waiting lock per account: a second run skips at once.
pub fn lock_account(state_dir: &Path, name: &str) -> Result<File, SyncError> {
    let dir = state_dir.join("locks");
    store::create_private_dir(&dir)?;
    let path = dir.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SyncError::LockFile {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SyncError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(SyncError::LockFile { path, source }),
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
pub fn tls_settings(account: &Account) -> Result<Option<TlsSettings>, SyncError> {
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
) -> Result<Connected, SyncError> {
    let server = format!("{}:{}", account.host, account.port);
    let tcp = net::connect_tcp(&account.host, account.port, account.timeout).await?;
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
                return Err(SyncError::NoStls { server });
            }
            let before = plain.capa.clone();
            let (stream, settings) = plain.stls().await?;
            let Transport::Plain(tcp) = stream else {
                return Err(SyncError::NoStls { server });
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
                return Err(SyncError::Plaintext { server });
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
) -> Result<auth::Mechanism, SyncError> {
    auth::choose(
        &account.mechanisms(),
        &greeted.capa,
        greeting_for_auth(account, greeted),
    )
    .map_err(|source| SyncError::Auth {
        server: greeted.conn.server().to_owned(),
        source,
    })
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

/// A logged-in session for read-only commands (`peek`): the secret, connect,
/// log in; no lock, nothing written.
/// A logged-in session: LOGIN-DELAY honoured (the account is skipped while
/// the server's delay since the last login has not passed), the secret
/// fetched, connected, logged in. Every command that logs in goes through
/// here and then `record_login`, `check`, `peek` and `--dry-run` included:
/// the server counts their logins too.
pub async fn open_session(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
) -> Result<Transaction<Transport>, SyncError> {
    if let Some(store::LastLogin {
        at: last,
        login_delay: Some(delay),
    }) = store.last_login(&account.name)?
    {
        // Clamped here too: a store written by an older popsync may hold
        // any value the server sent.
        let delay = delay.min(MAX_LOGIN_DELAY);
        // At most a day: the cast cannot wrap.
        let retry_at = last
            .checked_add_signed(chrono::Duration::seconds(delay as i64))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if opts.now < retry_at {
            return Err(SyncError::LoginDelay {
                server: format!("{}:{}", account.host, account.port),
                delay,
                last,
                retry_at,
            });
        }
    }
    let password = crate::command::blocking(|| account.secret.resolve(account.command_timeout))?;
    login(account, &password, opts).await
}

/// Remember a login and the server's LOGIN-DELAY (from the capabilities
/// after login, so call it after `listing`).
pub fn record_login(
    account: &Account,
    opts: &RunOptions,
    store: &mut Store,
    session: &Transaction<Transport>,
) -> Result<(), SyncError> {
    let delay = session.capa.login_delay().map(|d| d.min(MAX_LOGIN_DELAY));
    Ok(store.record_login(&account.name, opts.now, delay)?)
}

/// Connect, secure the connection as configured, and log in.
async fn login(
    account: &Account,
    password: &str,
    opts: &RunOptions,
) -> Result<Transaction<Transport>, SyncError> {
    let tls = tls_settings(account)?;
    let mut greeted = connect(account, tls.as_ref(), trace_for(account, &opts.ui))
        .await?
        .greeted;
    let server = greeted.conn.server().to_owned();
    let candidates = auth::candidates(
        &account.mechanisms(),
        &greeted.capa,
        greeting_for_auth(account, &greeted),
    )
    .map_err(|source| SyncError::Auth {
        server: server.clone(),
        source,
    })?;
    let attempt = |mech: auth::Mechanism| {
        opts.ui.verbose(&format!(
            "{}: logging in to {server} as {} with {}",
            account.name,
            account.user,
            mech.name()
        ));
    };
    let mut tried = candidates.iter();
    let mut outcome = Err(SessionError::NoUsableAuth {
        server: server.clone(),
        message: "no login mechanism to try".into(),
    });
    while let Some(&mech) = tried.next() {
        attempt(mech);
        outcome = greeted.authenticate(&account.user, password, mech).await;
        match &outcome {
            // The server refused this mechanism without saying the
            // credentials are wrong ([AUTH]) or that it is busy: try the next
            // one it offers. A wrong password is never tried again.
            Err(SessionError::AuthFailed {
                code: None | Some(RespCode::Other(_)),
                text,
                ..
            }) if tried.len() > 0 => {
                opts.ui.verbose(&format!(
                    "{}: {} was refused ({}); trying the next mechanism",
                    account.name,
                    mech.name(),
                    sanitize(text.as_bytes(), 120),
                ));
            }
            _ => break,
        }
    }
    outcome?;
    Ok(greeted.into_transaction().await?)
}

/// RFC 2449 EXPIRE: the server deletes mail itself after N days; say so when
/// retention asks to keep it longer.
fn warn_about_expire(account: &Account, session: &Transaction<Transport>, opts: &RunOptions) {
    let Some(Expire::Days(days)) = session.capa.expire() else {
        return;
    };
    let longer = match account.retention {
        Retention::Forever => true,
        Retention::Days(n) => u64::from(n) > days,
    };
    if longer {
        opts.ui.warn(&format!(
            "{}: the server deletes mail after {days} days (EXPIRE), sooner than retention = \"{}\" asks",
            account.name, account.retention
        ));
    }
}
