//! plenary-loadgen: replay prepared messages to an SMTP server on loopback over C persistent
//! sessions (one OS thread and one blocking TcpStream each) and report throughput and
//! per-message latency.
//!
//! Input (`--messages FILE`): records of `u32 little-endian length` + wire bytes. The wire
//! bytes are already CRLF, dot-stuffed and end with `\r\n.\r\n` (see bench/prep_messages.py),
//! so the client only copies bytes to the socket.
//!
//! Per message: `MAIL FROM`, `RCPT TO`, `DATA` (each waits for its reply unless
//! `--pipeline`), the message, then the final reply.
//!   * `eod_*`  latency: from the moment the last byte of the message (the `.` line) has been
//!     handed to the kernel to the moment the final reply line has been read. This is the
//!     "end-of-data -> 250" latency; for Plenary it includes the group commit (fsync).
//!   * `txn_*`  latency: from writing `MAIL FROM` to reading the final reply.
//!
//! Timing starts when every session has connected and said EHLO (a barrier), and ends when
//! the last session has its last reply. Each message is sent once (no cycling), so unique
//! Message-IDs in the input stay unique on the wire; `--repeat` cycles the input up to
//! `--count` (only for a sink that stores nothing).
//!
//! Safety: only loopback addresses are accepted; the run is bounded by `--count` and
//! `--max-seconds`.
//!
//! Output: one human line on stderr and one `JSON {...}` line on stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Args {
    host: IpAddr,
    port: u16,
    concurrency: usize,
    count: usize,
    messages: String,
    from: String,
    rcpt: String,
    max_seconds: f64,
    pipeline: bool,
    label: String,
    helo: String,
    repeat: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: plenary-loadgen --messages FILE --rcpt ADDR [--host 127.0.0.1] [--port 2525] [-c 16] \
         [--count N] [--repeat] [--from ADDR] [--max-seconds S] [--pipeline] [--label TEXT] [--helo NAME]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        host: IpAddr::from([127, 0, 0, 1]),
        port: 2525,
        concurrency: 16,
        count: usize::MAX,
        messages: String::new(),
        from: "bench@example.org".into(),
        rcpt: String::new(),
        max_seconds: 120.0,
        pipeline: false,
        label: "loadgen".into(),
        helo: "loadgen.example.org".into(),
        repeat: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--host" => a.host = v().parse().unwrap_or_else(|_| usage()),
            "--port" => a.port = v().parse().unwrap_or_else(|_| usage()),
            "-c" | "--concurrency" => a.concurrency = v().parse().unwrap_or_else(|_| usage()),
            "-n" | "--count" => a.count = v().parse().unwrap_or_else(|_| usage()),
            "--messages" => a.messages = v(),
            "--from" => a.from = v(),
            "--rcpt" => a.rcpt = v(),
            "--max-seconds" => a.max_seconds = v().parse().unwrap_or_else(|_| usage()),
            "--pipeline" => a.pipeline = true,
            "--repeat" => a.repeat = true,
            "--label" => a.label = v(),
            "--helo" => a.helo = v(),
            _ => usage(),
        }
    }
    if a.messages.is_empty() || a.rcpt.is_empty() || a.concurrency == 0 {
        usage();
    }
    if !a.host.is_loopback() {
        eprintln!("refusing non-loopback destination {}", a.host);
        std::process::exit(2);
    }
    a
}

fn load(path: &str) -> Vec<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(2)
        });
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let n = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        i += 4;
        if i + n > data.len() {
            eprintln!("{path}: truncated record");
            std::process::exit(2);
        }
        out.push(data[i..i + n].to_vec());
        i += n;
    }
    out
}

/// A reply: code and the text of its last line.
struct Reply {
    code: u16,
    text: String,
}

struct Session {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Session {
    fn connect(addr: SocketAddr, helo: &str) -> std::io::Result<Session> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let r = BufReader::with_capacity(16 * 1024, s.try_clone()?);
        let mut sess = Session {
            w: s,
            r,
            line: Vec::with_capacity(512),
        };
        let g = sess.reply()?;
        if g.code != 220 {
            return Err(std::io::Error::other(format!("greeting {} {}", g.code, g.text)));
        }
        sess.w.write_all(format!("EHLO {helo}\r\n").as_bytes())?;
        let e = sess.reply()?;
        if e.code != 250 {
            return Err(std::io::Error::other(format!("EHLO {} {}", e.code, e.text)));
        }
        Ok(sess)
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            self.line.clear();
            let n = self.r.read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            if self.line.len() < 4 {
                return Err(std::io::Error::other("short reply line"));
            }
            let code = std::str::from_utf8(&self.line[..3])
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| std::io::Error::other("bad reply code"))?;
            if self.line[3] == b'-' {
                continue;
            }
            let text = String::from_utf8_lossy(&self.line[3..]).trim().to_string();
            return Ok(Reply { code, text });
        }
    }
}

#[derive(Default)]
struct ThreadStats {
    ok: u64,
    duplicates: u64,
    bytes: u64,
    eod_us: Vec<u32>,
    txn_us: Vec<u32>,
    errors: Vec<String>,
    error_count: u64,
    reconnects: u64,
}

enum Outcome {
    Ok(Reply),
    Refused(String),
}

fn one(sess: &mut Session, msg: &[u8], a: &Args, st: &mut ThreadStats) -> std::io::Result<Outcome> {
    let t0 = Instant::now();
    let mail = format!("MAIL FROM:<{}>\r\n", a.from);
    let rcpt = format!("RCPT TO:<{}>\r\n", a.rcpt);
    if a.pipeline {
        let mut cmd = Vec::with_capacity(mail.len() + rcpt.len() + 6);
        cmd.extend_from_slice(mail.as_bytes());
        cmd.extend_from_slice(rcpt.as_bytes());
        cmd.extend_from_slice(b"DATA\r\n");
        sess.w.write_all(&cmd)?;
        let (r1, r2, r3) = (sess.reply()?, sess.reply()?, sess.reply()?);
        if r1.code != 250 || r2.code != 250 || r3.code != 354 {
            return Ok(Outcome::Refused(format!(
                "{} {} / {} {} / {} {}",
                r1.code, r1.text, r2.code, r2.text, r3.code, r3.text
            )));
        }
    } else {
        for (cmd, want) in [(mail.as_bytes(), 250u16), (rcpt.as_bytes(), 250), (b"DATA\r\n".as_slice(), 354)] {
            sess.w.write_all(cmd)?;
            let r = sess.reply()?;
            if r.code != want {
                return Ok(Outcome::Refused(format!("{} {}", r.code, r.text)));
            }
        }
    }
    sess.w.write_all(msg)?;
    let t1 = Instant::now();
    let r = sess.reply()?;
    let t2 = Instant::now();
    st.eod_us.push((t2 - t1).as_micros().min(u32::MAX as u128) as u32);
    st.txn_us.push((t2 - t0).as_micros().min(u32::MAX as u128) as u32);
    Ok(Outcome::Ok(r))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn main() {
    let a = Arc::new(parse_args());
    let msgs = Arc::new(load(&a.messages));
    // Without --repeat every message is sent at most once (unique Message-IDs stay unique);
    // with it (for a sink that keeps nothing) the input is cycled until --count.
    let n = if a.repeat { a.count } else { a.count.min(msgs.len()) };
    if n == usize::MAX {
        eprintln!("--repeat needs --count");
        std::process::exit(2);
    }
    if n == 0 {
        eprintln!("no messages");
        std::process::exit(2);
    }
    let addr = SocketAddr::new(a.host, a.port);
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(a.concurrency + 1));
    let deadline = Duration::from_secs_f64(a.max_seconds);
    let mut handles = Vec::new();
    for _ in 0..a.concurrency {
        let (a, msgs, next, stop, barrier) = (a.clone(), msgs.clone(), next.clone(), stop.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || -> ThreadStats {
            let mut st = ThreadStats {
                eod_us: Vec::with_capacity(n / a.concurrency + 16),
                txn_us: Vec::with_capacity(n / a.concurrency + 16),
                ..ThreadStats::default()
            };
            let mut sess = match Session::connect(addr, &a.helo) {
                Ok(s) => Some(s),
                Err(e) => {
                    st.error_count += 1;
                    st.errors.push(format!("connect: {e}"));
                    None
                }
            };
            barrier.wait();
            let t_start = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) || t_start.elapsed() > deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let msg = &msgs[i % msgs.len()];
                // Up to 3 attempts for a message whose session broke (reconnect each time).
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    if sess.is_none() {
                        st.reconnects += 1;
                        match Session::connect(addr, &a.helo) {
                            Ok(s) => sess = Some(s),
                            Err(e) => {
                                st.error_count += 1;
                                if st.errors.len() < 5 {
                                    st.errors.push(format!("connect: {e}"));
                                }
                                std::thread::sleep(Duration::from_millis(50));
                                if attempts >= 3 {
                                    break;
                                }
                                continue;
                            }
                        }
                    }
                    let Some(s) = sess.as_mut() else { break };
                    match one(s, msg, &a, &mut st) {
                        Ok(Outcome::Ok(r)) if r.code == 250 => {
                            st.ok += 1;
                            st.bytes += msg.len() as u64;
                            if r.text.contains("duplicate") {
                                st.duplicates += 1;
                            }
                            break;
                        }
                        Ok(Outcome::Ok(r)) => {
                            st.error_count += 1;
                            if st.errors.len() < 5 {
                                st.errors.push(format!("message {i}: {} {}", r.code, r.text));
                            }
                            if r.code == 421 {
                                sess = None;
                            }
                            break;
                        }
                        Ok(Outcome::Refused(why)) => {
                            st.error_count += 1;
                            if st.errors.len() < 5 {
                                st.errors.push(format!("message {i}: {why}"));
                            }
                            // Back to a clean state for the next message.
                            let ok = s.w.write_all(b"RSET\r\n").is_ok() && s.reply().map(|r| r.code == 250).unwrap_or(false);
                            if !ok {
                                sess = None;
                            }
                            break;
                        }
                        Err(e) => {
                            st.error_count += 1;
                            if st.errors.len() < 5 {
                                st.errors.push(format!("message {i}: {e}"));
                            }
                            sess = None;
                            if attempts >= 3 {
                                break;
                            }
                        }
                    }
                }
                if st.error_count > 1000 {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            if let Some(mut s) = sess {
                let _ = s.w.write_all(b"QUIT\r\n");
                let _ = s.reply();
            }
            st
        }));
    }
    // Every session is connected and past EHLO: the clock starts now.
    barrier.wait();
    let t0 = Instant::now();
    let mut all = ThreadStats::default();
    for h in handles {
        let st = h.join().expect("worker panicked");
        all.ok += st.ok;
        all.duplicates += st.duplicates;
        all.bytes += st.bytes;
        all.eod_us.extend(st.eod_us);
        all.txn_us.extend(st.txn_us);
        all.error_count += st.error_count;
        all.reconnects += st.reconnects;
        for e in st.errors {
            if all.errors.len() < 10 {
                all.errors.push(e);
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    all.eod_us.sort_unstable();
    all.txn_us.sort_unstable();
    let rate = all.ok as f64 / wall;
    let mbps = all.bytes as f64 / wall / 1e6;
    let (e50, e90, e99, e999, emax) = (
        pct(&all.eod_us, 50.0),
        pct(&all.eod_us, 90.0),
        pct(&all.eod_us, 99.0),
        pct(&all.eod_us, 99.9),
        pct(&all.eod_us, 100.0),
    );
    let (t50, t99) = (pct(&all.txn_us, 50.0), pct(&all.txn_us, 99.0));
    eprintln!(
        "{}: c={} sent_ok={}/{} dup={} errors={} in {:.3}s = {:.0} msgs/s ({:.1} MB/s); end-of-data->reply p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms; txn p50={:.2}ms p99={:.2}ms{}",
        a.label,
        a.concurrency,
        all.ok,
        n,
        all.duplicates,
        all.error_count,
        wall,
        rate,
        mbps,
        e50,
        e90,
        e99,
        e999,
        emax,
        t50,
        t99,
        if all.errors.is_empty() {
            String::new()
        } else {
            format!("; first errors: {}", all.errors.join(" | "))
        }
    );
    let errs: Vec<String> = all.errors.iter().map(|e| json_str(e)).collect();
    println!(
        "JSON {{\"label\":{},\"host\":\"{}\",\"port\":{},\"concurrency\":{},\"pipeline\":{},\"requested\":{},\"sent_ok\":{},\"duplicates\":{},\"errors\":{},\"reconnects\":{},\"wall_s\":{:.3},\"msgs_per_s\":{:.1},\"mb_per_s\":{:.2},\"eod_p50_ms\":{:.3},\"eod_p90_ms\":{:.3},\"eod_p99_ms\":{:.3},\"eod_p999_ms\":{:.3},\"eod_max_ms\":{:.3},\"txn_p50_ms\":{:.3},\"txn_p99_ms\":{:.3},\"first_errors\":[{}]}}",
        json_str(&a.label),
        a.host,
        a.port,
        a.concurrency,
        a.pipeline,
        n,
        all.ok,
        all.duplicates,
        all.error_count,
        all.reconnects,
        wall,
        rate,
        mbps,
        e50,
        e90,
        e99,
        e999,
        emax,
        t50,
        t99,
        errs.join(",")
    );
}
