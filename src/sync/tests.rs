//! The order of an account's sync, checked with an in-memory `Target` and a
//! scripted POP3 server over an in-memory pipe: deliver before commit before
//! DELE before QUIT, and no QUIT while a RETRieved message is uncommitted.
//! The server reads the seen-store itself when DELE and QUIT arrive, so the
//! test sees what was committed at that instant, not afterwards.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::*;
use crate::config::Delivery;
use crate::deliver::{DeliveryError, Finished, FinishedKind, MessageInfo, Prepared, Sink};
use crate::policy::{PlanSettings, Verdicts};
use crate::pop3::auth::Mechanism;
use crate::pop3::codec::Capabilities;
use crate::pop3::session::{Connection, Greeted};
use crate::ui::Verbosity;

/// What happened, in order, on both sides of the pipe.
type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, event: String) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(event);
}

fn events(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A target that keeps messages in memory and logs each step.
struct Memory {
    log: Log,
    fail_commit: bool,
    next: usize,
    /// What `size_limit` says (an IMAP server's APPENDLIMIT).
    limit: Option<u64>,
}

struct MemorySink {
    log: Log,
    location: String,
    bytes: Vec<u8>,
}

impl Sink for MemorySink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Finished, DeliveryError> {
        push(
            &self.log,
            format!(
                "deliver {} {:?}",
                self.location,
                String::from_utf8_lossy(&self.bytes)
            ),
        );
        Ok(Finished {
            kind: FinishedKind::Mda(self.location),
            size: self.bytes.len() as u64,
        })
    }
}

impl Target for Memory {
    fn size_limit(&self) -> Option<u64> {
        self.limit
    }

    fn delivery(&self) -> Delivery {
        Delivery::Mda("memory".into())
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        let names = (self.next..self.next + n)
            .map(|i| Prepared {
                location: format!("mem{i}"),
                offset: None,
            })
            .collect();
        self.next += n;
        Ok(names)
    }

    fn start(
        &mut self,
        prepared: &Prepared,
        _info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        Ok(Box::new(MemorySink {
            log: self.log.clone(),
            location: prepared.location.clone(),
            bytes: Vec::new(),
        }))
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        let locations: Vec<String> = batch
            .into_iter()
            .map(|f| match f.kind {
                FinishedKind::Mda(l) => l,
                _ => String::new(),
            })
            .collect();
        if self.fail_commit {
            push(&self.log, format!("commit failed {}", locations.join(",")));
            return Err(DeliveryError::Sync {
                path: "memory".into(),
                source: std::io::Error::other("disk went away"),
            });
        }
        push(&self.log, format!("commit {}", locations.join(",")));
        Ok(locations)
    }

    fn recover(
        &mut self,
        _pending: &Prepared,
        _started: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        Ok(None)
    }
}

/// How the scripted server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Honest,
    /// `-ERR` to the RETR of this message number.
    ErrOnRetr(u32),
}

const MESSAGES: [&str; 3] = [
    "Subject: one\r\n\r\nfirst\r\n",
    "Subject: two\r\n\r\nsecond, the longest\r\n",
    "Subject: three\r\n\r\nthird\r\n",
];

/// UIDLs whose delivery the seen-store has recorded.
fn committed(state_dir: &Path) -> Vec<String> {
    let Ok(store) = Store::open_in(state_dir) else {
        return vec!["(store unreadable)".into()];
    };
    let mut uidls: Vec<String> = store
        .rows("acct")
        .map(|rows| {
            rows.into_values()
                .filter(|r| r.delivered_at.is_some())
                .map(|r| r.uidl)
                .collect()
        })
        .unwrap_or_default();
    uidls.sort();
    uidls
}

/// A POP3 server for one logged-in session (USER/PASS), logging every
/// RETR, DELE and QUIT with what the seen-store held at that moment.
async fn serve(stream: DuplexStream, mode: Server, pipelining: bool, state_dir: PathBuf, log: Log) {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let mut retrieved = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or_default().to_owned();
        let arg: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let reply = match verb.as_str() {
            "USER" | "PASS" => "+OK\r\n".to_owned(),
            "CAPA" if pipelining => "+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n".to_owned(),
            "CAPA" => "+OK\r\nUIDL\r\n.\r\n".to_owned(),
            "STAT" => format!("+OK {} 0\r\n", MESSAGES.len()),
            "UIDL" => {
                let mut r = "+OK\r\n".to_owned();
                for i in 1..=MESSAGES.len() {
                    r.push_str(&format!("{i} uid{i}\r\n"));
                }
                r + ".\r\n"
            }
            "LIST" => {
                let mut r = "+OK\r\n".to_owned();
                for (i, m) in MESSAGES.iter().enumerate() {
                    r.push_str(&format!("{} {}\r\n", i + 1, m.len()));
                }
                r + ".\r\n"
            }
            "RETR" if mode == Server::ErrOnRetr(arg) => "-ERR message is gone\r\n".to_owned(),
            "RETR" => {
                push(&log, format!("RETR {arg}"));
                retrieved.push(format!("uid{arg}"));
                let body = MESSAGES.get(arg as usize - 1).copied().unwrap_or_default();
                format!("+OK\r\n{body}.\r\n")
            }
            "DELE" => {
                push(
                    &log,
                    format!("DELE {arg}, committed: {:?}", committed(&state_dir)),
                );
                "+OK\r\n".to_owned()
            }
            "QUIT" => {
                let stored = committed(&state_dir);
                let uncommitted: Vec<_> =
                    retrieved.iter().filter(|u| !stored.contains(u)).collect();
                push(
                    &log,
                    format!("QUIT, retrieved but uncommitted: {uncommitted:?}"),
                );
                let _ = write.write_all(b"+OK bye\r\n").await;
                return;
            }
            _ => "-ERR unknown command\r\n".to_owned(),
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Run the plan's part of a sync (deliver, commit, DELE, QUIT) against the
/// scripted server; returns the sync's outcome and the log.
async fn run(
    mode: Server,
    pipelining: bool,
    fail_commit: bool,
) -> (Result<(), SyncError>, Vec<String>) {
    run_with_limit(mode, pipelining, fail_commit, None).await
}

async fn run_with_limit(
    mode: Server,
    pipelining: bool,
    fail_commit: bool,
    limit: Option<u64>,
) -> (Result<(), SyncError>, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().to_path_buf();
    let config = crate::config::parse_str(
        Path::new("test.toml"),
        "[accounts.acct]\nhost = \"test\"\nuser = \"u\"\npassword = \"p\"\n\
         retention = \"0d\"\nreceived_header = false\ndeliver = { maildir = \"/nonexistent\" }\n",
    )
    .expect("config");
    let account = config.accounts[0].clone();
    let opts = RunOptions {
        state_dir: state_dir.clone(),
        now: Utc::now(),
        dry_run: false,
        accept_uidl_reset: false,
        ignore_login_delay: false,
        ui: Ui {
            verbosity: Verbosity::Quiet,
            json: false,
        },
    };
    let log = Log::default();
    let (client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve(
        server,
        mode,
        pipelining,
        state_dir.clone(),
        log.clone(),
    ));

    let conn = Connection::new(client, "test:110".into(), Duration::from_secs(5), None);
    let mut greeted = Greeted::resume(conn, "ready".into());
    greeted.capa = Capabilities::parse(b"USER\n");
    let mut session = greeted
        .login("u", "p", Mechanism::User)
        .await
        .expect("login");
    let listing = session.listing().await.expect("listing");
    let mut store = Store::open_in(&state_dir).expect("store");
    let settings = PlanSettings {
        retention: account.retention,
        max_size: None,
        accept_uidl_reset: false,
    };
    let plan = policy::plan(
        &listing,
        &HashMap::new(),
        opts.now,
        settings,
        &Verdicts::new(),
    );
    let mut target = Memory {
        log: log.clone(),
        fail_commit,
        next: 0,
        limit,
    };
    let mut tally = Tally::default();
    let outcome = deliver_then_delete(
        &account,
        &opts,
        session,
        &plan,
        &mut store,
        &mut target,
        &mut tally,
    )
    .await;
    // The session is gone: the server sees the end of its input.
    let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
    (outcome, events(&log))
}

fn position(log: &[String], prefix: &str) -> usize {
    log.iter()
        .position(|e| e.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {log:#?}"))
}

#[tokio::test]
async fn deliver_then_commit_then_dele_then_quit() {
    for pipelining in [false, true] {
        let (outcome, log) = run(Server::Honest, pipelining, false).await;
        assert!(outcome.is_ok(), "pipelining {pipelining}: {outcome:?}");
        let commit = position(&log, "commit ");
        for i in 0..MESSAGES.len() {
            assert!(
                position(&log, &format!("deliver mem{i} ")) < commit,
                "{log:#?}"
            );
        }
        let first_dele = position(&log, "DELE ");
        assert!(commit < first_dele, "{log:#?}");
        // Every DELE came after its message was recorded as delivered.
        for n in 1..=MESSAGES.len() {
            let dele = &log[position(&log, &format!("DELE {n},"))];
            assert!(dele.contains(&format!("\"uid{n}\"")), "{dele} in {log:#?}");
        }
        let quit = position(&log, "QUIT");
        assert!(log[..quit].iter().filter(|e| e.starts_with("DELE")).count() == MESSAGES.len());
        assert_eq!(log[quit], "QUIT, retrieved but uncommitted: []", "{log:#?}");
        assert_eq!(quit, log.len() - 1, "{log:#?}");
    }
}

#[tokio::test]
async fn a_failed_commit_sends_neither_dele_nor_quit() {
    let (outcome, log) = run(Server::Honest, true, true).await;
    assert!(
        matches!(
            outcome,
            Err(SyncError::Delivery(DeliveryError::Sync { .. }))
        ),
        "{outcome:?}"
    );
    position(&log, "commit failed");
    assert!(
        !log.iter()
            .any(|e| e.starts_with("DELE") || e.starts_with("QUIT")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn a_retr_refused_mid_batch_commits_what_came_and_sends_no_quit() {
    for pipelining in [false, true] {
        let (outcome, log) = run(Server::ErrOnRetr(2), pipelining, false).await;
        assert!(
            matches!(&outcome, Err(SyncError::Session(_))),
            "pipelining {pipelining}: {outcome:?}"
        );
        // The first message is whole: delivered and committed.
        assert!(
            position(&log, "deliver mem0 ") < position(&log, "commit mem0"),
            "{log:#?}"
        );
        assert!(
            !log.iter()
                .any(|e| e.starts_with("DELE") || e.starts_with("QUIT")),
            "{log:#?}"
        );
    }
}

#[tokio::test]
async fn a_message_over_the_targets_limit_stays_and_the_others_are_delivered() {
    // The second message is the longest; the limit lets the others through.
    let limit = (MESSAGES[1].len() - 1) as u64;
    assert!(MESSAGES[0].len() as u64 <= limit && MESSAGES[2].len() as u64 <= limit);
    let (outcome, log) = run_with_limit(Server::Honest, true, false, Some(limit)).await;
    match &outcome {
        Err(e @ SyncError::Delivery(DeliveryError::TooBig { size, .. })) => {
            assert_eq!(*size, MESSAGES[1].len() as u64);
            assert_eq!(e.exit_code().code(), 74);
        }
        other => panic!("{other:?}"),
    }
    assert!(!log.iter().any(|e| e == "RETR 2"), "{log:#?}");
    assert!(log.iter().any(|e| e.starts_with("DELE 1,")), "{log:#?}");
    assert!(log.iter().any(|e| e.starts_with("DELE 3,")), "{log:#?}");
    assert!(!log.iter().any(|e| e.starts_with("DELE 2,")), "{log:#?}");
    assert_eq!(
        log.last().map(String::as_str),
        Some("QUIT, retrieved but uncommitted: []")
    );
}
