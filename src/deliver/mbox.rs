//! mboxrd delivery: a `From <sender> <asctime>` separator, one more `>` on
//! every line matching `^>*From `, a blank line after each message, LF line
//! ends, fsync before the delivery counts.
//!
//! Locking is what mutt and procmail expect: a `PATH.lock` dotfile (a stale
//! one, older than 300 s, is removed with a warning) and a POSIX fcntl write
//! lock, held from `prepare` (which records the file length, the offset a torn
//! append is cut back to) until the message is committed or rolled back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

use super::{
    DeliveryError, Finished, FinishedKind, HeadBuffer, MessageInfo, Prepared, Sink, Target,
    envelope_sender,
};

/// A dotlock older than this was left by a killed process.
const STALE_DOTLOCK: Duration = Duration::from_secs(300);

/// An mbox file.
pub struct Mbox {
    path: PathBuf,
    now: DateTime<Utc>,
    lock_timeout: Duration,
    /// The locks, held from `prepare_batch` to `commit` or `abort`.
    held: Option<Locked>,
    /// The file length when the batch began: where an aborted batch is cut.
    batch_start: u64,
    warnings: Vec<String>,
}

impl Mbox {
    /// `now` dates the `From ` lines; `lock_timeout` bounds the wait for
    /// another program's lock.
    pub fn new(path: PathBuf, now: DateTime<Utc>, lock_timeout: Duration) -> Mbox {
        Mbox {
            path,
            now,
            lock_timeout,
            held: None,
            batch_start: 0,
            warnings: Vec::new(),
        }
    }

    fn lock(&mut self) -> Result<Locked, DeliveryError> {
        Locked::acquire(&self.path, self.lock_timeout, &mut self.warnings)
    }
}

/// The mbox open for appending, with both locks held.
struct Locked {
    file: File,
    path: PathBuf,
    dotlock: PathBuf,
}

impl Locked {
    fn acquire(
        path: &Path,
        timeout: Duration,
        warnings: &mut Vec<String>,
    ) -> Result<Locked, DeliveryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            std::fs::create_dir_all(dir).map_err(|source| DeliveryError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let dotlock = PathBuf::from(name);
        let deadline = Instant::now() + timeout;
        let busy = |what: &str| DeliveryError::Locked {
            path: path.to_owned(),
            holder: what.to_owned(),
        };
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&dotlock)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&dotlock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > STALE_DOTLOCK) {
                        warnings.push(format!(
                            "removed stale lock file {} (older than {} s, left by a killed process)",
                            dotlock.display(),
                            STALE_DOTLOCK.as_secs()
                        ));
                        let _ = std::fs::remove_file(&dotlock);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(busy(&dotlock.display().to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(DeliveryError::Write {
                        path: dotlock,
                        source,
                    });
                }
            }
        }
        // From here on the dotlock is ours: `Locked`'s Drop removes it.
        let file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            Err(source) => {
                let _ = std::fs::remove_file(&dotlock);
                return Err(DeliveryError::Write {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let locked = Locked {
            file,
            path: path.to_owned(),
            dotlock,
        };
        loop {
            match fcntl_write_lock(&locked.file) {
                Ok(true) => return Ok(locked),
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(false) => return Err(busy("an fcntl lock")),
                Err(source) => {
                    return Err(DeliveryError::Write {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    fn len(&self) -> Result<u64, DeliveryError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| DeliveryError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Cut the file back to `offset` and make that durable.
    fn truncate(&self, offset: u64) -> Result<(), DeliveryError> {
        let err = |source| DeliveryError::Write {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(offset).map_err(err)?;
        self.file.sync_all().map_err(|source| DeliveryError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for Mbox {
    fn drop(&mut self) {
        // A batch never committed (an error, the server went away): cut off
        // everything it appended.
        self.abort();
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // The fcntl lock goes with the descriptor; the dotlock by hand.
        let _ = std::fs::remove_file(&self.dotlock);
    }
}

/// Try to take a POSIX write lock on the whole file; false when another
/// process holds one.
fn fcntl_write_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value (l_start 0, l_len 0 = whole
    // file); the fd is open for the lifetime of `file`.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: F_SETLK with a pointer to a valid flock struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

impl Target for Mbox {
    fn describe(&self) -> String {
        format!("mbox:{}", self.path.display())
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        if self.held.is_none() {
            let locked = self.lock()?;
            self.batch_start = locked.len()?;
            self.held = Some(locked);
        }
        // Every message of the batch records the batch's start: the batch is
        // committed whole, so an interrupted one is cut back whole.
        Ok((0..n)
            .map(|_| Prepared {
                location: self.path.display().to_string(),
                offset: Some(self.batch_start),
            })
            .collect())
    }

    fn start(
        &mut self,
        _prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        if self.held.is_none() {
            self.prepare_batch(0)?;
        }
        let Some(locked) = self.held.as_ref() else {
            return Err(DeliveryError::Locked {
                path: self.path.clone(),
                holder: "nobody (lock lost)".into(),
            });
        };
        let err = |source| DeliveryError::Write {
            path: self.path.clone(),
            source,
        };
        // The lock stays with the target; the sink writes through its own
        // descriptor of the same (appending) open file.
        let file = locked.file.try_clone().map_err(err)?;
        let offset = locked.len()?;
        Ok(Box::new(MboxSink {
            out: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
            path: self.path.clone(),
            offset,
            date: self.now,
            received: info.received.map(str::to_owned),
            head: Some(HeadBuffer::default()),
            quoter: FromQuoter::default(),
            scratch: Vec::new(),
            last: b'\n',
            written: 0,
        }))
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        let mut locations = Vec::with_capacity(batch.len());
        for f in batch {
            match f.kind {
                FinishedKind::Mbox(location) => locations.push(location),
                _ => {
                    return Err(DeliveryError::Write {
                        path: self.path.clone(),
                        source: std::io::Error::other(
                            "a message of another target in an mbox batch",
                        ),
                    });
                }
            }
        }
        if let Some(locked) = self.held.as_ref()
            && let Err(source) = locked.file.sync_all()
        {
            self.abort();
            return Err(DeliveryError::Sync {
                path: self.path.clone(),
                source,
            });
        }
        // Committed: release both locks for mutt and procmail.
        self.held = None;
        Ok(locations)
    }

    fn abort(&mut self) {
        if let Some(locked) = self.held.take() {
            let _ = locked.truncate(self.batch_start);
        }
    }

    /// Cut off what an interrupted batch appended. The batch's messages are
    /// recognised by their `From ` lines, which all carry the date of the run
    /// that wrote them (`started`): those from the offset on are cut, and
    /// anything another program appended after them is kept. Calling it again
    /// for another row of the same batch finds nothing of ours and does
    /// nothing.
    fn recover(
        &mut self,
        pending: &Prepared,
        started: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        let Some(offset) = pending.offset else {
            return Ok(None);
        };
        let mut locked = self.lock()?;
        let len = locked.len()?;
        if len <= offset {
            return Ok(None);
        }
        let err = |source| DeliveryError::Write {
            path: self.path.clone(),
            source,
        };
        let stamp = format!(" {}", from_date(started));
        let ours =
            |line: &Line| line.text.starts_with(b"From ") && line.text.ends_with(stamp.as_bytes());
        let first = read_line_at(&mut locked.file, offset).map_err(err)?;
        if !first.complete {
            // A separator torn before its line end: nothing can follow it.
            if b"From ".starts_with(&first.text[..first.text.len().min(5)]) {
                locked.truncate(offset)?;
            }
            return Ok(None);
        }
        if !ours(&first) {
            if !first.text.starts_with(b"From ") {
                // The file was rewritten since (a mail reader expunged):
                // nothing at the offset is recognisably ours, so leave the
                // file alone and deliver again (a duplicate beats a loss).
                self.warnings.push(format!(
                    "{} changed since an interrupted delivery; the message is delivered again and may appear twice",
                    self.path.display()
                ));
            }
            return Ok(None);
        }
        let mut pos = offset;
        loop {
            let Some(next) = find_next_separator(&mut locked.file, pos + 1).map_err(err)? else {
                locked.truncate(offset)?;
                break;
            };
            let line = read_line_at(&mut locked.file, next).map_err(err)?;
            if !line.complete || ours(&line) {
                pos = next;
                continue;
            }
            // pwrite on an O_APPEND descriptor appends on Linux: use a
            // second, non-appending handle to move the foreign tail down.
            let mut rw = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(err)?;
            splice_out(&mut rw, offset, next).map_err(err)?;
            locked.truncate(len - (next - offset))?;
            break;
        }
        Ok(None)
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// The asctime date of a `From ` line.
fn from_date(t: DateTime<Utc>) -> String {
    t.format("%a %b %e %H:%M:%S %Y").to_string()
}

/// One line read back from the mbox (without its LF).
struct Line {
    text: Vec<u8>,
    /// False when the file ended (or `MAX_FROM_LINE` was reached) first.
    complete: bool,
}

/// Longest `From ` line recovery looks at; popsync's are far shorter.
const MAX_FROM_LINE: usize = 4096;

fn read_line_at(file: &mut File, at: u64) -> std::io::Result<Line> {
    file.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::with_capacity(256);
    file.take(MAX_FROM_LINE as u64).read_to_end(&mut buf)?;
    Ok(match memchr::memchr(b'\n', &buf) {
        Some(i) => Line {
            text: buf[..i].to_vec(),
            complete: true,
        },
        None => Line {
            text: buf,
            complete: false,
        },
    })
}

/// Offset of the next line starting with "From " at or after `from`.
fn find_next_separator(file: &mut File, from: u64) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut base = from;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        let mut window = std::mem::take(&mut carry);
        let window_start = base - window.len() as u64;
        window.extend_from_slice(&buf[..n]);
        if let Some(i) = memchr::memmem::find(&window, b"\nFrom ") {
            return Ok(Some(window_start + i as u64 + 1));
        }
        let keep = window.len().min(5);
        carry = window[window.len() - keep..].to_vec();
        base += n as u64;
    }
}

/// Move everything from `end` onwards down to `start`.
fn splice_out(file: &mut File, start: u64, end: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read_at, mut write_at) = (end, start);
    loop {
        file.seek(SeekFrom::Start(read_at))?;
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        std::os::unix::fs::FileExt::write_all_at(&*file, &buf[..n], write_at)?;
        read_at += n as u64;
        write_at += n as u64;
    }
}

/// Streaming mboxrd quoting: one more '>' on lines matching `^>*From `,
/// across any chunk boundary, with O(1) state.
#[derive(Debug, Default)]
struct FromQuoter {
    in_line: bool,
    gts: u64,
    matched: usize,
}

impl FromQuoter {
    fn quote(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        const FROM: &[u8] = b"From ";
        while !input.is_empty() {
            if self.in_line {
                match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        out.extend_from_slice(&input[..=i]);
                        input = &input[i + 1..];
                        self.in_line = false;
                    }
                    None => {
                        out.extend_from_slice(input);
                        return;
                    }
                }
                continue;
            }
            let b = input[0];
            if self.matched == 0 && b == b'>' {
                self.gts += 1;
                input = &input[1..];
            } else if b == FROM[self.matched] {
                self.matched += 1;
                input = &input[1..];
                if self.matched == FROM.len() {
                    out.push(b'>');
                    self.emit_pending(out);
                    self.in_line = true;
                }
            } else {
                self.emit_pending(out);
                // Re-read `b` as an ordinary byte of the line (it may be '\n').
                self.in_line = true;
            }
        }
    }

    fn emit_pending(&mut self, out: &mut Vec<u8>) {
        out.extend(std::iter::repeat_n(b'>', self.gts as usize));
        out.extend_from_slice(&b"From "[..self.matched]);
        self.gts = 0;
        self.matched = 0;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.emit_pending(out);
    }
}

struct MboxSink {
    out: Option<std::io::BufWriter<File>>,
    path: PathBuf,
    offset: u64,
    date: DateTime<Utc>,
    received: Option<String>,
    head: Option<HeadBuffer>,
    quoter: FromQuoter,
    scratch: Vec<u8>,
    last: u8,
    written: u64,
}

impl MboxSink {
    fn raw(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        match self.out.as_mut() {
            Some(out) => out.write_all(data).map_err(|source| DeliveryError::Write {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// The head is complete: write the separator, Received:, then the head.
    fn open_message(&mut self, head: &[u8]) -> Result<(), DeliveryError> {
        let sender = envelope_sender(head);
        let from_line = format!("From {} {}\n", sender, from_date(self.date));
        self.raw(from_line.as_bytes())?;
        if let Some(r) = self.received.take() {
            self.quoted(r.as_bytes())?;
        }
        self.quoted(head)
    }

    fn quoted(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.quoter.quote(data, &mut scratch);
        if let Some(&l) = scratch.last() {
            self.last = l;
        }
        self.written += scratch.len() as u64;
        let r = self.raw(&scratch);
        self.scratch = scratch;
        r
    }
}

impl Sink for MboxSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        match self.head.as_mut() {
            Some(head) => match head.push(data) {
                Some(whole) => {
                    self.head = None;
                    self.open_message(&whole)
                }
                None => Ok(()),
            },
            None => self.quoted(data),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, DeliveryError> {
        if let Some(mut head) = self.head.take() {
            let whole = head.finish();
            self.open_message(&whole)?;
        }
        let mut tail = Vec::new();
        self.quoter.finish(&mut tail);
        if let Some(&last) = tail.last() {
            self.last = last;
            self.written += tail.len() as u64;
            self.raw(&tail)?;
        }
        // Complete the last line, then the blank line between messages.
        if self.last != b'\n' {
            self.raw(b"\n")?;
            self.written += 1;
        }
        self.raw(b"\n")?;
        let Some(mut out) = self.out.take() else {
            return Err(DeliveryError::Write {
                path: self.path.clone(),
                source: std::io::Error::other("delivery already finished"),
            });
        };
        if let Err(source) = out.flush() {
            let (file, _) = out.into_parts();
            let _ = file.set_len(self.offset);
            return Err(DeliveryError::Write {
                path: self.path.clone(),
                source,
            });
        }
        Ok(Finished {
            kind: FinishedKind::Mbox(format!("{}@{}", self.path.display(), self.offset)),
            size: self.written,
        })
    }
}

impl Drop for MboxSink {
    fn drop(&mut self) {
        // Not finished (a write failed, the server went away): cut the
        // partial message off so the mbox holds only whole messages.
        if let Some(out) = self.out.take() {
            let (file, _) = out.into_parts();
            let _ = file.set_len(self.offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn quote_all(chunks: &[&[u8]]) -> Vec<u8> {
        let mut q = FromQuoter::default();
        let mut out = Vec::new();
        for c in chunks {
            q.quote(c, &mut out);
        }
        q.finish(&mut out);
        out
    }

    #[test]
    fn from_lines_get_one_more_gt_and_others_are_untouched() {
        let input = b"From a\n>From b\n>>From c\nFrom\nFro\n>x\nxFrom d\n>>>\n";
        let want = b">From a\n>>From b\n>>>From c\nFrom\nFro\n>x\nxFrom d\n>>>\n";
        assert_eq!(quote_all(&[input]), want);
    }

    #[test]
    fn quoting_is_the_same_at_every_split_point() {
        let input: &[u8] = b"x\n>>From y\nFrom z\n>Fro\nFrom";
        let whole = quote_all(&[input]);
        assert_eq!(whole, b"x\n>>>From y\n>From z\n>Fro\nFrom");
        for i in 0..=input.len() {
            assert_eq!(
                quote_all(&[&input[..i], &input[i..]]),
                whole,
                "split at {i}"
            );
        }
    }

    /// mboxrd reading: one `>` less on lines matching `^>+From `.
    fn unquote(quoted: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in quoted.split_inclusive(|&b| b == b'\n') {
            let gts = line.iter().take_while(|&&b| b == b'>').count();
            if gts > 0 && line[gts..].starts_with(b"From ") {
                out.extend_from_slice(&line[1..]);
            } else {
                out.extend_from_slice(line);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn quoting_round_trips_and_leaves_no_bare_from_line(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex(">{0,3}From [a-z ]{0,8}").unwrap(),
                    proptest::string::string_regex(">{0,3}Fro?m?").unwrap(),
                    proptest::string::string_regex("[ -~]{0,12}").unwrap(),
                ],
                0..20,
            ),
            cut in 0usize..400,
        ) {
            let input = lines.join("\n").into_bytes();
            let cut = cut.min(input.len());
            let quoted = quote_all(&[&input[..cut], &input[cut..]]);
            proptest::prop_assert_eq!(unquote(&quoted), input);
            for line in quoted.split(|&b| b == b'\n') {
                proptest::prop_assert!(!line.starts_with(b"From "), "bare From line in {:?}", quoted);
            }
        }
    }

    fn info() -> MessageInfo<'static> {
        MessageInfo {
            server_size: 0,
            received: None,
        }
    }

    fn deliver(mbox: &mut Mbox, msg: &[u8]) -> Result<Vec<String>, DeliveryError> {
        let p = mbox.prepare_batch(1)?.remove(0);
        let mut sink = mbox.start(&p, &info())?;
        for chunk in msg.chunks(7) {
            sink.write(chunk)?;
        }
        let f = sink.finish()?;
        mbox.commit(vec![f])
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn messages_get_separator_sender_date_and_blank_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = Mbox::new(path.clone(), now(), Duration::from_secs(1));
        deliver(&mut m, b"Return-Path: <a@b>\nSubject: 1\n\nFrom here\n").unwrap();
        deliver(&mut m, b"Subject: 2\n\nno newline").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "From a@b Mon Nov  2 03:04:05 2026\nReturn-Path: <a@b>\nSubject: 1\n\n>From here\n\n\
             From MAILER-DAEMON Mon Nov  2 03:04:05 2026\nSubject: 2\n\nno newline\n\n"
        );
        assert!(!dir.path().join("box.lock").exists());
    }

    #[test]
    fn an_uncommitted_message_is_cut_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = Mbox::new(path.clone(), now(), Duration::from_secs(1));
        deliver(&mut m, b"Subject: 1\n\nbody\n").unwrap();
        let before = std::fs::read(&path).unwrap();
        let p = m.prepare_batch(1).unwrap().remove(0);
        let mut sink = m.start(&p, &info()).unwrap();
        sink.write(&vec![b'x'; 300_000]).unwrap();
        drop(sink);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn an_aborted_batch_is_cut_back_whole_and_a_committed_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let mut m = Mbox::new(path.clone(), now(), Duration::from_secs(1));
        deliver(&mut m, b"Subject: kept\n\nbody\n").unwrap();
        let before = std::fs::read(&path).unwrap();
        let batch = m.prepare_batch(2).unwrap();
        assert_eq!(batch[0].offset, Some(before.len() as u64));
        assert_eq!(batch[0].offset, batch[1].offset);
        for p in &batch {
            let mut sink = m.start(p, &info()).unwrap();
            sink.write(b"Subject: lost\n\nx\n").unwrap();
            let _finished = sink.finish().unwrap();
        }
        assert!(
            dir.path().join("box.lock").exists(),
            "the lock is held across the batch"
        );
        drop(m);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!dir.path().join("box.lock").exists());
    }

    #[test]
    fn recovery_cuts_a_torn_append_and_keeps_what_others_appended_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let good = b"From x Mon Nov  2 03:04:05 2026\nSubject: ok\n\nbody\n\n";
        let torn = b"From y Mon Nov  2 03:04:05 2026\nSubject: torn\n\nhal";
        let later = b"\nFrom z Tue Nov  3 09:00:00 2026\nSubject: later\n\nz\n\n";
        std::fs::write(&path, [&good[..], &torn[..], &later[..]].concat()).unwrap();
        let mut m = Mbox::new(path.clone(), now(), Duration::from_secs(1));
        let pending = Prepared {
            location: path.display().to_string(),
            offset: Some(good.len() as u64),
        };
        assert_eq!(m.recover(&pending, now()).unwrap(), None);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [&good[..], &later[1..]].concat()
        );

        std::fs::write(&path, [&good[..], &torn[..]].concat()).unwrap();
        m.recover(&pending, now()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }

    #[test]
    fn recovery_of_a_batch_cuts_all_its_messages_once_and_nothing_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let before = b"From a Sun Nov  1 00:00:00 2026\nSubject: old\n\nold\n\n";
        let ours = b"From b Mon Nov  2 03:04:05 2026\nS: 1\n\none\n\nFrom c Mon Nov  2 03:04:05 2026\nS: 2\n\ntwo\n\nFrom d Mon Nov  2 03:04:05 2026\nS: 3\n\nthr";
        let foreign = b"\n\nFrom e Mon Nov  2 03:09:00 2026\nS: procmail\n\nkeep me\n\n";
        std::fs::write(&path, [&before[..], &ours[..], &foreign[..]].concat()).unwrap();
        let mut m = Mbox::new(path.clone(), now(), Duration::from_secs(1));
        let pending = Prepared {
            location: path.display().to_string(),
            offset: Some(before.len() as u64),
        };
        let want = [&before[..], &foreign[2..]].concat();
        // One pending row per message of the batch: each recovery after the
        // first finds nothing of ours at the offset.
        for _ in 0..5 {
            assert_eq!(m.recover(&pending, now()).unwrap(), None);
            assert_eq!(std::fs::read(&path).unwrap(), want);
        }
        assert!(m.take_warnings().is_empty());
    }

    #[test]
    fn a_held_dotlock_makes_delivery_wait_then_fail_and_a_stale_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let lock = dir.path().join("box.lock");
        std::fs::write(&lock, "1").unwrap();
        let mut m = Mbox::new(path.clone(), now(), Duration::from_millis(300));
        let e = deliver(&mut m, b"S: 1\n\nb\n").unwrap_err();
        assert!(matches!(e, DeliveryError::Locked { .. }), "{e}");
        let old = SystemTime::now() - Duration::from_secs(600);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        deliver(&mut m, b"S: 1\n\nb\n").unwrap();
        assert_eq!(m.take_warnings().len(), 1);
    }
}
