//! The client against a scripted server over an in-memory pipe: each
//! step asserts what the client has sent so far, and that nothing more
//! arrives while the server has not answered.

use std::convert::Infallible;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::{BodyError, Connection, Greeted, SessionError, Transaction};
use crate::exit::ExitCode;
use crate::pop3::auth::{self, Mechanism};
use crate::pop3::codec::{Capabilities, Command};

const QUIET: Duration = Duration::from_millis(50);

fn client(stream: DuplexStream) -> Connection<DuplexStream> {
    Connection::new(stream, "test:110".into(), Duration::from_secs(5), None)
}

/// The server side: reads what the client sent.
struct Script(DuplexStream);

impl Script {
    /// Nothing arrives within `QUIET`.
    async fn silence(&mut self, while_: &str) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(QUIET, self.0.read(&mut byte)).await;
        assert!(
            read.is_err(),
            "the client sent {:?} {while_}",
            String::from_utf8_lossy(&byte)
        );
    }

    /// Exactly `line` (CRLF added) arrives, and nothing after it.
    async fn expect(&mut self, line: &str) {
        self.expect_flight(&[line]).await;
    }

    /// Exactly `lines` (CRLF each) arrive, and nothing after them.
    async fn expect_flight(&mut self, lines: &[&str]) {
        let want: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let mut got = vec![0u8; want.len()];
        self.0.read_exact(&mut got).await.expect("client line");
        assert_eq!(String::from_utf8_lossy(&got), want);
        self.silence(&format!("behind {lines:?} before their replies"))
            .await;
    }

    async fn reply(&mut self, text: &str) {
        self.0.write_all(text.as_bytes()).await.expect("reply");
    }
}

fn pair() -> (Connection<DuplexStream>, Script) {
    let (a, b) = duplex(1 << 16);
    (client(a), Script(b))
}

#[tokio::test]
async fn nothing_is_sent_before_the_greeting() {
    let (conn, mut server) = pair();
    let greeted = tokio::spawn(Greeted::start(conn));
    server.silence("before the greeting").await;
    server.reply("+OK ready\r\n").await;
    server.expect("CAPA").await;
    server.reply("+OK\r\nUSER\r\nUTF8\r\n.\r\n").await;
    let g = greeted.await.expect("join").expect("greeted");
    assert!(g.capa.user() && g.capa.utf8());
}

#[tokio::test]
async fn each_login_command_waits_for_its_reply_and_utf8_comes_first() {
    let (conn, mut server) = pair();
    let mut g = Greeted::resume(conn, "ready".into());
    g.capa = Capabilities::parse(b"USER\nUTF8\nPIPELINING\n");
    let login = tokio::spawn(async move { g.login("alice", "secret", Mechanism::User).await });
    server.expect("UTF8").await;
    server.reply("+OK UTF8 enabled\r\n").await;
    server.expect("USER alice").await;
    server.reply("+OK\r\n").await;
    server.expect("PASS secret").await;
    server.reply("+OK logged in\r\n").await;
    server.expect("CAPA").await;
    server.reply("+OK\r\nUIDL\r\n.\r\n").await;
    let t = login.await.expect("join").expect("logged in");
    // Only the CAPA after login counts: it has no PIPELINING.
    assert!(!t.capa.pipelining());
}

/// Log in with USER/PASS over `capa_before`, then list the mailbox the way
/// `fetch` does; the server side is left to the caller after PASS.
fn login_and_list(
    capa_before: &[u8],
    server_conn: Connection<DuplexStream>,
) -> tokio::task::JoinHandle<Result<(Transaction<DuplexStream>, usize), SessionError>> {
    let mut g = Greeted::resume(server_conn, "ready".into());
    g.capa = Capabilities::parse(capa_before);
    tokio::spawn(async move {
        g.authenticate("alice", "secret", Mechanism::User).await?;
        let mut t = g.into_listing_transaction().await?;
        let listed = t.listing().await?.len();
        Ok((t, listed))
    })
}

async fn answer_listing(server: &mut Script) {
    server.reply("+OK 1 10\r\n").await;
    server.reply("+OK\r\n1 uid-1\r\n.\r\n").await;
    server.reply("+OK\r\n1 10\r\n.\r\n").await;
}

async fn user_pass(server: &mut Script) {
    server.expect("USER alice").await;
    server.reply("+OK\r\n").await;
    server.expect("PASS secret").await;
    server.reply("+OK logged in\r\n").await;
}

#[tokio::test]
async fn the_listing_goes_out_with_the_capa_after_login_when_pipelining_was_listed_before() {
    let (conn, mut server) = pair();
    let session = login_and_list(b"USER\nUIDL\nPIPELINING\n", conn);
    user_pass(&mut server).await;
    server
        .expect_flight(&["CAPA", "STAT", "UIDL", "LIST"])
        .await;
    server.reply("+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n").await;
    answer_listing(&mut server).await;
    let (t, listed) = session.await.expect("join").expect("listed");
    assert_eq!(listed, 1);
    assert!(t.capa.pipelining());
}

#[tokio::test]
async fn without_pipelining_before_login_the_capa_after_login_is_awaited_alone() {
    let (conn, mut server) = pair();
    let session = login_and_list(b"USER\n", conn);
    user_pass(&mut server).await;
    server.expect("CAPA").await;
    // Announced only after login (as Gmail does): pipelined from here on.
    server.reply("+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n").await;
    server.expect_flight(&["STAT", "UIDL", "LIST"]).await;
    answer_listing(&mut server).await;
    let (t, listed) = session.await.expect("join").expect("listed");
    assert_eq!(listed, 1);
    assert!(t.capa.pipelining());
}

#[tokio::test]
async fn a_capa_after_login_without_pipelining_ends_pipelining_after_the_listing() {
    let (conn, mut server) = pair();
    let session = login_and_list(b"USER\nPIPELINING\n", conn);
    user_pass(&mut server).await;
    server
        .expect_flight(&["CAPA", "STAT", "UIDL", "LIST"])
        .await;
    server.reply("+OK\r\nUIDL\r\n.\r\n").await;
    answer_listing(&mut server).await;
    let (mut t, listed) = session.await.expect("join").expect("listed");
    assert_eq!(listed, 1);
    assert!(!t.capa.pipelining());
    // The replies stayed in step: the next command's reply is its own.
    let noop = tokio::spawn(async move { t.conn.simple(&Command::Noop).await });
    server.expect("NOOP").await;
    server.reply("+OK\r\n").await;
    noop.await.expect("join").expect("NOOP answered");
}

#[tokio::test]
async fn sasl_continuations_wait_for_each_challenge() {
    let (conn, mut server) = pair();
    let mut g = Greeted::resume(conn, "ready".into());
    g.capa = Capabilities::parse(b"SASL LOGIN\n");
    let login = tokio::spawn(async move {
        g.login("alice", "secret", Mechanism::Sasl(auth::Sasl::Login))
            .await
    });
    server.expect("AUTH LOGIN").await;
    server.reply("+ VXNlcm5hbWU6\r\n").await;
    server.expect("YWxpY2U=").await;
    server.reply("+ UGFzc3dvcmQ6\r\n").await;
    server.expect("c2VjcmV0").await;
    server.reply("+OK\r\n").await;
    server.expect("CAPA").await;
    server.reply("-ERR no CAPA here\r\n").await;
    login.await.expect("join").expect("logged in");
}

async fn transaction(capa: &[u8]) -> (Transaction<DuplexStream>, Script) {
    let (conn, server) = pair();
    let t = Transaction {
        conn,
        capa: Capabilities::parse(capa),
        marked: false,
        listing_sent: false,
    };
    (t, server)
}

#[tokio::test]
async fn without_pipelining_the_listing_is_one_command_at_a_time() {
    let (mut t, mut server) = transaction(b"UIDL\n").await;
    let listing = tokio::spawn(async move { t.listing().await });
    server.expect("STAT").await;
    server.reply("+OK 1 10\r\n").await;
    server.expect("UIDL").await;
    server.reply("+OK\r\n1 a\r\n.\r\n").await;
    server.expect("LIST").await;
    server.reply("+OK\r\n1 10\r\n.\r\n").await;
    let l = listing.await.expect("join").expect("listing");
    assert_eq!(l[0].uidl, "a");
}

#[tokio::test]
async fn with_pipelining_uidl_and_list_go_together() {
    let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
    let listing = tokio::spawn(async move { t.listing().await });
    server.expect("STAT\r\nUIDL\r\nLIST").await;
    server
        .reply("+OK 1 10\r\n+OK\r\n1 a\r\n.\r\n+OK\r\n1 10\r\n.\r\n")
        .await;
    assert_eq!(listing.await.expect("join").expect("listing").len(), 1);
}

#[tokio::test]
async fn a_listing_longer_than_stat_allows_is_refused() {
    let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
    let listing = tokio::spawn(async move { t.listing().await });
    server.expect("STAT\r\nUIDL\r\nLIST").await;
    server.reply("+OK 2 20\r\n+OK\r\n").await;
    // Lines for ever: the reply is cut off after what 2 messages can take.
    let line = format!("1 {}\r\n", "a".repeat(70));
    let flood = tokio::spawn(async move {
        for _ in 0..100 {
            if server.0.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        server
    });
    let err = listing.await.expect("join").expect_err("endless UIDL");
    assert!(matches!(err, SessionError::TooLong { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Protocol);
    drop(flood);
}

#[tokio::test]
async fn repeated_or_out_of_range_message_numbers_are_refused() {
    for uidl in ["1 a\r\n1 b\r\n", "1 a\r\n3 b\r\n"] {
        let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
        let listing = tokio::spawn(async move { t.listing().await });
        server.expect("STAT\r\nUIDL\r\nLIST").await;
        server
            .reply(&format!(
                "+OK 2 20\r\n+OK\r\n{uidl}.\r\n+OK\r\n1 10\r\n2 10\r\n.\r\n"
            ))
            .await;
        let err = listing.await.expect("join").expect_err(uidl);
        assert_eq!(err.exit_code(), ExitCode::Protocol, "{uidl}: {err}");
        assert!(err.to_string().contains("STAT counts 2"), "{err}");
    }
}

#[tokio::test]
async fn a_message_far_larger_than_listed_is_stopped() {
    let (mut t, mut server) = transaction(b"PIPELINING\n").await;
    let retr = tokio::spawn(async move {
        t.send_retr(&[1]).await?;
        t.read_retr(1, 100, |_| Ok::<(), Infallible>(()))
            .await
            .map_err(BodyError::into_session)
    });
    server.expect("RETR 1").await;
    server.reply("+OK\r\n").await;
    let line = "x".repeat(1000) + "\r\n";
    let flood = tokio::spawn(async move {
        for _ in 0..2000 {
            if server.0.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        server
    });
    let err = retr.await.expect("join").expect_err("RETR past its size");
    assert!(matches!(err, SessionError::TooLong { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Protocol);
    drop(flood);
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_trickles_past_its_deadline_is_temporary() {
    let (mut t, mut server) = transaction(b"PIPELINING\n").await;
    let retr = tokio::spawn(async move {
        t.send_retr(&[1]).await?;
        t.read_retr(1, 100, |_| Ok::<(), Infallible>(()))
            .await
            .map_err(BodyError::into_session)
    });
    server.expect("RETR 1").await;
    server.reply("+OK\r\n").await;
    // One octet every 4 s: each read is within the 5 s timeout, yet the
    // reply never ends.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(4)).await;
            if server.0.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let err = retr.await.expect("join").expect_err("trickled RETR");
    assert!(matches!(err, SessionError::TooSlow { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::TempFail);
    trickle.abort();
}

#[tokio::test]
async fn after_deletions_quit_waits_for_the_server_to_close() {
    let (mut t, mut server) = transaction(b"").await;
    t.marked = true;
    let quit = tokio::spawn(t.quit());
    server.expect("QUIT").await;
    server.reply("+OK Bye-bye.\r\n").await;
    // The server is still removing messages: the client stays.
    tokio::time::sleep(QUIET).await;
    assert!(!quit.is_finished(), "hung up before the server closed");
    drop(server);
    quit.await.expect("join").expect("quit");
}

#[tokio::test]
async fn err_where_a_message_was_due_is_a_protocol_error() {
    let (mut t, mut server) = transaction(b"PIPELINING\n").await;
    let retr = tokio::spawn(async move {
        t.send_retr(&[1, 2]).await?;
        t.read_retr(1, 10, |_| Ok::<(), Infallible>(()))
            .await
            .map_err(BodyError::into_session)
    });
    server.expect("RETR 1\r\nRETR 2").await;
    server.reply("-ERR no such message\r\n").await;
    let err = retr.await.expect("join").expect_err("-ERR to RETR");
    assert_eq!(err.exit_code(), ExitCode::Protocol);
}
