//! mboxrd round trip: arbitrary message bytes written through
//! `popsync::deliver::mbox::Mbox` (prepare_batch → start → write in chunks →
//! finish → commit) and read back with an independent mboxrd reader must be
//! the same bytes (the writer completes a missing final newline).
//!
//! Input layout: byte 0 holds the chunk size (bits 0-4, 0 means 1), whether
//! popsync's `Received:` header is put first (bit 5) and whether the rest is
//! split in two messages delivered in one batch (bit 6); the rest is the
//! message. The mbox lives on /dev/shm when there is one, so fsync is cheap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use popsync::deliver::mbox::Mbox;
use popsync::deliver::{MessageInfo, Target};

const RECEIVED: &str = "Received: from pop.example.com by fuzz with POP3S (popsync)\n\tfor <me@example.com>; Mon, 2 Nov 2026 03:04:05 +0000\n";

/// A private directory for one iteration's mbox, removed again at the end of
/// the iteration (a crash leaves it behind for inspection).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("popsync-fuzz-mbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Split an mboxrd file into messages: a message starts at a line beginning
/// "From " at the start of the file or after a blank line; the From line is
/// dropped, the blank line before the next separator (or at the end of the
/// file) is removed, and one '>' is removed from every `^>+From ` line.
/// Returns each message's sender and bytes.
fn read_mboxrd(file: &[u8]) -> Vec<(String, Vec<u8>)> {
    let lines: Vec<&[u8]> = file.split_inclusive(|&b| b == b'\n').collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with(b"From ")),
        "the file does not start with a From line: {file:?}"
    );
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    let mut prev_blank = true;
    for line in lines {
        if prev_blank && line.starts_with(b"From ") {
            if let Some((_, body)) = messages.last_mut() {
                assert!(
                    body.ends_with(b"\n"),
                    "blank line before a separator missing"
                );
                body.pop();
            }
            assert!(line.ends_with(b"\n"), "unterminated From line {line:?}");
            let sender = line[5..].split(|&b| b == b' ').next().unwrap_or_default();
            messages.push((String::from_utf8_lossy(sender).into_owned(), Vec::new()));
            prev_blank = false;
            continue;
        }
        prev_blank = line == b"\n";
        let (_, body) = messages.last_mut().expect("a message is open");
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        if gts > 0 && line[gts..].starts_with(b"From ") {
            body.extend_from_slice(&line[1..]);
        } else {
            body.extend_from_slice(line);
        }
    }
    let (_, last) = messages.last_mut().expect("at least one message");
    assert!(
        last.ends_with(b"\n"),
        "the file does not end in a blank line"
    );
    last.pop();
    messages
}

fn expected(message: &[u8], received: bool) -> Vec<u8> {
    let mut want = Vec::new();
    if received {
        want.extend_from_slice(RECEIVED.as_bytes());
    }
    want.extend_from_slice(message);
    if !want.is_empty() && !want.ends_with(b"\n") {
        want.push(b'\n');
    }
    want
}

/// Runs every check of this target on one input; panics on a failure.
pub fn check(data: &[u8]) {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(flags & 0x1f).max(1);
    let received = flags & 0x20 != 0;
    let messages: Vec<&[u8]> = if flags & 0x40 != 0 {
        let (a, b) = payload.split_at(payload.len() / 2);
        vec![a, b]
    } else {
        vec![payload]
    };

    let scratch = Scratch::new();
    let path = scratch.0.join("box");
    let now = Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap();
    let mut mbox = Mbox::new(path.clone(), now, Duration::from_secs(1));
    let info = MessageInfo {
        server_size: payload.len() as u64,
        received: received.then_some(RECEIVED),
    };
    let prepared = mbox.prepare_batch(messages.len()).expect("prepare_batch");
    let mut finished = Vec::new();
    for (p, msg) in prepared.iter().zip(&messages) {
        let mut sink = mbox.start(p, &info).expect("start");
        for c in msg.chunks(chunk) {
            sink.write(c).expect("write");
        }
        let f = sink.finish().expect("finish");
        finished.push(f);
    }
    let locations = mbox.commit(finished).expect("commit");
    assert_eq!(locations.len(), messages.len());
    drop(mbox);

    let file = std::fs::read(&path).expect("read the mbox back");
    let got = read_mboxrd(&file);
    assert_eq!(got.len(), messages.len(), "message count; file {file:?}");
    for ((sender, body), msg) in got.iter().zip(&messages) {
        assert!(!sender.is_empty(), "empty envelope sender");
        assert!(!sender.contains(char::is_whitespace));
        assert_eq!(
            body,
            &expected(msg, received),
            "round trip; file {:?}",
            String::from_utf8_lossy(&file)
        );
    }
    assert!(!scratch.0.join("box.lock").exists(), "dotlock left behind");
}
