//! Harness for end-to-end tests: the real `plenary` binary on free ports with a temp data
//! directory, driven over real sockets.
//!
//! The binary is built once per test process with `cargo build -p plenary` (a no-op when it
//! is up to date), because a test crate cannot depend on another package's binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `../shared/corpora` beside the repository, if present. Under CI (`CI` set) the corpora
/// must be there: a missing corpus fails the test instead of skipping it.
pub fn corpora() -> Option<PathBuf> {
    let p = workspace().parent().map(|w| w.join("shared/corpora"));
    match p {
        Some(p) if p.is_dir() => Some(p),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("../shared/corpora is missing, and CI must run the corpus tests");
            }
            None
        }
    }
}

/// Path of the built `plenary` binary.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "plenary", "--bin", "plenary"])
            .current_dir(workspace())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo build: {e}"));
        assert!(status.success(), "cargo build -p plenary failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("target"));
        target.join("debug/plenary")
    })
    .clone()
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    pub root: PathBuf,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub lmtp: Option<SocketAddr>,
    pub web: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// Start a daemon whose data lives under `root`. `extra` is appended to the config file
    /// (whole sections: `[smtp]` keys are merged by writing the section once, see below).
    pub fn start(root: &Path, smtp_extra: &str, other: &str) -> Daemon {
        std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let config = root.join("plenary.toml");
        let data = root.join("data");
        let per_ip = if smtp_extra.contains("max_connections_per_ip") {
            ""
        } else {
            "max_connections_per_ip = 200\n"
        };
        let text = format!(
            "[data]\ndir = \"{}\"\nmin_free_mb = 0\n\n[smtp]\nlisten = \"127.0.0.1:0\"\n{per_ip}{smtp_extra}\n\n[web]\nlisten = \"127.0.0.1:0\"\n\n[search]\ncommit_delay_ms = 20\n\n{other}\n",
            data.display()
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("write config: {e}"));
        let mut d = Daemon {
            child: None,
            root: root.to_path_buf(),
            config,
            smtp: ([0, 0, 0, 0], 0).into(),
            lmtp: None,
            web: ([0, 0, 0, 0], 0).into(),
            log: root.join("daemon.log"),
        };
        d.spawn();
        d
    }

    /// Start the process again with the current config (after it exited or was killed).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log: {e}"));
        let mut child = Command::new(binary())
            .args(["--config", &self.config.to_string_lossy(), "serve"])
            .current_dir(&self.root)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start plenary: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("plenary: listening") {
                    let _ = tx.send(line.clone());
                }
                line.clear();
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => panic!("daemon did not start; log:\n{}", self.log_text()),
        };
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("smtp=") {
                self.smtp = v.parse().unwrap_or_else(|e| panic!("smtp addr {v}: {e}"));
            } else if let Some(v) = word.strip_prefix("lmtp=") {
                self.lmtp = Some(v.parse().unwrap_or_else(|e| panic!("lmtp addr {v}: {e}")));
            } else if let Some(v) = word.strip_prefix("web=http://") {
                self.web = v
                    .trim_end_matches('/')
                    .parse()
                    .unwrap_or_else(|e| panic!("web addr {v}: {e}"));
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to exit on its own; its exit code, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Run the CLI with this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run plenary: {e}"))
    }

    /// Create a list through the CLI (works whether or not the daemon runs). Posting is
    /// open, so archive tests need no members; list-engine tests set their own policy.
    pub fn create_list(&self, address: &str) {
        let out = self.cli(&["list", "create", address, "--name", "Test list"]);
        assert!(
            out.status.success(),
            "list create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.cli_ok(&["list", "set", address, "posting=open"]);
    }

    /// Run the CLI, assert success, return stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "plenary {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI with `input` on stdin.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run plenary: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("plenary: {e}"));
        assert!(
            out.status.success(),
            "plenary {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.web, path)
    }

    /// GET a JSON API path.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {e}: {body}"))
    }

    /// Every message of `list` as the public API pages them (`/api/v1/lists/L/messages`).
    pub fn listed_messages(&self, list: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for page in 1.. {
            let v = self.api(&format!("/api/v1/lists/{list}/messages?page={page}"));
            let items = v["messages"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                break;
            }
            out.extend(items);
        }
        out
    }

    /// Number of archived messages in `list`, from the public API.
    pub fn count(&self, list: &str) -> u64 {
        let v = self.api("/api/v1/lists");
        v["lists"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["address"] == list)
            .and_then(|l| l["messages"].as_u64())
            .unwrap_or(0)
    }

    /// Wait until a search for `q` has at least `n` hits (the index commits asynchronously).
    pub fn wait_search(&self, q: &str, n: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.api(&format!("/api/v1/search?q={}", urlencode(q)));
            if v["total"].as_u64().unwrap_or(0) >= n || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Run a Python 3 script (a real peer: smtplib, ssl) and fail with its output if it fails.
pub fn python(script: &str) {
    run_python("python3", script);
}

/// Like [`python`], with Debian's `/usr/bin/python3`, which has dkimpy (`python3-dkim`).
pub fn system_python(script: &str) {
    run_python("/usr/bin/python3", script);
}

fn run_python(interpreter: &str, script: &str) {
    let out = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.0 GET; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_full(addr, path);
    (status, body)
}

/// A plain HTTP/1.0 GET; returns status, raw headers and body.
pub fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A form POST (application/x-www-form-urlencoded); `extra` are whole header lines.
pub fn http_post(addr: SocketAddr, path: &str, body: &str, extra: &[&str]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Send a message with a given envelope sender; returns the final reply.
pub fn send_from(addr: SocketAddr, from: &str, to: &str, msg: &str) -> String {
    let mut c = Smtp::open(addr);
    assert!(c.cmd("EHLO test.example").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if !r.starts_with("250") {
        return r;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    if !r.starts_with("250") {
        return r;
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(msg.as_bytes());
    c.send(b"\r\n.\r\n");
    let r = c.reply();
    c.cmd("QUIT");
    r
}

/// A raw SMTP client: exact bytes out, whole replies in.
pub struct Smtp {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        Smtp { s, buf: Vec::new() }
    }

    /// Connect and read the greeting.
    pub fn open(addr: SocketAddr) -> Smtp {
        let mut c = Smtp::connect(addr);
        let g = c.reply();
        assert!(g.starts_with("220"), "greeting: {g}");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A peer that already closed is fine for hostile-input tests.
        let _ = self.s.write_all(bytes);
    }

    /// Read one complete (possibly multi-line) reply; "" on EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = match self.line() {
                Some(l) => l,
                None => return out,
            };
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=p).collect();
                return Some(String::from_utf8_lossy(&l).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Send a command line and return the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        self.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut b = [0u8; 256];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// Send one message with the raw client; returns the final reply.
pub fn send_raw(addr: SocketAddr, to: &str, msg: &str) -> String {
    send_from(addr, "sender@test.example", to, msg)
}

/// Start `tests/py/SCRIPT ARGS...` with `/usr/bin/python3`: a test server that prints one
/// line ending in the port it listens on once it is ready. Returns the child and the port.
pub fn python_server(script: &str, args: &[&str]) -> (Child, u16) {
    let mut child = Command::new("/usr/bin/python3")
        .arg(workspace().join("tests/py").join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("{script}: no stdout"));
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    let port = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
    (child, port)
}

/// Run the `openssl` command line tool; panics with its stderr on failure, returns stdout.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `tests/py/dns_server.py` (a real UDP DNS server) on a free port, stopped when dropped.
pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serve `zone` (JSON, see `tests/py/dns_server.py`); queries are logged under `dir/dns`.
pub fn start_dns(dir: &Path, zone: &str) -> Dns {
    let zone_path = dir.join("zone.json");
    std::fs::write(&zone_path, zone).unwrap_or_else(|e| panic!("zone: {e}"));
    let out = dir.join("dns");
    let (child, port) = python_server("dns_server.py", &[&zone_path.to_string_lossy(), &out.to_string_lossy()]);
    Dns { child, port }
}

/// Base64 without line breaks (for DKIM key records).
pub fn base64(b: &[u8]) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(b)?;
            }
            c.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("base64: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One transaction captured by `tests/py/relay.py`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Captured {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: String,
    /// The transaction ran over TLS (STARTTLS or implicit).
    #[serde(default)]
    pub tls: bool,
    /// The user the session authenticated as, if any.
    #[serde(default)]
    pub auth: Option<String>,
    /// Which relay connection (numbered from 1) carried it.
    #[serde(default)]
    pub conn: u64,
    /// The client sent MAIL, RCPT and DATA without waiting for each reply (RFC 2920).
    #[serde(default)]
    pub pipelined: bool,
    /// The client sent the next transaction's commands in the same write as this message's
    /// end marker (RFC 2920 §3.1).
    #[serde(default)]
    pub then_more: bool,
    /// When the relay accepted it (unix seconds).
    #[serde(default)]
    pub t: f64,
}

impl Captured {
    /// The value of the first header `name` (unfolded), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut out: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(o) = out.as_mut() {
                    o.push(' ');
                    o.push_str(line.trim());
                }
                continue;
            }
            if out.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case(name) {
                    out = Some(v.trim().to_string());
                }
            }
        }
        out
    }
}

/// The capture relay (`tests/py/relay.py`), a real SMTP server in a child process.
pub struct Relay {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Relay {
    pub fn start(dir: &Path) -> Relay {
        Relay::start_on(dir, 0)
    }

    /// Start on a given port (0: any), e.g. to bring a relay back where it was.
    pub fn start_on(dir: &Path, port: u16) -> Relay {
        Relay::start_with(dir, port, &[])
    }

    /// Start with relay.py options, e.g. `["--starttls", CERT, KEY, "--auth", "u:p"]`.
    pub fn start_with(dir: &Path, port: u16, options: &[&str]) -> Relay {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("relay dir: {e}"));
        let dir_arg = dir.display().to_string();
        let port_arg = port.to_string();
        let mut args = vec![dir_arg.as_str(), port_arg.as_str()];
        args.extend_from_slice(options);
        let (child, port) = python_server("relay.py", &args);
        Relay {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    pub fn messages(&self) -> Vec<Captured> {
        let text = std::fs::read_to_string(self.dir.join("messages.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Messages to `rcpt`.
    pub fn to(&self, rcpt: &str) -> Vec<Captured> {
        self.messages()
            .into_iter()
            .filter(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .collect()
    }

    /// Wait until `pred` holds for the captured messages.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[Captured]) -> bool) -> Vec<Captured> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; relay has {} messages", m.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Make the relay answer 451 to every recipient (true) or accept again (false).
    pub fn refuse(&self, on: bool) {
        let p = self.dir.join("refuse");
        if on {
            let _ = std::fs::write(p, "");
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Answer 550 to these recipients only (permanent failure), until changed.
    pub fn reject(&self, rcpts: &[&str]) {
        let _ = std::fs::write(self.dir.join("reject"), rcpts.join("\n"));
    }

    /// Answer 451 to these recipients only (temporary failure), until changed.
    pub fn defer(&self, rcpts: &[&str]) {
        let _ = std::fs::write(self.dir.join("defer"), rcpts.join("\n"));
    }

    /// The relay's answers to `rcpt`'s RCPT commands so far (e.g. `[451, 451, 250]`).
    pub fn rcpt_answers(&self, rcpt: &str) -> Vec<u16> {
        let text = std::fs::read_to_string(self.dir.join("rcpts.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, a)| a.eq_ignore_ascii_case(rcpt))
            .filter_map(|(c, _)| c.parse().ok())
            .collect()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}
