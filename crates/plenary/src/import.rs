//! `plenary import`: archives in, without delivery.
//!
//! Formats: mbox (mboxo and mboxrd; a message starts at every line beginning with `From `,
//! exactly as Python's `mailbox.mbox` splits, and one level of `>From ` quoting is removed),
//! Mailman 2 pipermail monthly `.txt` / `.txt.gz` files (which are mbox), maildir
//! directories (`cur/` and `new/`), and single `.eml` files. Input is streamed message by
//! message, so a large mbox never sits in memory whole.
//!
//! Every message goes through the same path as SMTP mail (pre-scan, metadata, group commit),
//! so it is deduplicated by Message-ID per list and durable when counted. Nothing is dropped
//! silently: a message over a structural limit is stored raw (counted as repaired, shown as
//! text), broken dates and missing Message-IDs are repaired, and a message that cannot be
//! stored at all is listed with its reason.

use plenary_core::meta::Fallback;
use plenary_core::{mime, ListId, MessageMeta, MimeLimits, Origin};
use plenary_store::{IngestRequest, Store, TargetOutcome};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Semaphore};

/// How many messages may wait for the committer at once.
const IN_FLIGHT: usize = 1024;

/// What an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub processed: u64,
    pub imported: u64,
    pub duplicates: u64,
    pub repaired: u64,
    /// Of the repaired: dates taken from the mbox line, `Received:` or the import time.
    pub repaired_dates: u64,
    /// Of the repaired: Message-IDs generated from the content.
    pub generated_ids: u64,
    /// Of the repaired: stored raw because they exceed a structural limit.
    pub stored_raw: u64,
    pub rejected: u64,
    /// The first rejections, as "where: why".
    pub rejections: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages read: {} imported, {} duplicates, {} repaired, {} rejected",
            self.processed, self.imported, self.duplicates, self.repaired, self.rejected
        )?;
        if self.repaired > 0 {
            write!(
                f,
                "\n  repaired: {} dates, {} generated Message-IDs, {} stored raw (over a structural limit)",
                self.repaired_dates, self.generated_ids, self.stored_raw
            )?;
        }
        for r in &self.rejections {
            write!(f, "\n  rejected {r}")?;
        }
        Ok(())
    }
}

/// Limits applied to imported messages.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    pub max_message_size: usize,
    pub mime: MimeLimits,
}

/// The date on an mbox `From ` line (asctime format, taken as UTC).
pub fn separator_date(line: &str) -> Option<i64> {
    plenary_core::meta::parse_asctime(line)
}

/// One message found in a source, before it is stored.
struct Found {
    raw: Vec<u8>,
    envelope_date: Option<i64>,
    location: String,
}

fn open_maybe_gz(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let f = std::fs::File::open(path)?;
    let mut peek = BufReader::new(f);
    let gz = peek.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(flate2::read::MultiGzDecoder::new(peek))
    } else {
        Box::new(peek)
    })
}

/// Split an mbox stream into messages, calling `emit` for each.
fn read_mbox(path: &Path, emit: &mut dyn FnMut(Found) -> bool) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(256 * 1024, open_maybe_gz(path)?);
    let mut line = Vec::with_capacity(1024);
    let mut cur: Option<Found> = None;
    let mut n = 0u64;
    let mut lineno = 0u64;
    // The date of the last separator that had one. Pipermail does not quote body lines that
    // start with "From ", so such a line splits a message (as Python's mailbox splits it too);
    // the headerless fragment after it then dates from the message it was cut from, not from
    // the day of the import.
    let mut last_date: Option<i64> = None;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line)?;
        if got == 0 {
            break;
        }
        lineno += 1;
        if line.starts_with(b"From ") {
            if let Some(mut m) = cur.take() {
                trim_separator_blank(&mut m.raw);
                if !emit(m) {
                    return Ok(());
                }
            }
            n += 1;
            let date = separator_date(&String::from_utf8_lossy(&line));
            if date.is_some() {
                last_date = date;
            }
            cur = Some(Found {
                raw: Vec::new(),
                envelope_date: date.or(last_date),
                location: format!("{} message {n} (line {lineno})", path.display()),
            });
            continue;
        }
        let m = cur.get_or_insert_with(|| {
            n += 1;
            Found {
                raw: Vec::new(),
                envelope_date: None,
                location: format!("{} message {n} (line {lineno})", path.display()),
            }
        });
        // mboxrd: ">From " and ">>From " lose one '>'; mboxo's ">From " is restored too.
        let gt = line.iter().take_while(|&&b| b == b'>').count();
        if gt > 0 && line[gt..].starts_with(b"From ") {
            m.raw.extend_from_slice(&line[1..]);
        } else {
            m.raw.extend_from_slice(&line);
        }
    }
    if let Some(mut m) = cur.take() {
        trim_separator_blank(&mut m.raw);
        emit(m);
    }
    Ok(())
}

/// The blank line before the next `From ` belongs to the mbox format, not the message.
fn trim_separator_blank(raw: &mut Vec<u8>) {
    if raw.ends_with(b"\r\n\r\n") {
        raw.truncate(raw.len() - 2);
    } else if raw.ends_with(b"\n\n") {
        raw.truncate(raw.len() - 1);
    }
}

fn read_maildir(dir: &Path, emit: &mut dyn FnMut(Found) -> bool) -> std::io::Result<()> {
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in ["cur", "new"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_file() && !p.file_name().and_then(|n| n.to_str()).unwrap_or(".").starts_with('.') {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let mut raw = Vec::new();
        open_maybe_gz(&p)?.read_to_end(&mut raw)?;
        if !emit(Found {
            raw,
            envelope_date: None,
            location: p.display().to_string(),
        }) {
            break;
        }
    }
    Ok(())
}

/// Read every message of `path` (any supported format).
fn read_source(path: &Path, emit: &mut dyn FnMut(Found) -> bool) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    if path.is_dir() {
        if !(path.join("cur").is_dir() || path.join("new").is_dir()) {
            return Err(format!(
                "{} is a directory but not a maildir (no cur/ or new/)",
                path.display()
            ));
        }
        return read_maildir(path, emit).map_err(err);
    }
    let mut head = [0u8; 5];
    let n = {
        let mut r = open_maybe_gz(path).map_err(err)?;
        let mut got = 0;
        while got < 5 {
            match r.read(&mut head[got..]).map_err(err)? {
                0 => break,
                k => got += k,
            }
        }
        got
    };
    if n == 5 && &head == b"From " {
        read_mbox(path, emit).map_err(err)
    } else if n == 0 {
        Err(format!("{} is empty", path.display()))
    } else {
        // A single message (.eml).
        let mut raw = Vec::new();
        open_maybe_gz(path).map_err(err)?.read_to_end(&mut raw).map_err(err)?;
        emit(Found {
            raw,
            envelope_date: None,
            location: path.display().to_string(),
        });
        Ok(())
    }
}

/// Import `paths` into `list`. Progress lines go to `progress`.
pub async fn import(
    store: Store,
    list: ListId,
    paths: Vec<PathBuf>,
    limits: ImportLimits,
    progress: mpsc::UnboundedSender<String>,
) -> Result<Summary, String> {
    for p in &paths {
        if !p.exists() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    let summary = Arc::new(Mutex::new(Summary::default()));
    let rt = tokio::runtime::Handle::current();
    let s2 = summary.clone();
    let store2 = store.clone();
    let sem = Arc::new(Semaphore::new(IN_FLIGHT));
    let sem2 = sem.clone();
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let failure2 = failure.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let lock = |s: &Arc<Mutex<Summary>>| s.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for path in paths {
            let _ = progress.send(format!("reading {}", path.display()));
            let mut emit = |found: Found| -> bool {
                if failure2.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return false;
                }
                let processed = {
                    let mut s = s2.lock().unwrap_or_else(|p| p.into_inner());
                    s.processed += 1;
                    s.processed
                };
                if processed % 5000 == 0 {
                    let s = lock(&s2);
                    let _ = progress.send(format!(
                        "{} read, {} imported, {} duplicates",
                        s.processed, s.imported, s.duplicates
                    ));
                }
                let reject = |why: String| {
                    let mut s = s2.lock().unwrap_or_else(|p| p.into_inner());
                    s.rejected += 1;
                    if s.rejections.len() < 100 {
                        s.rejections.push(format!("{}: {why}", found.location));
                    }
                };
                if found.raw.iter().all(|b| b.is_ascii_whitespace()) {
                    reject("empty message".into());
                    return true;
                }
                if found.raw.len() > limits.max_message_size {
                    reject(format!("larger than the {} byte limit", limits.max_message_size));
                    return true;
                }
                let now = chrono::Utc::now().timestamp();
                let fb = Fallback {
                    envelope_date: found.envelope_date,
                    received_at: now,
                };
                let meta = match mime::scan(&found.raw, &limits.mime) {
                    Ok(_) => MessageMeta::extract(&found.raw, fb),
                    Err(e) => MessageMeta::unparsed(&found.raw, fb, &e.to_string()),
                };
                let fixes = (meta.date_repaired, meta.generated_id, meta.unparsed.is_some());
                let req = IngestRequest::post(list, found.raw, meta, Origin::Import, now);
                let Ok(permit) = rt.block_on(sem2.clone().acquire_owned()) else {
                    return false;
                };
                // Queued here, in reading order (the first copy of a Message-ID is kept);
                // the outcome is awaited concurrently, so commits still group.
                let pending = store2.submit_blocking(req);
                let s3 = s2.clone();
                let f3 = failure2.clone();
                rt.spawn(async move {
                    let r = match pending {
                        Ok(p) => p.await,
                        Err(e) => Err(e),
                    };
                    let mut s = s3.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(out) => match out.first() {
                            Some(TargetOutcome::Duplicate(_)) => s.duplicates += 1,
                            _ => {
                                s.imported += 1;
                                if fixes.0 || fixes.1 || fixes.2 {
                                    s.repaired += 1;
                                }
                                s.repaired_dates += u64::from(fixes.0);
                                s.generated_ids += u64::from(fixes.1);
                                s.stored_raw += u64::from(fixes.2);
                            }
                        },
                        Err(e) => {
                            if let Ok(mut f) = f3.lock() {
                                f.get_or_insert_with(|| format!("the store refused a message: {e}"));
                            }
                        }
                    }
                    drop(permit);
                });
                true
            };
            if let Err(why) = read_source(&path, &mut emit) {
                // A file we cannot read is reported and the import goes on with the rest.
                let mut s = s2.lock().unwrap_or_else(|p| p.into_inner());
                s.rejected += 1;
                s.processed += 1;
                if s.rejections.len() < 100 {
                    s.rejections.push(why);
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("import task failed: {e}"))??;
    // Wait for every ingest still in flight.
    let _all = sem
        .acquire_many(IN_FLIGHT as u32)
        .await
        .map_err(|e| format!("import: {e}"))?;
    if let Some(f) = failure.lock().ok().and_then(|f| f.clone()) {
        return Err(format!(
            "{f}; {}",
            summary.lock().map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    let s = summary.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_dates() {
        assert_eq!(
            separator_date("From glyph at twistedmatrix.com  Thu Jun 10 12:00:00 1999"),
            Some(929_016_000)
        );
        assert_eq!(separator_date("From mboxrd@z Thu Jan  1 00:00:00 1970"), Some(0));
        assert_eq!(
            separator_date("From x@y Sat Jan  3 01:05:34 +0000 2004"),
            Some(1_073_091_934)
        );
        assert_eq!(separator_date("From nobody"), None);
    }

    #[test]
    fn mbox_split_and_unquote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.mbox");
        std::fs::write(&p, b"From a@b Thu Jun 10 12:00:00 1999\nSubject: one\n\n>From the start\n>>From deeper\n\nFrom c@d Fri Jun 11 12:00:00 1999\nSubject: two\n\nbody\n").expect("write");
        let mut got = Vec::new();
        read_source(&p, &mut |f| {
            got.push(f);
            true
        })
        .expect("read");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].raw, b"Subject: one\n\nFrom the start\n>From deeper\n");
        assert_eq!(got[1].raw, b"Subject: two\n\nbody\n");
        assert_eq!(got[1].envelope_date, Some(929_102_400));
    }

    #[test]
    fn of_two_copies_of_a_message_id_the_first_read_is_kept() {
        // Archives often hold a message twice with slightly different bodies; which copy is
        // kept must not depend on how the concurrent commits happen to interleave.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mbox = Vec::new();
        const PAIRS: usize = 3000;
        for i in 0..PAIRS {
            for copy in ["first", "second"] {
                mbox.extend_from_slice(
                    format!("From a@b.org Thu Jun 10 12:00:00 1999\nFrom: a@b.org\nMessage-ID: <m{i}@b.org>\nSubject: s{i}\n\n{copy} copy\n\n")
                        .as_bytes(),
                );
            }
        }
        let path = dir.path().join("dups.mbox");
        std::fs::write(&path, &mbox).expect("write");
        let store = Store::open(plenary_store::StoreSettings::new(dir.path().join("data"))).expect("store");
        let addr = plenary_core::ListAddress::parse("l@lists.example.org").expect("address");
        let list = store.create_list(&addr, "", "").expect("list").id;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, _rx) = mpsc::unbounded_channel();
        let limits = ImportLimits {
            max_message_size: 1 << 20,
            mime: Default::default(),
        };
        let summary = rt
            .block_on(import(store.clone(), list, vec![path], limits, tx))
            .expect("import");
        assert_eq!((summary.imported, summary.duplicates), (PAIRS as u64, PAIRS as u64));
        let mut second = 0;
        for m in store.messages_after(list, 0, PAIRS * 2).expect("messages") {
            let raw = store.raw(&m).expect("raw");
            if memchr::memmem::find(&raw, b"second copy").is_some() {
                second += 1;
            }
        }
        assert_eq!(second, 0, "{second} of {PAIRS} messages kept their second copy");
    }

    #[test]
    fn a_fragment_cut_by_an_unquoted_from_line_keeps_its_messages_date() {
        // Pipermail leaves "From my point..." in a body unquoted: Python's mailbox (and so we)
        // split there; the fragment has no headers and no separator date of its own.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("2008-March.txt");
        std::fs::write(
            &p,
            b"From a at b.org  Wed Mar  5 10:00:00 2008\nFrom: a at b.org\nSubject: q\n\nAsked.\n\nFrom my point of view\nit is fine.\n\nFrom c at d.org  Thu Mar  6 09:00:00 2008\nSubject: r\n\nx\n",
        )
        .expect("write");
        let mut got = Vec::new();
        read_source(&p, &mut |f| {
            got.push(f);
            true
        })
        .expect("read");
        assert_eq!(got.len(), 3, "split as Python's mailbox splits");
        assert_eq!(got[1].raw, b"it is fine.\n");
        assert_eq!(
            got[1].envelope_date, got[0].envelope_date,
            "the fragment dates from its message"
        );
        assert_eq!(got[0].envelope_date, Some(1_204_711_200));
        assert_eq!(got[2].envelope_date, Some(1_204_794_000));
    }
}
