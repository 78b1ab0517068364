//! The training run of `cargo xtask dist`: an instrumented `berth gateway` in front of an upstream of this
//! file's own, through a mix of the traffic a gateway sees, on loopback, bounded in count.
//!
//! Everything here is std only (threads and blocking sockets): the upstream answers every request with the
//! same small 200, the clients speak plain HTTP/1.1 and check every answer, so that the profile is one of
//! requests proxied, not of errors. HTTPS (HTTP/1.1, and HTTP/2 by ALPN) goes through curl when it is
//! installed, since it needs a TLS and an HTTP/2 client this crate does not have.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One part of the training: how many client connections, and what each of them sends.
struct Phase {
    what: &'static str,
    connections: usize,
    requests_per_connection: usize,
    /// A POST with this many bytes of body, else a GET.
    body: usize,
    /// A new connection for every request (`Connection: close`).
    fresh: bool,
    /// Pause between requests: a client at a low rate, where the gateway parks between requests.
    pause: Option<Duration>,
}

static PHASES: [Phase; 4] = [
    Phase {
        what: "keep-alive GETs",
        connections: 32,
        requests_per_connection: 6_000,
        body: 0,
        fresh: false,
        pause: None,
    },
    Phase { what: "uploads", connections: 8, requests_per_connection: 1_500, body: 1_024, fresh: false, pause: None },
    Phase {
        what: "a connection per request",
        connections: 4,
        requests_per_connection: 500,
        body: 0,
        fresh: true,
        pause: None,
    },
    Phase {
        what: "paced GETs",
        connections: 4,
        requests_per_connection: 300,
        body: 0,
        fresh: false,
        pause: Some(Duration::from_millis(8)),
    },
];

/// Requests curl sends over one connection for each protocol (URL ranges: `[1-N]`).
const CURL_REQUESTS: usize = 2_000;

/// Runs `berth` (instrumented) through the phases; returns how many requests were served.
pub(super) fn run(berth: &Path) -> Result<usize, String> {
    let upstream = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("the training upstream: {e}"))?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || serve_upstream(upstream));
    let mut gateway = Gateway::start(berth, upstream_addr)?;
    let result = drive(&gateway);
    let stopped = gateway.stop();
    let served = result?;
    stopped?;
    Ok(served)
}

fn drive(gateway: &Gateway) -> Result<usize, String> {
    let mut served = 0;
    for phase in &PHASES {
        eprintln!(
            "xtask: dist:   {}: {} connections x {} requests",
            phase.what, phase.connections, phase.requests_per_connection
        );
        let clients: Vec<_> = (0..phase.connections)
            .map(|_| {
                let addr = gateway.http;
                std::thread::spawn(move || client(addr, phase))
            })
            .collect();
        for client in clients {
            served += client.join().map_err(|_| "a training client panicked".to_owned())??;
        }
    }
    // HTTP/2 by ALPN; h2c is served by the same HTTP/2 code, and curl 7.88 sends only the first request of a
    // range over a prior-knowledge connection.
    let base = format!("https://127.0.0.1:{}", gateway.https.port());
    for (what, flag) in [("HTTPS, HTTP/1.1", "--http1.1"), ("HTTPS, HTTP/2", "--http2")] {
        served += curl(what, &base, &["-k", flag])?;
    }
    Ok(served)
}

/// `CURL_REQUESTS` GETs over one connection; skipped (0) when curl is not installed.
fn curl(what: &str, base: &str, flags: &[&str]) -> Result<usize, String> {
    eprintln!("xtask: dist:   {what}: curl, {CURL_REQUESTS} requests");
    // The bodies go to stdout (one `-o` covers only the first URL of a range), the status codes to stderr.
    let out = match Command::new("curl")
        .args(["-s", "-w", "%{stderr}%{http_code}\\n", "-H", "Host: app.localhost"])
        .args(flags)
        .arg(format!("{base}/curl/[1-{CURL_REQUESTS}]"))
        .stdout(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("xtask: dist:   curl is not installed: {what} left out of the profile");
            return Ok(0);
        }
        Err(e) => return Err(format!("curl: {e}")),
    };
    let ok = String::from_utf8_lossy(&out.stderr).lines().filter(|code| *code == "200").count();
    if ok != CURL_REQUESTS {
        return Err(format!("{what}: {ok} of {CURL_REQUESTS} requests through curl answered 200"));
    }
    Ok(ok)
}

/// The instrumented gateway and where it listens.
struct Gateway {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Gateway {
    fn start(berth: &Path, upstream: SocketAddr) -> Result<Self, String> {
        let mut child = Command::new(berth)
            .args(["gateway", "--listen", "127.0.0.1:0", "--https", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", berth.display()))?;
        // The gateway says where it listens on stderr; read in a thread so that a silent one times out, and
        // read to the end, so that what it logs later never fills the pipe and blocks it.
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().ok_or("the gateway's stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut http, mut https) = (None, None);
        loop {
            if let (Some(http), Some(https)) = (http, https) {
                return Ok(Self { child, http, https });
            }
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                return Err("the instrumented gateway exited, or did not say where it listens within 30 s".to_owned());
            };
            let addr = |prefix: &str| line.strip_prefix(prefix)?.split_whitespace().next()?.parse().ok();
            http = http.or_else(|| addr("berth: gateway on http://"));
            https = https.or_else(|| addr("berth: gateway on https://"));
        }
    }

    /// SIGINT, the way the gateway stops cleanly: only a process that exits writes its counters.
    fn stop(&mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the instrumented gateway exited with {status}: its profile may be incomplete"))
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        Err("the instrumented gateway did not stop within 30 s of SIGINT: no profile".to_owned())
    }
}

/// One client connection through a phase; returns the requests answered 200.
fn client(addr: SocketAddr, phase: &Phase) -> Result<usize, String> {
    let body = vec![b'x'; phase.body];
    let mut head = format!(
        "{} /train/path?q=1 HTTP/1.1\r\nHost: app.localhost\r\nUser-Agent: berth-xtask-train\r\n\
         Accept: */*\r\nAccept-Encoding: gzip\r\n",
        if phase.body > 0 { "POST" } else { "GET" }
    );
    if phase.body > 0 {
        head.push_str(&format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", phase.body));
    }
    if phase.fresh {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let request = [head.as_bytes(), &body].concat();
    let connect = || {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect to the gateway: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok::<_, String>(BufReader::new(stream))
    };
    let mut conn = connect()?;
    for sent in 0..phase.requests_per_connection {
        if phase.fresh && sent > 0 {
            conn = connect()?;
        }
        conn.get_mut().write_all(&request).map_err(|e| format!("{}: write: {e}", phase.what))?;
        let status = read_message(&mut conn).map_err(|e| format!("{}: read: {e}", phase.what))?;
        if status != 200 {
            return Err(format!("{}: the gateway answered {status}, not 200", phase.what));
        }
        if let Some(pause) = phase.pause {
            std::thread::sleep(pause);
        }
    }
    Ok(phase.requests_per_connection)
}

/// The upstream: every request answered with the same small 200, on keep-alive connections.
fn serve_upstream(listener: TcpListener) {
    const BODY: &[u8] =
        b"berth xtask dist training upstream: a fixed body of one hundred bytes, the same for every request.\n";
    let response = [
        format!(
            "HTTP/1.1 200 OK\r\nServer: train\r\nDate: Sun, 06 Dec 2026 00:00:00 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            BODY.len()
        )
        .as_bytes(),
        BODY,
    ]
    .concat();
    for stream in listener.incoming().map_while(Result::ok) {
        let response = response.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut conn = BufReader::new(stream);
            while read_message(&mut conn).is_ok() {
                if conn.get_mut().write_all(&response).is_err() {
                    break;
                }
            }
        });
    }
}

/// Reads one HTTP/1.1 message (head, then a `Content-Length` body); returns the status code of a response
/// (0 for a request).
fn read_message(conn: &mut BufReader<TcpStream>) -> io::Result<u16> {
    let mut line = String::new();
    let mut first = true;
    let (mut status, mut length) = (0, 0);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let field = line.trim_end();
        if first {
            first = false;
            if let Some(rest) = field.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|code| code.parse().ok()).unwrap_or(0);
            }
            continue;
        }
        if field.is_empty() {
            break;
        }
        if let Some((name, value)) = field.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| io::Error::other("a bad Content-Length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::other("a chunked message (this client reads Content-Length only)"));
            }
        }
    }
    io::copy(&mut conn.by_ref().take(length), &mut io::sink())?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training's client and upstream against each other (a gateway in between only passes the
    /// messages on): every phase's kind of request gets its 200, and a message the client cannot read is
    /// an error, not a count.
    #[test]
    fn client_and_upstream_speak_http() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || serve_upstream(listener));
        for phase in &PHASES {
            let small = Phase { requests_per_connection: 3, pause: None, ..*phase };
            assert_eq!(client(addr, &small), Ok(3), "{}", phase.what);
        }

        let chunked = TcpListener::bind("127.0.0.1:0").expect("bind");
        let chunked_addr = chunked.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = chunked.accept() {
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            }
        });
        let one = Phase { requests_per_connection: 1, ..PHASES[0] };
        let error = client(chunked_addr, &one).expect_err("a chunked answer is not counted");
        assert!(error.contains("chunked"), "{error}");
    }
}
