//! Happy Eyeballs (RFC 8305): connecting to a host with several addresses
//! without waiting out a dead one. The addresses are tried in turn,
//! alternating IPv6 and IPv4 from the family the resolver put first; each
//! attempt gets a head start of `ATTEMPT_DELAY` before the next one begins
//! (at once when it fails), and the first connection made wins. The caller
//! bounds the whole race with its timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

/// RFC 8305 5: the recommended Connection Attempt Delay.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order to try `addrs` in: alternating address families, starting
/// with the family of the first (RFC 8305 4), each family in its own order.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|a| a.is_ipv6() == first.is_ipv6());
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(same.len() + other.len());
    loop {
        match (same.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Race connection attempts to `addrs` (in `interleave` order), starting a
/// new one every `delay` or as soon as the previous ones have all failed.
/// Returns the first connection made; the attempts still running are
/// dropped. When every attempt fails, the error of the last one.
pub async fn race<T, F, Fut>(addrs: Vec<SocketAddr>, delay: Duration, connect: F) -> io::Result<T>
where
    T: Send + 'static,
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
{
    let mut waiting = interleave(addrs).into_iter();
    let mut attempts = JoinSet::new();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    let mut next_start = Instant::now();
    loop {
        let more = waiting.len() > 0;
        if attempts.is_empty() {
            // Nothing in flight: the next attempt starts now, or it is over.
            match waiting.next() {
                Some(addr) => {
                    attempts.spawn(connect(addr));
                    next_start = Instant::now() + delay;
                    continue;
                }
                None => return Err(last),
            }
        }
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => {
                    last = e;
                    // A failure hands over to the next address at once.
                    next_start = Instant::now();
                }
                Err(e) => last = io::Error::other(e),
            },
            _ = tokio::time::sleep_until(next_start), if more => {
                if let Some(addr) = waiting.next() {
                    attempts.spawn(connect(addr));
                }
                next_start = Instant::now() + delay;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_from_the_first() {
        let got = interleave(vec![
            a("[2001:db8::1]:110"),
            a("[2001:db8::2]:110"),
            a("[2001:db8::3]:110"),
            a("192.0.2.1:110"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:110"),
                a("192.0.2.1:110"),
                a("[2001:db8::2]:110"),
                a("[2001:db8::3]:110"),
            ]
        );
        let got = interleave(vec![a("192.0.2.1:1"), a("192.0.2.2:1"), a("[::1]:1")]);
        assert_eq!(got, vec![a("192.0.2.1:1"), a("[::1]:1"), a("192.0.2.2:1")]);
        assert!(interleave(Vec::new()).is_empty());
    }

    /// How a scripted address behaves.
    #[derive(Clone, Copy)]
    enum Behaves {
        /// SYNs vanish: the attempt never finishes.
        BlackHole,
        Refuses,
        /// Connects after this long.
        Answers(Duration),
    }

    /// Race over scripted addresses; returns the winner and when each
    /// attempt started (ms since the race began, paused clock).
    async fn scripted(
        script: Vec<(SocketAddr, Behaves)>,
    ) -> (io::Result<SocketAddr>, Vec<(SocketAddr, u128)>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let addrs = script.iter().map(|(a, _)| *a).collect();
        let log = started.clone();
        let result = race(addrs, ATTEMPT_DELAY, move |addr| {
            let how = script.iter().find(|(a, _)| *a == addr).map(|(_, b)| *b);
            log.lock().unwrap().push((addr, t0.elapsed().as_millis()));
            async move {
                match how {
                    Some(Behaves::Answers(after)) => {
                        tokio::time::sleep(after).await;
                        Ok(addr)
                    }
                    Some(Behaves::Refuses) => Err(io::ErrorKind::ConnectionRefused.into()),
                    _ => std::future::pending().await,
                }
            }
        })
        .await;
        let log = started.lock().unwrap().clone();
        (result, log)
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_holed_address_costs_only_the_attempt_delay() {
        let (won, starts) = scripted(vec![
            (a("[2001:db8::1]:110"), Behaves::BlackHole),
            (
                a("192.0.2.1:110"),
                Behaves::Answers(Duration::from_millis(10)),
            ),
        ])
        .await;
        assert_eq!(won.unwrap(), a("192.0.2.1:110"));
        assert_eq!(
            starts,
            vec![(a("[2001:db8::1]:110"), 0), (a("192.0.2.1:110"), 250)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_hands_over_at_once() {
        let (won, starts) = scripted(vec![
            (a("[2001:db8::1]:110"), Behaves::Refuses),
            (a("192.0.2.1:110"), Behaves::Answers(Duration::ZERO)),
        ])
        .await;
        assert_eq!(won.unwrap(), a("192.0.2.1:110"));
        assert_eq!(starts[1], (a("192.0.2.1:110"), 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_to_connect_wins_even_if_it_started_later() {
        let (won, _) = scripted(vec![
            (
                a("[2001:db8::1]:110"),
                Behaves::Answers(Duration::from_secs(2)),
            ),
            (
                a("192.0.2.1:110"),
                Behaves::Answers(Duration::from_millis(100)),
            ),
        ])
        .await;
        assert_eq!(won.unwrap(), a("192.0.2.1:110"));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_address_fails_the_last_error_is_returned() {
        let (won, starts) = scripted(vec![
            (a("[2001:db8::1]:110"), Behaves::Refuses),
            (a("192.0.2.1:110"), Behaves::Refuses),
        ])
        .await;
        assert_eq!(won.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(starts.len(), 2);
    }

    /// Real sockets on loopback: a listener whose accept queue is full drops
    /// SYNs, as a dead address does; the race still connects to the live
    /// one well within a timeout that a one-address-at-a-time client would
    /// spend entirely on the dead one.
    #[tokio::test]
    async fn a_real_black_hole_on_loopback_is_passed_over() {
        let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // std listens with a backlog of 128; listening again shrinks it.
        // SAFETY: a valid listening socket's fd; listen only sets its backlog.
        unsafe {
            libc::listen(std::os::fd::AsRawFd::as_raw_fd(&hole), 0);
        }
        let hole_addr = hole.local_addr().unwrap();
        // Fill the accept queue; from now on SYNs to `hole` go unanswered.
        let _filler = std::net::TcpStream::connect(hole_addr).unwrap();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            race(vec![hole_addr, live_addr], ATTEMPT_DELAY, |addr| {
                tokio::net::TcpStream::connect(addr)
            }),
        )
        .await
        .expect("the race ends well before the timeout")
        .expect("connected");
        assert_eq!(conn.peer_addr().unwrap(), live_addr);
    }
}
