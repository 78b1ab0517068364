//! Capture of replica stdout and stderr: bounded on disk, queryable, followable, and surviving a daemon
//! restart.
//!
//! A replica's stdout and stderr are not plain pipes to the daemon, because a replica must outlive the daemon
//! (a pipe would hand it SIGPIPE when the daemon dies). Each stream is a named FIFO under the FIFO directory,
//! `<instance_id>.<stream>`, that the child holds open read-write: it always has a reader, never gets SIGPIPE,
//! and while the daemon is down it fills the pipe buffer (raised to 1 MiB, best effort) and then blocks until
//! a new daemon opens the same FIFO again with [`LogStore::attach`]. End of file on the FIFO means every writer
//! (the replica and any children that inherited its stdio) is gone.
//!
//! Lines are split, timestamped on arrival and passed through a per-instance token bucket, so that a service
//! printing megabytes per second costs the daemon a bounded amount of work and disk. Each service has one
//! writer thread fed by a bounded channel; it appends JSON lines to `<dir>/<service>.log` and rotates it to
//! `.log.1`, `.log.2`, and so on. When the channel is full the FIFO reader waits, which pushes back on the
//! replica's pipe, never on the daemon's runtime.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// The supervisor's own events about the replica (started, exited, lines dropped).
    Berth,
}

/// One captured line, as stored on disk (one JSON object per line) and sent to followers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Arrival time, RFC 3339 in UTC with milliseconds.
    pub ts: String,
    /// Arrival time in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub service: String,
    pub replica: u32,
    pub instance: String,
    pub stream: Stream,
    pub line: String,
}

/// Bounds on what a service's logs may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The current file is rotated once it would grow past this.
    pub max_file_bytes: u64,
    /// Files kept per service, the current one included.
    pub max_files: u32,
    /// Longer lines are cut and end with [`TRUNCATED_MARKER`].
    pub max_line_bytes: usize,
    /// Sustained rate per instance; lines beyond it are dropped and counted.
    pub rate_bytes_per_sec: u64,
    /// Bytes an instance may print at once before the rate applies.
    pub burst_bytes: u64,
}

/// What one stored line costs beyond its text: the JSON record's timestamp, names and stream. Charged to
/// the rate limit, so that the limit bounds bytes on disk even for a flood of short lines.
const RECORD_OVERHEAD_BYTES: u64 = 160;

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_file_bytes: 8 << 20,
            max_files: 3,
            max_line_bytes: 16 << 10,
            rate_bytes_per_sec: 1 << 20,
            burst_bytes: 4 << 20,
        }
    }
}

/// Which lines [`LogStore::query`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub replica: Option<u32>,
    /// Only lines that arrived at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only the last `tail` matching lines.
    pub tail: Option<usize>,
}

/// Appended to a line cut at [`LogLimits::max_line_bytes`].
pub const TRUNCATED_MARKER: &str = " [truncated]";

/// A log file or FIFO operation that failed, carried inside the [`io::Error`]s of [`LogStore`].
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {path}: {source}", path = path.display())]
pub struct LogFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The logs of every service; cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens the store. `dir` (normally `<state>/logs`) holds the log files and `fifo_dir` (normally
    /// `<state>/run/fifo`) the FIFOs; both are created if missing.
    pub fn new(dir: PathBuf, fifo_dir: PathBuf, limits: LogLimits) -> io::Result<LogStore> {
        for path in [&dir, &fifo_dir] {
            fs::create_dir_all(path).map_err(|source| file_error("create", path, source))?;
        }
        let limits = LogLimits { max_files: limits.max_files.max(1), ..limits };
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir,
                fifo_dir,
                limits,
                services: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The stdio of a replica for `stream`: the instance's FIFO (created if missing) opened read-write, so
    /// that the replica never gets SIGPIPE.
    ///
    /// The returned [`Stdio`] keeps a writer open until the `Command` holding it is dropped. Call
    /// [`LogStore::attach`] before dropping it (or before the replica can exit), and drop the `Command`
    /// right after spawning: end of file arrives only once every writer is gone.
    pub fn child_stdio(&self, instance_id: &str, stream: Stream) -> io::Result<Stdio> {
        let path = self.inner.fifo_path(instance_id, stream)?;
        make_fifo(&path)?;
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| file_error("open", &path, source))?;
        if let Err(error) = rustix::pipe::fcntl_setpipe_size(&fifo, FIFO_BUFFER_BYTES) {
            tracing::debug!(fifo = %path.display(), error = %error, "cannot enlarge the pipe buffer");
        }
        Ok(Stdio::from(fifo))
    }

    /// Starts capturing one stream of an instance: opens the read side of its FIFO and spawns a task that
    /// reads lines until every writer is gone, then removes the FIFO. Also used by a restarted daemon for
    /// replicas it adopts; whatever they wrote meanwhile is still in the pipe. Must be called within a tokio
    /// runtime.
    pub fn attach(&self, service: &str, replica: u32, instance_id: &str, stream: Stream) -> io::Result<()> {
        check_name("service", service)?;
        let path = self.inner.fifo_path(instance_id, stream)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| io::Error::other("log capture needs a tokio runtime"))?;
        let writer = self.inner.service(service).writer(&self.inner)?;
        let fifo = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| file_error("open", &path, source))?;
        if !fifo.metadata().map_err(|source| file_error("inspect", &path, source))?.file_type().is_fifo() {
            return Err(io::Error::new(ErrorKind::InvalidInput, format!("{} is not a fifo", path.display())));
        }
        // Read once before waiting for readiness: with no writer left at all (the replica died while no daemon
        // ran), read(2) reports end of file but poll reports nothing until some writer appears, which would
        // park the capture forever.
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let first_read = match (&fifo).read(&mut buf) {
            Ok(read) => Some(read),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => None,
            Err(source) => return Err(file_error("read", &path, source)),
        };
        let receiver = {
            let _entered = runtime.enter();
            pipe::Receiver::from_file_unchecked(fifo).map_err(|source| file_error("watch", &path, source))?
        };
        let capture = Capture {
            store: Arc::clone(&self.inner),
            bucket: self.inner.bucket(instance_id),
            writer,
            fifo: path,
            service: service.to_owned(),
            replica,
            instance: instance_id.to_owned(),
            stream,
        };
        runtime.spawn(capture.run(receiver, buf, first_read));
        Ok(())
    }

    /// Records an event of the supervisor about a replica as a [`Stream::Berth`] line. Never blocks a tokio
    /// runtime: when the writer's queue is full, a task delivers the line later.
    pub fn record(&self, service: &str, replica: u32, instance_id: &str, line: &str) {
        if let Err(error) = check_name("service", service) {
            tracing::warn!(error = %error, "log event not recorded");
            return;
        }
        let writer = match self.inner.service(service).writer(&self.inner) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(service, error = %error, "log event not recorded");
                return;
            }
        };
        let line = log_line(service, replica, instance_id, Stream::Berth, line.to_owned(), SystemTime::now());
        match writer.try_send(Command::Line(line)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(command)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let _ = writer.send(command).await;
                    });
                }
                Err(_) => {
                    let _ = writer.blocking_send(command);
                }
            },
        }
    }

    /// The lines of `service` that match `query`, oldest first, read from the rotated files and the current
    /// one. Blocking file IO: call it from `spawn_blocking` in async code. Lines still queued for the writer
    /// are not included; [`LogStore::sync`] waits for them.
    pub fn query(&self, service: &str, query: &LogQuery) -> io::Result<Vec<LogLine>> {
        check_name("service", service)?;
        let log = self.inner.service(service);
        let paths = log_paths(&self.inner.dir, service, self.inner.limits.max_files);
        // Open every file under the rotation lock: an open file keeps its content across a later rename.
        let files: Vec<(File, &PathBuf)> = {
            let _rotation = log.rotation.read().unwrap_or_else(PoisonError::into_inner);
            let mut files = Vec::new();
            for path in paths.iter().rev() {
                match File::open(path) {
                    Ok(file) => files.push((file, path)),
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(source) => return Err(file_error("open", path, source)),
                }
            }
            files
        };
        let mut res = VecDeque::new();
        for (file, path) in files {
            let mut reader = BufReader::new(file);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf).map_err(|source| file_error("read", path, source))? == 0 {
                    break;
                }
                // A line cut short by a crash is skipped rather than failing the whole query.
                let Ok(line) = serde_json::from_slice::<LogLine>(&buf) else { continue };
                if matches(&line, query) {
                    res.push_back(line);
                    if query.tail.is_some_and(|tail| res.len() > tail) {
                        res.pop_front();
                    }
                }
            }
        }
        Ok(res.into())
    }

    /// New lines of `service` as they are written.
    pub fn follow(&self, service: &str) -> broadcast::Receiver<LogLine> {
        self.inner.service(service).followers.subscribe()
    }

    /// Waits until every line accepted so far for `service` is written and flushed.
    pub async fn sync(&self, service: &str) {
        let writer = lock(&self.inner.service(service).writer).clone();
        let Some(writer) = writer else { return };
        let (ack, done) = oneshot::channel();
        if writer.send(Command::Sync(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Removes the FIFOs of one instance, for example after its spawn failed. A running capture removes its
    /// own FIFO at end of file.
    pub fn remove_fifos(&self, instance_id: &str) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let Ok(path) = self.inner.fifo_path(instance_id, stream) else { return };
            if let Err(error) = remove_if_exists(&path) {
                tracing::debug!(error = %error, "cannot remove fifo");
            }
        }
    }

    /// Removes the FIFOs of instances that no longer exist; called at startup with the adopted instances.
    pub fn remove_fifos_except(&self, keep_instance_ids: &[String]) {
        let Ok(entries) = fs::read_dir(&self.inner.fifo_dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((instance_id, suffix)) = name.to_str().and_then(|name| name.rsplit_once('.')) else {
                continue;
            };
            if !matches!(suffix, "stdout" | "stderr") || keep_instance_ids.iter().any(|keep| keep == instance_id) {
                continue;
            }
            if let Err(error) = fs::remove_file(entry.path()) {
                tracing::debug!(fifo = %entry.path().display(), error = %error, "cannot remove stale fifo");
            }
        }
    }
}

struct Inner {
    dir: PathBuf,
    fifo_dir: PathBuf,
    limits: LogLimits,
    services: Mutex<HashMap<String, Arc<ServiceLog>>>,
    /// Shared by the stdout and stderr captures of an instance; an entry lives while a capture holds it.
    buckets: Mutex<HashMap<String, Arc<Mutex<TokenBucket>>>>,
}

struct ServiceLog {
    name: String,
    /// Held for writing while files are renamed, for reading while a query opens them.
    rotation: Arc<RwLock<()>>,
    followers: broadcast::Sender<LogLine>,
    /// Started on first use; replaced if its thread is gone.
    writer: Mutex<Option<mpsc::Sender<Command>>>,
}

enum Command {
    Line(LogLine),
    Sync(oneshot::Sender<()>),
}

/// The task reading one FIFO.
struct Capture {
    store: Arc<Inner>,
    bucket: Arc<Mutex<TokenBucket>>,
    writer: mpsc::Sender<Command>,
    fifo: PathBuf,
    service: String,
    replica: u32,
    instance: String,
    stream: Stream,
}

/// Per-instance rate limit in bytes, with a count of the lines it refused.
#[derive(Debug)]
struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
    dropped: u64,
}

/// Splits a byte stream into lines: joins lines across reads, strips CRLF, decodes invalid UTF-8 lossily,
/// and cuts lines longer than the limit (dropping their rest up to the next newline).
#[derive(Debug)]
struct LineSplitter {
    max_line_bytes: usize,
    pending: Vec<u8>,
    /// The current line was already emitted cut; skip to the next newline.
    discarding: bool,
}

/// The writer thread's side of a service's log files.
struct LogFiles {
    service: String,
    paths: Vec<PathBuf>,
    max_file_bytes: u64,
    rotation: Arc<RwLock<()>>,
    current: Option<BufWriter<File>>,
    size: u64,
    /// The last write failed; suppresses a warning per line while the disk stays full.
    failing: bool,
}

const FIFO_BUFFER_BYTES: usize = 1 << 20;
const READ_BUFFER_BYTES: usize = 64 << 10;
const WRITER_QUEUE: usize = 1024;
const FOLLOWER_QUEUE: usize = 4096;

impl Inner {
    fn service(&self, name: &str) -> Arc<ServiceLog> {
        let mut services = lock(&self.services);
        let log = services.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(ServiceLog {
                name: name.to_owned(),
                rotation: Arc::new(RwLock::new(())),
                followers: broadcast::channel(FOLLOWER_QUEUE).0,
                writer: Mutex::new(None),
            })
        });
        Arc::clone(log)
    }

    fn bucket(&self, instance_id: &str) -> Arc<Mutex<TokenBucket>> {
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry(instance_id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::new(&self.limits, Instant::now()))));
        Arc::clone(bucket)
    }

    /// Forgets an instance's bucket once no capture uses it. Clones are only made under the map's lock, so
    /// the count cannot grow meanwhile.
    fn release_bucket(&self, instance_id: &str, bucket: Arc<Mutex<TokenBucket>>) {
        let mut buckets = lock(&self.buckets);
        if Arc::strong_count(&bucket) == 2 {
            buckets.remove(instance_id);
        }
    }

    fn fifo_path(&self, instance_id: &str, stream: Stream) -> io::Result<PathBuf> {
        check_name("instance id", instance_id)?;
        let suffix = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Berth => {
                return Err(io::Error::new(ErrorKind::InvalidInput, "the berth stream has no fifo"));
            }
        };
        Ok(self.fifo_dir.join(format!("{instance_id}.{suffix}")))
    }
}

impl ServiceLog {
    fn writer(&self, store: &Inner) -> io::Result<mpsc::Sender<Command>> {
        let mut slot = lock(&self.writer);
        if let Some(writer) = slot.as_ref().filter(|writer| !writer.is_closed()) {
            return Ok(writer.clone());
        }
        let (writer, commands) = mpsc::channel(WRITER_QUEUE);
        let files = LogFiles {
            service: self.name.clone(),
            paths: log_paths(&store.dir, &self.name, store.limits.max_files),
            max_file_bytes: store.limits.max_file_bytes,
            rotation: Arc::clone(&self.rotation),
            current: None,
            size: 0,
            failing: false,
        };
        let followers = self.followers.clone();
        std::thread::Builder::new()
            .name(format!("berth-log-{}", self.name))
            .spawn(move || write_loop(files, commands, followers))?;
        *slot = Some(writer.clone());
        Ok(writer)
    }
}

impl Capture {
    /// `first_read` bytes at the start of `buf` were read by [`LogStore::attach`] already.
    async fn run(self, mut receiver: pipe::Receiver, mut buf: Vec<u8>, mut first_read: Option<usize>) {
        let mut splitter = LineSplitter::new(self.store.limits.max_line_bytes);
        let mut admitted = Vec::new();
        loop {
            let read = match first_read.take() {
                Some(read) => Ok(read),
                None => receiver.read(&mut buf).await,
            };
            let read = match read {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(fifo = %self.fifo.display(), error = %error, "log capture failed");
                    break;
                }
            };
            self.admit(&mut admitted, SystemTime::now(), |emit| splitter.push(&buf[..read], emit));
            for line in admitted.drain(..) {
                self.send(line).await;
            }
        }
        self.admit(&mut admitted, SystemTime::now(), |emit| splitter.finish(emit));
        let dropped = std::mem::take(&mut lock(&self.bucket).dropped);
        if let Some(marker) = self.dropped_marker(dropped, SystemTime::now()) {
            admitted.push(marker);
        }
        for line in admitted.drain(..) {
            self.send(line).await;
        }
        drop(receiver);
        if let Err(error) = fs::remove_file(&self.fifo) {
            tracing::debug!(fifo = %self.fifo.display(), error = %error, "cannot remove fifo");
        }
        self.store.release_bucket(&self.instance, self.bucket);
    }

    /// Passes the lines that `split` emits through the token bucket and appends those it admits to
    /// `admitted`. Dropped lines are only counted, never decoded, so a flood costs little more than reading.
    fn admit(&self, admitted: &mut Vec<LogLine>, now: SystemTime, split: impl FnOnce(&mut dyn FnMut(&[u8], bool))) {
        let mut bucket = lock(&self.bucket);
        let arrived = Instant::now();
        split(&mut |bytes, truncated| {
            let cost = bytes.len() as u64 + RECORD_OVERHEAD_BYTES;
            let Some(dropped_before) = bucket.admit(cost, arrived) else { return };
            admitted.extend(self.dropped_marker(dropped_before, now));
            let text = decode_line(bytes, truncated);
            admitted.push(log_line(&self.service, self.replica, &self.instance, self.stream, text, now));
        });
    }

    fn dropped_marker(&self, dropped: u64, now: SystemTime) -> Option<LogLine> {
        (dropped > 0).then(|| {
            let text = format!("dropped {dropped} lines: log rate limit");
            log_line(&self.service, self.replica, &self.instance, Stream::Berth, text, now)
        })
    }

    /// Waits while the writer's queue is full: that stalls this FIFO, and so the replica, not the daemon.
    async fn send(&self, line: LogLine) {
        // A closed queue means the writer thread is gone; the line is lost but the FIFO keeps draining.
        let _ = self.writer.send(Command::Line(line)).await;
    }
}

impl TokenBucket {
    fn new(limits: &LogLimits, now: Instant) -> TokenBucket {
        let burst = limits.burst_bytes.max(1) as f64;
        TokenBucket {
            rate_per_sec: limits.rate_bytes_per_sec as f64,
            burst,
            tokens: burst,
            refilled_at: now,
            dropped: 0,
        }
    }

    /// Takes `cost` bytes if available: `Some(lines dropped since the last admitted one)`, or `None` when
    /// the line is dropped (and counted).
    fn admit(&mut self, cost: u64, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.refilled_at = now;
        // A line longer than the burst could never pass otherwise.
        let cost = (cost as f64).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

impl LineSplitter {
    fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter { max_line_bytes: max_line_bytes.max(1), pending: Vec::new(), discarding: false }
    }

    /// Emits the complete lines in `chunk`, as bytes plus whether they were cut, and keeps the rest for the
    /// next chunk.
    fn push(&mut self, chunk: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            let segment = &rest[..newline];
            rest = &rest[newline + 1..];
            if self.discarding {
                self.discarding = false;
            } else if self.pending.is_empty() {
                emit_line(segment, self.max_line_bytes, emit);
            } else {
                self.pending.extend_from_slice(segment);
                emit_line(&self.pending, self.max_line_bytes, emit);
                self.pending.clear();
            }
        }
        if !self.discarding {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > self.max_line_bytes {
                emit_line(&self.pending, self.max_line_bytes, emit);
                self.pending.clear();
                self.discarding = true;
            }
        }
    }

    /// Emits the unterminated last line, at end of file.
    fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !std::mem::take(&mut self.discarding) && !self.pending.is_empty() {
            emit_line(&self.pending, self.max_line_bytes, emit);
        }
        self.pending.clear();
    }
}

impl LogFiles {
    fn write(&mut self, line: &LogLine) {
        let mut bytes = match serde_json::to_vec(line) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(service = %self.service, error = %error, "cannot encode log line");
                return;
            }
        };
        bytes.push(b'\n');
        let res = self.rotate_if_full(bytes.len() as u64).and_then(|()| {
            let current = self.open()?;
            current.write_all(&bytes)
        });
        match res {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.failing = false;
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(service = %self.service, error = %error, "cannot write log file; dropping lines");
                }
                self.failing = true;
                // Reopen on the next line, in case the file was removed or the disk recovers.
                self.current = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(current) = &mut self.current
            && let Err(error) = current.flush()
        {
            tracing::warn!(service = %self.service, error = %error, "cannot flush log file");
            self.current = None;
        }
    }

    fn open(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.current.is_none() {
            let path = &self.paths[0];
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| file_error("open", path, source))?;
            self.size = file.metadata()?.len();
            self.current = Some(BufWriter::new(file));
        }
        Ok(self.current.as_mut().expect("opened just above"))
    }

    /// Renames `.log.N` to `.log.N+1` down to `.log` to `.log.1`; the oldest file is overwritten.
    fn rotate_if_full(&mut self, incoming: u64) -> io::Result<()> {
        if self.current.is_none() {
            self.open()?;
        }
        if self.size == 0 || self.size + incoming <= self.max_file_bytes {
            return Ok(());
        }
        if let Some(mut current) = self.current.take() {
            current.flush()?;
        }
        {
            let _rotation = self.rotation.write().unwrap_or_else(PoisonError::into_inner);
            if self.paths.len() == 1 {
                remove_if_exists(&self.paths[0])?;
            }
            for idx in (1..self.paths.len()).rev() {
                match fs::rename(&self.paths[idx - 1], &self.paths[idx]) {
                    Err(error) if error.kind() != ErrorKind::NotFound => {
                        return Err(file_error("rotate", &self.paths[idx - 1], error));
                    }
                    _ => {}
                }
            }
        }
        self.size = 0;
        Ok(())
    }
}

/// The writer thread of one service: writes lines in arrival order and flushes whenever the queue is
/// momentarily empty, so bursts are batched and a quiet service is on disk at once.
fn write_loop(mut files: LogFiles, mut commands: mpsc::Receiver<Command>, followers: broadcast::Sender<LogLine>) {
    loop {
        let command = match commands.try_recv() {
            Ok(command) => command,
            Err(mpsc::error::TryRecvError::Empty) => {
                files.flush();
                match commands.blocking_recv() {
                    Some(command) => command,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match command {
            Command::Line(line) => {
                files.write(&line);
                // No follower is not an error.
                let _ = followers.send(line);
            }
            Command::Sync(ack) => {
                files.flush();
                let _ = ack.send(());
            }
        }
    }
    files.flush();
}

fn log_line(service: &str, replica: u32, instance: &str, stream: Stream, line: String, now: SystemTime) -> LogLine {
    let ts_ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    LogLine {
        ts: humantime::format_rfc3339_millis(now).to_string(),
        ts_ms,
        service: service.to_owned(),
        replica,
        instance: instance.to_owned(),
        stream,
        line,
    }
}

fn matches(line: &LogLine, query: &LogQuery) -> bool {
    query.replica.is_none_or(|replica| line.replica == replica)
        && query.since_ms.is_none_or(|since_ms| line.ts_ms >= since_ms)
}

/// `<service>.log` first, then `.log.1` up to `.log.<max_files - 1>`.
fn log_paths(dir: &Path, service: &str, max_files: u32) -> Vec<PathBuf> {
    (0..max_files.max(1))
        .map(|idx| match idx {
            0 => dir.join(format!("{service}.log")),
            idx => dir.join(format!("{service}.log.{idx}")),
        })
        .collect()
}

/// Creates the FIFO, or keeps an existing one; anything else in its place is replaced.
fn make_fifo(path: &Path) -> io::Result<()> {
    if let Ok(metadata) = fs::symlink_metadata(path) {
        if metadata.file_type().is_fifo() {
            return Ok(());
        }
        fs::remove_file(path).map_err(|source| file_error("replace", path, source))?;
    }
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    match rustix::fs::mkfifoat(rustix::fs::CWD, path, mode) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(errno) => Err(file_error("create fifo", path, errno.into())),
    }
}

/// Emits one line without its newline: drops a trailing `\r` and cuts it at `max_line_bytes`.
fn emit_line(line: &[u8], max_line_bytes: usize, emit: &mut dyn FnMut(&[u8], bool)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.len() > max_line_bytes {
        true => emit(&line[..floor_char_boundary(line, max_line_bytes)], true),
        false => emit(line, false),
    }
}

fn decode_line(bytes: &[u8], truncated: bool) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if truncated {
        text.push_str(TRUNCATED_MARKER);
    }
    text
}

/// The largest `idx <= max` that does not split a UTF-8 sequence (invalid data is cut at `max`).
fn floor_char_boundary(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let is_continuation = |idx: usize| bytes[idx] & 0xC0 == 0x80;
    let mut idx = max;
    while idx > 0 && max - idx < 3 && is_continuation(idx) {
        idx -= 1;
    }
    if is_continuation(idx) { max } else { idx }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(file_error("remove", path, error)),
        _ => Ok(()),
    }
}

/// Names become file names: one plain path component.
fn check_name(what: &str, name: &str) -> io::Result<()> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    match plain {
        true => Ok(()),
        false => Err(io::Error::new(ErrorKind::InvalidInput, format!("{what} `{name}` is not a plain file name"))),
    }
}

fn file_error(action: &'static str, path: &Path, source: io::Error) -> io::Error {
    io::Error::new(source.kind(), LogFileError { action, path: path.to_owned(), source })
}

/// A panic while holding one of these locks leaves consistent data (plain maps and counters), so poisoning
/// is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
