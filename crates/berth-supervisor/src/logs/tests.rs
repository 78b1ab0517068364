use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

fn open_store(temp: &TempDir, limits: LogLimits) -> LogStore {
    LogStore::new(temp.path().join("logs"), temp.path().join("run/fifo"), limits).expect("temp dir is writable")
}

fn fifo(temp: &TempDir, instance: &str, stream: &str) -> PathBuf {
    temp.path().join(format!("run/fifo/{instance}.{stream}"))
}

/// A replica process, killed and reaped when the test ends, even on failure.
struct Replica {
    child: Child,
}

impl Replica {
    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("child can be reaped")
    }

    async fn finish(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.wait()).await.expect("wait does not panic")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Both fail harmlessly once the child is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sh -c script` as a replica of `service` with both streams captured, in the order the supervisor
/// uses: FIFOs, spawn, attach, then drop the `Command` and with it the daemon's write ends.
fn spawn_captured(store: &LogStore, service: &str, replica: u32, instance: &str, script: &str) -> Replica {
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(store.child_stdio(instance, Stream::Stdout).expect("fifo can be created"))
        .stderr(store.child_stdio(instance, Stream::Stderr).expect("fifo can be created"));
    let replica_process = Replica { child: command.spawn().expect("sh is installed") };
    store.attach(service, replica, instance, Stream::Stdout).expect("fifo exists");
    store.attach(service, replica, instance, Stream::Stderr).expect("fifo exists");
    replica_process
}

/// Waits until both captures of `instance` saw end of file (they remove their FIFO last), then until the
/// writer has flushed.
async fn wait_for_capture(store: &LogStore, temp: &TempDir, service: &str, instance: &str) {
    let deadline = Instant::now() + DEADLINE;
    while fifo(temp, instance, "stdout").exists() || fifo(temp, instance, "stderr").exists() {
        assert!(Instant::now() < deadline, "capture of {instance} did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.sync(service).await;
}

fn texts(lines: &[LogLine], stream: Stream) -> Vec<&str> {
    lines.iter().filter(|line| line.stream == stream).map(|line| line.line.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_stdout_and_stderr_in_order() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    let script = "for i in $(seq 1 1000); do echo line $i; done; echo err >&2";
    let child = spawn_captured(&store, "web", 2, "web-2-a", script);
    assert!(child.finish().await.success());
    wait_for_capture(&store, &temp, "web", "web-2-a").await;

    let lines = store.query("web", &LogQuery::default()).expect("log is readable");
    let expected: Vec<String> = (1..=1000).map(|idx| format!("line {idx}")).collect();
    assert_eq!(texts(&lines, Stream::Stdout), expected);
    assert_eq!(texts(&lines, Stream::Stderr), ["err"]);
    assert_eq!(texts(&lines, Stream::Berth), Vec::<&str>::new());
    for line in &lines {
        assert_eq!((line.service.as_str(), line.replica, line.instance.as_str()), ("web", 2, "web-2-a"));
        let ts = humantime::parse_rfc3339(&line.ts).expect("ts is RFC 3339");
        let ts_ms = ts.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        assert_eq!(ts_ms, line.ts_ms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_lines_split_across_writes() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    // The pauses make the halves separate reads; `\303\251` is an é cut between two writes.
    let script = r"printf abc; sleep 0.1; printf 'def\r\ncaf\303'; sleep 0.1; printf '\251\nno newline'";
    let child = spawn_captured(&store, "web", 0, "web-0-a", script);
    assert!(child.finish().await.success());
    wait_for_capture(&store, &temp, "web", "web-0-a").await;

    let lines = store.query("web", &LogQuery::default()).expect("log is readable");
    assert_eq!(texts(&lines, Stream::Stdout), ["abcdef", "café", "no newline"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_bounds_the_disk_used_by_a_service() {
    let temp = tempfile::tempdir().expect("temp dir");
    let limits = LogLimits {
        max_file_bytes: 4096,
        max_files: 3,
        rate_bytes_per_sec: 1 << 30,
        burst_bytes: 1 << 30,
        ..LogLimits::default()
    };
    let store = open_store(&temp, limits);
    // About 200 bytes of JSON per line: 60 KB in all, five times the bound.
    let script = "for i in $(seq 1 300); do echo \"line $i ..................................................\"; done";
    let child = spawn_captured(&store, "chatty", 0, "chatty-0-a", script);
    assert!(child.finish().await.success());
    wait_for_capture(&store, &temp, "chatty", "chatty-0-a").await;

    let mut files: Vec<(String, u64)> = fs::read_dir(temp.path().join("logs"))
        .expect("log dir exists")
        .map(|entry| {
            let entry = entry.expect("readable dir entry");
            let size = entry.metadata().expect("file has metadata").len();
            (entry.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["chatty.log", "chatty.log.1", "chatty.log.2"]);
    assert!(files.iter().all(|&(_, size)| size <= 4096), "{files:?}");
    assert!(files.iter().map(|(_, size)| size).sum::<u64>() <= 3 * 4096);

    let kept: Vec<u32> = store
        .query("chatty", &LogQuery::default())
        .expect("log is readable")
        .iter()
        .map(|line| line.line.split(' ').nth(1).and_then(|idx| idx.parse().ok()).expect("line <n> ..."))
        .collect();
    let first = kept[0];
    assert!(first > 1, "nothing was rotated away");
    assert_eq!(kept, (first..=300).collect::<Vec<_>>(), "rotated files are read oldest first, without gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_lines_and_records_how_many() {
    let temp = tempfile::tempdir().expect("temp dir");
    let limits = LogLimits { rate_bytes_per_sec: 1000, burst_bytes: 1000, ..LogLimits::default() };
    let store = open_store(&temp, limits);
    // The pause refills the bucket, so dropping stops before `after`.
    let script = "for i in $(seq 1 2000); do echo line $i; done; sleep 0.2; echo after";
    let child = spawn_captured(&store, "flood", 0, "flood-0-a", script);
    assert!(child.finish().await.success());
    wait_for_capture(&store, &temp, "flood", "flood-0-a").await;

    let lines = store.query("flood", &LogQuery::default()).expect("log is readable");
    let kept = texts(&lines, Stream::Stdout);
    let dropped: Vec<u64> = texts(&lines, Stream::Berth)
        .iter()
        .map(|text| {
            let count = text.strip_prefix("dropped ").and_then(|rest| rest.strip_suffix(" lines: log rate limit"));
            count.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("unexpected marker {text:?}"))
        })
        .collect();
    assert!(!dropped.is_empty(), "nothing was dropped");
    assert!(kept.len() < 1000, "the rate limit kept {} lines", kept.len());
    assert_eq!(kept.len() as u64 - 1 + dropped.iter().sum::<u64>(), 2000);
    let tail: Vec<(Stream, bool)> =
        lines[lines.len() - 2..].iter().map(|line| (line.stream, line.line == "after")).collect();
    assert_eq!(tail, [(Stream::Berth, false), (Stream::Stdout, true)]);
}

#[test]
fn a_replica_outlives_the_daemon_and_a_new_daemon_reads_what_it_buffered() {
    let temp = tempfile::tempdir().expect("temp dir");
    let flag = |name: &str| temp.path().join(name);
    let (go, wrote, done) = (flag("go"), flag("wrote"), flag("done"));
    let script = format!(
        "echo one; while [ ! -e {go} ]; do sleep 0.01; done; echo two; echo three >&2; touch {wrote}; \
         while [ ! -e {done} ]; do sleep 0.01; done; echo four",
        go = go.display(),
        wrote = wrote.display(),
        done = done.display()
    );
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();

    let mut child = {
        let first_daemon = runtime().expect("runtime starts");
        let store = open_store(&temp, LogLimits::default());
        let child = first_daemon.block_on(async {
            let child = spawn_captured(&store, "svc", 0, "svc-0-a", &script);
            let deadline = Instant::now() + DEADLINE;
            loop {
                store.sync("svc").await;
                let lines = store.query("svc", &LogQuery::default()).expect("log is readable");
                if texts(&lines, Stream::Stdout) == ["one"] {
                    break child;
                }
                assert!(Instant::now() < deadline, "first line never arrived");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        drop(first_daemon);
        child
    };

    // The daemon is gone: no reader but the replica itself.
    fs::write(&go, "").expect("temp dir is writable");
    let deadline = Instant::now() + DEADLINE;
    while !wrote.exists() {
        assert_eq!(child.child.try_wait().expect("child is ours"), None, "the replica died without a daemon");
        assert!(Instant::now() < deadline, "the replica never wrote");
        std::thread::sleep(Duration::from_millis(10));
    }

    let second_daemon = runtime().expect("runtime starts");
    let store = open_store(&temp, LogLimits::default());
    second_daemon.block_on(async {
        store.attach("svc", 0, "svc-0-a", Stream::Stdout).expect("fifo survived");
        store.attach("svc", 0, "svc-0-a", Stream::Stderr).expect("fifo survived");
        fs::write(&done, "").expect("temp dir is writable");
        wait_for_capture(&store, &temp, "svc", "svc-0-a").await;
    });
    assert!(child.wait().success());
    let lines = store.query("svc", &LogQuery::default()).expect("log is readable");
    assert_eq!(texts(&lines, Stream::Stdout), ["one", "two", "four"]);
    assert_eq!(texts(&lines, Stream::Stderr), ["three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_a_fifo_whose_writers_are_gone_ends_at_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    // A replica that died while no daemon ran: its FIFO is left, but nobody will ever write to it again.
    drop(store.child_stdio("gone-0-a", Stream::Stdout).expect("fifo can be created"));
    drop(store.child_stdio("gone-0-a", Stream::Stderr).expect("fifo can be created"));

    store.attach("gone", 0, "gone-0-a", Stream::Stdout).expect("fifo exists");
    store.attach("gone", 0, "gone-0-a", Stream::Stderr).expect("fifo exists");
    wait_for_capture(&store, &temp, "gone", "gone-0-a").await;
}

#[test]
fn query_reads_rotated_files_first_and_filters() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    let line = |ts_ms: u64, replica: u32| LogLine {
        ts: String::new(),
        ts_ms,
        service: "api".to_owned(),
        replica,
        instance: format!("api-{replica}"),
        stream: Stream::Stdout,
        line: format!("{ts_ms}"),
    };
    let write = |name: &str, lines: &[LogLine]| {
        let text: String = lines.iter().map(|line| serde_json::to_string(line).expect("serializable") + "\n").collect();
        fs::write(temp.path().join("logs").join(name), text).expect("temp dir is writable");
    };
    write("api.log.2", &[line(1, 0), line(2, 1)]);
    write("api.log.1", &[line(3, 0)]);
    write("api.log", &[line(4, 1), line(5, 0)]);
    fs::write(temp.path().join("logs/api.log.9"), "{\"beyond\": \"max_files\"}\n").expect("writable");
    fs::OpenOptions::new()
        .append(true)
        .open(temp.path().join("logs/api.log"))
        .and_then(|mut file| file.write_all(b"{\"torn\":"))
        .expect("writable");

    let check = |query: LogQuery, expected: &[u64]| {
        let found: Vec<u64> =
            store.query("api", &query).expect("log is readable").iter().map(|line| line.ts_ms).collect();
        assert_eq!(found, expected, "{query:?}");
    };
    check(LogQuery::default(), &[1, 2, 3, 4, 5]);
    check(LogQuery { replica: Some(1), ..LogQuery::default() }, &[2, 4]);
    check(LogQuery { since_ms: Some(3), ..LogQuery::default() }, &[3, 4, 5]);
    check(LogQuery { tail: Some(2), ..LogQuery::default() }, &[4, 5]);
    check(LogQuery { replica: Some(0), since_ms: Some(2), tail: Some(1) }, &[5]);
    check(LogQuery { tail: Some(0), ..LogQuery::default() }, &[]);
    assert!(store.query("../etc", &LogQuery::default()).is_err());
}

#[tokio::test]
async fn follow_receives_new_lines_and_record_stores_them() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    let mut follower = store.follow("api");
    store.record("api", 3, "api-3-x", "started pid 42");

    let line = tokio::time::timeout(DEADLINE, follower.recv())
        .await
        .expect("line arrives in time")
        .expect("no line was missed");
    assert_eq!(
        (line.stream, line.replica, line.instance.as_str(), line.line.as_str()),
        (Stream::Berth, 3, "api-3-x", "started pid 42")
    );
    store.sync("api").await;
    assert_eq!(store.query("api", &LogQuery::default()).expect("log is readable"), [line]);
}

#[tokio::test]
async fn fifos_are_created_and_stale_ones_removed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = open_store(&temp, LogLimits::default());
    for instance in ["a", "b"] {
        for stream in [Stream::Stdout, Stream::Stderr] {
            drop(store.child_stdio(instance, stream).expect("fifo can be created"));
        }
    }
    let kind = fs::metadata(fifo(&temp, "a", "stdout")).expect("fifo exists").file_type();
    assert!(kind.is_fifo());
    fs::write(temp.path().join("run/fifo/notes.txt"), "").expect("writable");

    store.remove_fifos_except(&["a".to_owned()]);
    let mut left: Vec<String> = fs::read_dir(temp.path().join("run/fifo"))
        .expect("fifo dir exists")
        .map(|entry| entry.expect("readable dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["a.stderr", "a.stdout", "notes.txt"]);
    store.remove_fifos("a");
    assert!(!fifo(&temp, "a", "stdout").exists() && !fifo(&temp, "a", "stderr").exists());

    assert_eq!(
        store.child_stdio("a", Stream::Berth).map(drop).map_err(|error| error.kind()),
        Err(ErrorKind::InvalidInput)
    );
    assert!(store.child_stdio("../a", Stream::Stdout).is_err());
    assert!(store.attach("svc", 0, "missing", Stream::Stdout).is_err());
}

fn check_split(max_line_bytes: usize, chunks: &[&[u8]], expected: &[&str]) {
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut lines = Vec::new();
    let mut collect = |bytes: &[u8], truncated: bool| lines.push(decode_line(bytes, truncated));
    for chunk in chunks {
        splitter.push(chunk, &mut collect);
    }
    splitter.finish(&mut collect);
    assert_eq!(lines, expected);
}

#[test]
fn splits_lines() {
    check_split(100, &[b"a\nb", b"c\n", b"\n", b"d"], &["a", "bc", "", "d"]);
    check_split(100, &[b"crlf\r\n", b"cr\r", b"\nbare\rcr\n"], &["crlf", "cr", "bare\rcr"]);
    check_split(100, &[b"bad \xff utf8\n"], &["bad \u{fffd} utf8"]);
    check_split(100, &[b"\xc3", b"\xa9\n"], &["é"]);
}

#[test]
fn truncates_long_lines_and_skips_their_rest() {
    check_split(4, &[b"abcdefgh\nok\n"], &["abcd [truncated]", "ok"]);
    check_split(4, &[b"abc", b"def", b"ghi", b"jk\nok"], &["abcd [truncated]", "ok"]);
    check_split(4, &[b"abcdefgh"], &["abcd [truncated]"]);
    // Never cut inside a character: é is two bytes.
    check_split(4, &["abcé\n".as_bytes()], &["abc [truncated]"]);
    assert_eq!(floor_char_boundary("aé".as_bytes(), 2), 1);
    assert_eq!(floor_char_boundary(b"a\x80\x80\x80\x80", 4), 4);
}

#[test]
fn token_bucket_counts_drops_until_it_refills() {
    let limits = LogLimits { rate_bytes_per_sec: 100, burst_bytes: 100, ..LogLimits::default() };
    let start = Instant::now();
    let mut bucket = TokenBucket::new(&limits, start);
    assert_eq!(bucket.admit(60, start), Some(0));
    assert_eq!(bucket.admit(60, start), None);
    assert_eq!(bucket.admit(60, start + Duration::from_millis(100)), None);
    assert_eq!(bucket.admit(60, start + Duration::from_secs(1)), Some(2));
    assert_eq!(bucket.admit(1000, start + Duration::from_secs(3)), Some(0), "a line above the burst still passes");
}
