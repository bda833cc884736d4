//! How many RETRs to keep in flight with PIPELINING (RFC 2449).
//!
//! Enough mail must be asked for to fill the link for a round trip (the
//! bandwidth-delay product), with room for the pauses while a batch is synced
//! to disk; but every octet asked for must still be delivered when the run is
//! stopped, so the window should not hold much more than that. The window in
//! octets follows the rate measured in this session: it holds what arrives in
//! four round trips (at least 100 ms), between `MIN_BYTES` and `MAX_BYTES`.
//! A stop then waits for about four round trips of mail, whatever the link.

use std::time::{Duration, Instant};

/// Most commands in flight: about 10 KB of `RETR n` lines, which any socket
/// buffer takes without the write blocking on a server that is busy sending.
pub const MAX_COMMANDS: usize = 1024;

/// Octets in flight before a rate is known.
pub const INITIAL_BYTES: u64 = 8 << 20;
/// Bounds of the window in octets.
pub const MIN_BYTES: u64 = 2 << 20;
pub const MAX_BYTES: u64 = 64 << 20;
/// The window covers this many round trips of mail...
const ROUND_TRIPS: u32 = 4;
/// ...and at least this long (on loopback a round trip is microseconds, but
/// a batch sync still pauses reading for tens of milliseconds).
const MIN_HORIZON: Duration = Duration::from_millis(100);

/// The RETR window of one session.
#[derive(Debug, Clone)]
pub struct Window {
    max_commands: usize,
    rtt: Duration,
    first_sent: Option<Instant>,
    received: u64,
    in_flight: u64,
}

impl Window {
    /// `pipelining`: the server offers PIPELINING (else one command at a
    /// time); `rtt`: the round trip measured in this session, if any.
    pub fn new(pipelining: bool, rtt: Option<Duration>) -> Window {
        Window {
            max_commands: if pipelining { MAX_COMMANDS } else { 1 },
            rtt: rtt.unwrap_or_default(),
            first_sent: None,
            received: 0,
            in_flight: 0,
        }
    }

    /// The window in octets at `now`.
    pub fn bytes(&self, now: Instant) -> u64 {
        let Some(start) = self.first_sent else {
            return INITIAL_BYTES;
        };
        let elapsed = now.saturating_duration_since(start);
        // Before the first replies are in, the rate says nothing yet.
        if elapsed <= self.rtt || self.received == 0 {
            return INITIAL_BYTES;
        }
        let rate = self.received as f64 / elapsed.as_secs_f64();
        let horizon = (self.rtt * ROUND_TRIPS).max(MIN_HORIZON);
        ((rate * horizon.as_secs_f64()) as u64).clamp(MIN_BYTES, MAX_BYTES)
    }

    /// Which of `sizes` (the LIST sizes of the messages still to fetch, in
    /// order, starting with the one read next) to send now, given that
    /// `sent` of them are already in flight: returns the new count in flight.
    /// The message read next is always sent.
    pub fn extend(&mut self, sizes: &[u64], sent: usize, now: Instant) -> usize {
        let limit = self.bytes(now);
        let mut end = sent;
        while end < sizes.len()
            && end < self.max_commands
            && (end == 0 || self.in_flight.saturating_add(sizes[end]) <= limit)
        {
            self.in_flight = self.in_flight.saturating_add(sizes[end]);
            end += 1;
        }
        if end > sent && self.first_sent.is_none() {
            self.first_sent = Some(now);
        }
        end
    }

    /// A reply of `server_size` octets (its LIST size) has been read.
    pub fn arrived(&mut self, server_size: u64) {
        self.in_flight = self.in_flight.saturating_sub(server_size);
        self.received = self.received.saturating_add(server_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut w = Window::new(false, None);
        let now = Instant::now();
        assert_eq!(w.extend(&[10, 10, 10], 0, now), 1);
        assert_eq!(w.extend(&[10, 10, 10], 1, now), 1);
        w.arrived(10);
        assert_eq!(w.extend(&[10, 10], 0, now), 1);
    }

    #[test]
    fn small_messages_are_bounded_by_the_command_count() {
        let mut w = Window::new(true, Some(Duration::from_millis(50)));
        let sizes = vec![5000u64; 3000];
        assert_eq!(w.extend(&sizes, 0, Instant::now()), MAX_COMMANDS);
    }

    #[test]
    fn before_any_reply_the_initial_window_holds() {
        let mut w = Window::new(true, Some(Duration::from_millis(50)));
        let sizes = vec![MB; 100];
        assert_eq!(w.extend(&sizes, 0, Instant::now()), 8);
    }

    #[test]
    fn the_message_read_next_is_sent_even_when_larger_than_the_window() {
        let mut w = Window::new(true, None);
        assert_eq!(w.extend(&[500 * MB, MB], 0, Instant::now()), 1);
    }

    #[test]
    fn the_window_grows_to_four_round_trips_of_the_measured_rate() {
        let rtt = Duration::from_millis(50);
        let mut w = Window::new(true, Some(rtt));
        let start = Instant::now();
        let sizes = vec![MB; 1000];
        let sent = w.extend(&sizes, 0, start);
        assert_eq!(sent, 8);
        // 8 MB arrived in 100 ms: 80 MB/s, so four round trips hold 16 MB.
        for _ in 0..8 {
            w.arrived(MB);
        }
        let later = start + Duration::from_millis(100);
        assert_eq!(w.bytes(later), 16 * MB);
        // The 8 read have left the window: 16 more fit.
        assert_eq!(w.extend(&sizes[8..], 0, later), 16);
    }

    #[test]
    fn the_window_stays_within_its_bounds() {
        let start = Instant::now();
        // A slow link: 100 KB/s.
        let mut slow = Window::new(true, Some(Duration::from_millis(300)));
        slow.extend(&[MB; 4], 0, start);
        slow.arrived(100_000);
        assert_eq!(slow.bytes(start + Duration::from_secs(1)), MIN_BYTES);
        // A very fast one: 10 GB/s on loopback.
        let mut fast = Window::new(true, Some(Duration::from_micros(50)));
        fast.extend(&[MB; 4], 0, start);
        fast.arrived(1 << 30);
        assert_eq!(fast.bytes(start + Duration::from_millis(100)), MAX_BYTES);
    }
}
