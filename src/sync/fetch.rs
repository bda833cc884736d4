//! Fetching the plan's new mail, batch by batch: the next batch, its pending
//! rows (durable before any byte is written), delivering each message as
//! its RETR streams in, and committing the batch (durable on disk, then
//! recorded). Only committed messages come back for DELE.

use std::ops::Range;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{Account, TlsMode};
use crate::deliver::{self, DeliveryError, Finished, MessageInfo, Prepared, Target};
use crate::policy::{Action, Plan, Planned};
use crate::pop3::session::Transaction;
use crate::report::Tally;
use crate::sanitize::sanitize;
use crate::store::{MessageKey, PendingRow, Store};
use crate::window::Window;

use super::{RunOptions, SyncError};

/// Most mail (server octets) delivered in one batch before it is synced and
/// committed; and the longest a batch may take.
const BATCH_BYTES: u64 = 32 << 20;
const BATCH_TIME: Duration = Duration::from_secs(2);

/// What fetching left to do afterwards.
pub(super) struct Fetched {
    /// Committed messages to DELE because retention is `0d`.
    pub(super) to_delete: Vec<(u32, MessageKey)>,
    /// A message the target said beforehand it cannot take (larger than an
    /// IMAP server's APPENDLIMIT): it stays on the server, the others are
    /// delivered, and the run reports this once it is over.
    pub(super) refused: Option<SyncError>,
}

/// RETR every message the plan fetches, deliver it, and commit it to the
/// store.
pub(super) async fn fetch_new<S: AsyncRead + AsyncWrite + Unpin>(
    account: &Account,
    opts: &RunOptions,
    plan: &Plan,
    session: &mut Transaction<S>,
    store: &mut Store,
    target: &mut dyn Target,
    tally: &mut Tally,
) -> Result<Fetched, SyncError> {
    let mut fetch = plan.to_fetch();
    let received = received_header(account, opts);
    let mut refused = None;
    if !fetch.is_empty() {
        crate::command::blocking(|| target.open())?;
        if let Some(limit) = target.size_limit() {
            // LIST counts CRLF line ends, as the target does.
            let added = received
                .as_ref()
                .map_or(0, |r| (r.len() + r.lines().count()) as u64);
            fetch.retain(|p| {
                let size = p.listed.size.saturating_add(added);
                if size <= limit {
                    return true;
                }
                tally.skipped += 1;
                opts.ui.verbose(&format!(
                    "{}: left {} ({size} bytes) on the server: the target takes at most {limit}",
                    account.name,
                    sanitize(p.listed.uidl.as_bytes(), 80),
                ));
                refused.get_or_insert_with(|| {
                    SyncError::Delivery(DeliveryError::TooBig {
                        target: target.delivery().describe(),
                        size,
                        limit,
                    })
                });
                false
            });
        }
    }
    let bar = opts.ui.account_bar(
        &account.name,
        fetch.len(),
        fetch.iter().map(|p| p.listed.size).sum(),
    );
    let mut run = Fetch {
        account,
        opts,
        ahead: RetrAhead::new(&fetch, session),
        received,
        record: target.delivery().to_record(),
        fetch: &fetch,
        session,
        store,
        target,
        tally,
        bar: bar.as_ref(),
        to_delete: Vec::new(),
    };
    let mut next = 0;
    while next < fetch.len() {
        // On SIGINT/SIGTERM: no new RETRs; the ones already sent are
        // delivered (their replies are on the way), then DELE and QUIT.
        if crate::stop::requested().is_some() && next >= run.ahead.sent {
            break;
        }
        let batch = next_batch(&fetch, next, run.target.batch_limit());
        next += run.batch(batch).await?;
    }
    let to_delete = run.to_delete;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Fetched { to_delete, refused })
}

/// The `Received:` header popsync adds, if configured: the same for every
/// message of the session (the clock is fixed per run).
fn received_header(account: &Account, opts: &RunOptions) -> Option<String> {
    let proto = match account.tls {
        TlsMode::Implicit => "POP3S",
        TlsMode::Starttls => "POP3 (STLS)",
        TlsMode::None => "POP3",
    };
    account
        .received_header
        .then(|| deliver::received_header(&account.host, &account.user, proto, opts.now))
}

/// The messages of the next batch, from `next` on: up to the target's
/// `limit` and BATCH_BYTES of mail, but always at least one.
fn next_batch(fetch: &[&Planned], next: usize, limit: usize) -> Range<usize> {
    let mut end = next;
    let mut bytes: u64 = 0;
    while end < fetch.len()
        && end - next < limit
        && (end == next || bytes.saturating_add(fetch[end].listed.size) <= BATCH_BYTES)
    {
        bytes = bytes.saturating_add(fetch[end].listed.size);
        end += 1;
    }
    next..end
}

/// The RETRs sent ahead of the message being read: a window of them with
/// PIPELINING, else only the next one.
struct RetrAhead {
    window: Window,
    sizes: Vec<u64>,
    /// How many of the plan's messages have had their RETR sent.
    sent: usize,
}

impl RetrAhead {
    fn new<S: AsyncRead + AsyncWrite + Unpin>(
        fetch: &[&Planned],
        session: &Transaction<S>,
    ) -> RetrAhead {
        RetrAhead {
            window: Window::new(session.capa.pipelining(), session.conn.rtt()),
            sizes: fetch.iter().map(|p| p.listed.size).collect(),
            sent: 0,
        }
    }

    /// Send the RETRs the window allows from message `i` (read next) on;
    /// replies come back in order.
    async fn keep_in_flight<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        fetch: &[&Planned],
        i: usize,
        session: &mut Transaction<S>,
    ) -> Result<(), SyncError> {
        let in_flight = self.sent.saturating_sub(i);
        let upto = i + self
            .window
            .extend(&self.sizes[i..], in_flight, Instant::now());
        if self.sent < upto {
            let msgs: Vec<u32> = fetch[self.sent..upto]
                .iter()
                .map(|p| p.listed.msg)
                .collect();
            session.send_retr(&msgs).await?;
            self.sent = upto;
        }
        Ok(())
    }
}

/// One account's fetch in progress.
struct Fetch<'a, S> {
    account: &'a Account,
    opts: &'a RunOptions,
    fetch: &'a [&'a Planned],
    session: &'a mut Transaction<S>,
    store: &'a mut Store,
    target: &'a mut dyn Target,
    tally: &'a mut Tally,
    bar: Option<&'a ProgressBar>,
    ahead: RetrAhead,
    received: Option<String>,
    /// The target as pending rows record it.
    record: String,
    to_delete: Vec<(u32, MessageKey)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Fetch<'_, S> {
    /// Deliver and commit one batch; returns how many of its messages were
    /// committed (fewer than asked when a stop or the time limit ended it).
    async fn batch(&mut self, range: Range<usize>) -> Result<usize, SyncError> {
        let fetch = self.fetch;
        let batch = &fetch[range.clone()];
        let prepared = self.begin(batch)?;
        let started = Instant::now();
        let mut finished = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (k, (p, prep)) in batch.iter().zip(&prepared).enumerate() {
            let i = range.start + k;
            let stopping = crate::stop::requested().is_some();
            // End the batch early on a stop, or when it has taken long (a
            // slow link): what is written should not wait long uncommitted.
            if (stopping && i >= self.ahead.sent) || (k > 0 && started.elapsed() > BATCH_TIME) {
                break;
            }
            match self.deliver_one(i, p, prep, stopping).await {
                Ok(f) => finished.push(f),
                Err(e) => {
                    // The messages finished before the failure are whole:
                    // commit them below, then report the failure.
                    failure = Some(e);
                    break;
                }
            }
        }
        self.commit(batch, finished, failure)
    }

    /// Name the batch's deliveries and record them as pending. Promise 2:
    /// the pending rows are durable before any byte is written.
    fn begin(&mut self, batch: &[&Planned]) -> Result<Vec<Prepared>, SyncError> {
        let prepared = crate::command::blocking(|| self.target.prepare_batch(batch.len()))?;
        let rows: Vec<_> = batch
            .iter()
            .zip(&prepared)
            .map(|(p, prep)| PendingRow {
                uidl: p.listed.uidl.clone(),
                copy: p.copy,
                target: self.record.clone(),
                location: prep.location.clone(),
                offset: prep.offset,
                started_at: self.opts.now,
            })
            .collect();
        crate::command::blocking(|| self.store.begin_pending(&self.account.name, &rows))?;
        Ok(prepared)
    }

    /// RETR message `i` of the plan (keeping the window of RETRs ahead of
    /// it in flight, unless stopping) and stream it into the target.
    async fn deliver_one(
        &mut self,
        i: usize,
        p: &Planned,
        prep: &Prepared,
        stopping: bool,
    ) -> Result<Finished, SyncError> {
        if !stopping {
            self.ahead
                .keep_in_flight(self.fetch, i, self.session)
                .await?;
        }
        let mut sink = self.target.start(
            prep,
            &MessageInfo {
                server_size: p.listed.size,
                received: self.received.as_deref(),
            },
        )?;
        let bar = self.bar;
        self.session
            .read_retr(p.listed.msg, p.listed.size, |chunk| {
                if let Some(b) = bar {
                    b.inc(chunk.len() as u64);
                }
                sink.write(chunk)
            })
            .await?;
        self.ahead.window.arrived(p.listed.size);
        // An MDA runs here, for up to command_timeout.
        Ok(crate::command::blocking(move || sink.finish())?)
    }

    /// Make the finished messages durable, then record them as delivered
    /// (and the rest of the batch as abandoned): only now may they be
    /// DELEted. A failure during the batch is reported after that.
    fn commit(
        &mut self,
        batch: &[&Planned],
        finished: Vec<Finished>,
        failure: Option<SyncError>,
    ) -> Result<usize, SyncError> {
        let sizes: Vec<u64> = finished.iter().map(|f| f.size).collect();
        let done = finished.len();
        // What the pending rows must say before the target delivers (an
        // IMAP APPEND): how to find each message again after a crash.
        let updates: Vec<_> = batch
            .iter()
            .zip(&finished)
            .filter_map(|(p, f)| f.pending_update().map(|l| (p.key(), l)))
            .collect();
        if !updates.is_empty() {
            crate::command::blocking(|| self.store.update_pending(&self.account.name, &updates))?;
        }
        let committed = crate::command::blocking(|| self.target.commit(finished));
        for w in self.target.take_warnings() {
            self.opts.ui.warn(&format!("{}: {w}", self.account.name));
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
            self.store
                .finish_batch(&self.account.name, &delivered, &abandoned, self.opts.now)
        })?;
        for (p, (key, size, location)) in batch.iter().zip(&delivered) {
            self.tally.fetched += 1;
            self.tally.bytes = self.tally.bytes.saturating_add(*size);
            self.opts.ui.verbose(&format!(
                "{}: fetched {} ({size} bytes) -> {location}",
                self.account.name,
                sanitize(key.uidl.as_bytes(), 80),
            ));
            if let Action::Fetch { then_delete: true } = p.action {
                self.to_delete.push((p.listed.msg, key.clone()));
            }
        }
        if let Some(b) = self.bar {
            b.set_message(format!(
                "{}/{} messages",
                self.tally.fetched,
                self.fetch.len()
            ));
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}
