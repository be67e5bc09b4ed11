//! DKIM signing (RFC 6376, relaxed/relaxed; RSA-SHA256 and Ed25519-SHA256 per RFC 8463).
//!
//! Why our own signer instead of `mail-auth`'s: every copy of a post differs only in its
//! `List-Unsubscribe` header (the RFC 8058 one-click token is per recipient), so the body
//! hash is computed once per post ([`body_hash`]) and each recipient costs one header hash
//! and one private-key operation. `mail-auth` 0.13 hashes the body on every `sign` call and
//! signs with `ring`, which measured 1,964 RSA-2048 signatures/s per core here against
//! OpenSSL's 3,384 (the issue's ceiling is OpenSSL's rate). The keys are OpenSSL's.

use openssl::md::Md;
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::{Signer, Verifier};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A loaded signing key.
pub struct DkimKey {
    pub domain: Option<String>,
    pub selector: String,
    key: PKey<Private>,
    ed25519: bool,
    /// Names this key's signing contexts in each thread's [`CONTEXTS`].
    id: u64,
}

/// Gives every loaded key its own id.
static NEXT_KEY_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Per thread and key: an RSA signing context over the thread's own copy of the key,
    /// set up once and reused. Setting up a context per signature (what `Signer::new` does)
    /// costs OpenSSL 3 a provider fetch each time. The copy matters as much: OpenSSL blinds
    /// every RSA signature, and a key's blinding belongs to the thread that signed with it
    /// first; every other thread takes the key's lock for a shared blinding on each
    /// signature. With one copy per thread every signing thread owns its blinding, as each
    /// process of `openssl speed -multi` (our ceiling) does. Measured: the fan-out with the
    /// key first used on the main thread (so no signing thread owned it) was 3 % slower at
    /// the same CPU time, in seven paired runs out of seven.
    static CONTEXTS: std::cell::RefCell<Vec<(u64, PkeyCtx<Private>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot read DKIM key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("DKIM key {path} is not a PEM RSA or Ed25519 private key: {reason}")]
    Key { path: String, reason: String },
    #[error("DKIM key {path}: RSA keys must have at least 1024 bits (2048 recommended), this one has {bits}")]
    Weak { path: String, bits: u32 },
    #[error("signing failed: {0}")]
    Sign(String),
}

impl DkimKey {
    /// Load a PEM private key (PKCS#1 or PKCS#8, RSA or Ed25519).
    pub fn load(path: &Path, selector: &str, domain: Option<String>) -> Result<DkimKey, DkimError> {
        let p = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| DkimError::Read {
            path: p.clone(),
            source,
        })?;
        let key = PKey::private_key_from_pem(&pem).map_err(|e| DkimError::Key {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let ed25519 = match key.id() {
            Id::RSA => {
                if key.bits() < 1024 {
                    return Err(DkimError::Weak {
                        path: p,
                        bits: key.bits(),
                    });
                }
                false
            }
            Id::ED25519 => true,
            other => {
                return Err(DkimError::Key {
                    path: p,
                    reason: format!("unsupported key type {other:?}"),
                })
            }
        };
        let k = DkimKey {
            domain,
            selector: selector.to_string(),
            key,
            ed25519,
            id: NEXT_KEY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        k.self_check().map_err(|reason| DkimError::Key { path: p, reason })?;
        Ok(k)
    }

    /// Sign a fixed text and verify the signature with the key's own public part. A PEM
    /// whose private and public parts do not belong together (a damaged or hand-assembled
    /// file) loads and signs without an error, but every receiver would reject what it
    /// signs: refuse it at start-up instead. It also does OpenSSL's one-off set-up for the
    /// key (about 1 ms) before the first post has to wait for it.
    fn self_check(&self) -> Result<(), String> {
        let data: &[u8] = b"plenary: DKIM key check\r\n";
        let sig = self.sign_bytes(data).map_err(|e| format!("it cannot sign: {e}"))?;
        let verified = if self.ed25519 {
            Verifier::new_without_digest(&self.key).and_then(|mut v| v.verify_oneshot(&sig, &Sha256::digest(data)))
        } else {
            Verifier::new(openssl::hash::MessageDigest::sha256(), &self.key).and_then(|mut v| {
                v.update(data)?;
                v.verify(&sig)
            })
        };
        match verified {
            Ok(true) => Ok(()),
            Ok(false) => Err("a test signature does not verify with the key's own public part \
                              (its private and public parts do not belong together)"
                .into()),
            Err(e) => Err(format!("a test signature cannot be verified: {e}")),
        }
    }

    /// The same key (shared, not read again; it signs through the same per-thread
    /// contexts): the ARC sealer signs with the DKIM RSA key, and reading the file twice
    /// could give two different keys if it was replaced in between.
    pub fn share(&self) -> DkimKey {
        DkimKey {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            key: self.key.clone(),
            ed25519: self.ed25519,
            id: self.id,
        }
    }

    fn algorithm(&self) -> &'static str {
        if self.ed25519 {
            "ed25519-sha256"
        } else {
            "rsa-sha256"
        }
    }

    fn sign_bytes(&self, data: &[u8]) -> Result<Vec<u8>, DkimError> {
        let err = |e: openssl::error::ErrorStack| DkimError::Sign(e.to_string());
        if self.ed25519 {
            // RFC 8463: Ed25519 signs the SHA-256 hash of the canonicalised headers.
            let hash = Sha256::digest(data);
            let mut s = Signer::new_without_digest(&self.key).map_err(err)?;
            s.sign_oneshot_to_vec(&hash).map_err(err)
        } else {
            // RSASSA-PKCS1-v1_5 over SHA-256 (RFC 6376 §3.3.1): hash here, sign the digest
            // with a reused context.
            self.sign_sha256_digest(&Sha256::digest(data))
        }
    }

    /// RSASSA-PKCS1-v1_5 signature of a SHA-256 `digest` (an RSA key; the ARC sealer
    /// hashes for itself).
    pub fn sign_sha256_digest(&self, hash: &[u8]) -> Result<Vec<u8>, DkimError> {
        let err = |e: openssl::error::ErrorStack| DkimError::Sign(e.to_string());
        if self.ed25519 {
            return Err(DkimError::Sign("an Ed25519 key cannot make an RSA signature".into()));
        }
        CONTEXTS.with(|cell| {
            let mut ctxs = cell.borrow_mut();
            let i = match ctxs.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    // This thread's own copy of the key (a separate OpenSSL key object).
                    let der = self.key.private_key_to_der().map_err(err)?;
                    let copy = PKey::private_key_from_der(&der).map_err(err)?;
                    let mut c = PkeyCtx::new(&copy).map_err(err)?;
                    c.sign_init().map_err(err)?;
                    c.set_rsa_padding(Padding::PKCS1).map_err(err)?;
                    c.set_signature_md(Md::sha256()).map_err(err)?;
                    ctxs.push((self.id, c));
                    ctxs.len() - 1
                }
            };
            let mut sig = Vec::with_capacity(self.key.size());
            ctxs[i].1.sign_to_vec(hash, &mut sig).map_err(err)?;
            Ok(sig)
        })
    }

    /// An RSA key (the only kind ARC sealing takes).
    pub fn is_rsa(&self) -> bool {
        !self.ed25519
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Relaxed body canonicalisation, hashed: the `bh=` value.
pub fn body_hash(body: &[u8]) -> String {
    #[cfg(test)]
    BODY_HASHES.with(|c| c.set(c.get() + 1));
    let mut h = Sha256::new();
    let mut pending_empty = 0usize;
    let mut any = false;
    let mut line = Vec::with_capacity(1024);
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(raw_line) = lines.next() {
        let raw_line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        if lines.peek().is_none() && raw_line.is_empty() {
            break; // the split after the final CRLF
        }
        line.clear();
        let mut in_wsp = false;
        for &b in raw_line {
            if is_wsp(b) {
                in_wsp = true;
            } else {
                if in_wsp {
                    line.push(b' ');
                    in_wsp = false;
                }
                line.push(b);
            }
        }
        if line.is_empty() {
            pending_empty += 1;
            continue;
        }
        for _ in 0..pending_empty {
            h.update(b"\r\n");
        }
        pending_empty = 0;
        h.update(&line);
        h.update(b"\r\n");
        any = true;
    }
    let _ = any;
    crate::b64(&h.finalize())
}

#[cfg(test)]
thread_local! {
    /// How many bodies this thread hashed (the fan-out must hash once per post).
    pub static BODY_HASHES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Relaxed header canonicalisation of one field: `name:value\r\n`.
pub fn relaxed_header(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    out.extend(name.trim().bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b':');
    let mut in_wsp = false;
    let mut started = false;
    for &b in value {
        if b == b'\r' || b == b'\n' {
            continue;
        }
        if is_wsp(b) {
            in_wsp = true;
            continue;
        }
        if in_wsp && started {
            out.push(b' ');
        }
        in_wsp = false;
        started = true;
        out.push(b);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Signs a message whose body hash is known. `headers` are (name, raw value) in message
/// order; `signed` are the header names to cover (a name listed more times than present
/// is "over-signed": nobody can add that header later without breaking the signature).
pub fn sign(
    key: &DkimKey,
    domain: &str,
    headers: &[(&str, &[u8])],
    signed: &[&str],
    bh: &str,
    timestamp: i64,
) -> Result<String, DkimError> {
    let mut input = Vec::with_capacity(2048);
    // RFC 6376 §5.4.2: instances are taken from the bottom up.
    let mut used = vec![false; headers.len()];
    for name in signed {
        if let Some(i) = (0..headers.len())
            .rev()
            .find(|&i| !used[i] && headers[i].0.eq_ignore_ascii_case(name))
        {
            used[i] = true;
            input.extend_from_slice(&relaxed_header(headers[i].0, headers[i].1));
        }
    }
    let value = format!(
        " v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={}; h={};\r\n\tbh={};\r\n\tb=",
        key.algorithm(),
        key.domain.as_deref().unwrap_or(domain),
        key.selector,
        timestamp,
        signed.join(":"),
        bh
    );
    let mut canon = relaxed_header("dkim-signature", value.as_bytes());
    canon.truncate(canon.len() - 2); // without the trailing CRLF
    input.extend_from_slice(&canon);
    let sig = key.sign_bytes(&input)?;
    Ok(format!("DKIM-Signature:{value}{}\r\n", crate::b64(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hash_matches_rfc_examples() {
        // The relaxed hash of an empty body is the hash of the empty string (RFC 6376 errata 1384).
        assert_eq!(body_hash(b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        // Trailing whitespace and empty lines do not change the hash.
        assert_eq!(body_hash(b"Hi  there \r\n\r\n\r\n"), body_hash(b"Hi there\r\n"));
        assert_ne!(body_hash(b"Hi there\r\n"), body_hash(b"Hithere\r\n"));
    }

    #[test]
    fn reused_rsa_contexts_sign_exactly_like_a_fresh_signer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
        std::fs::write(&path, rsa.private_key_to_pem().expect("pem")).expect("write");
        let key = DkimKey::load(&path, "s", None).expect("load");
        for i in 0..5 {
            let data = format!("from:a@x.org\r\nsubject:copy {i}\r\n");
            let ours = key.sign_bytes(data.as_bytes()).expect("sign");
            // PKCS#1 v1.5 is deterministic: the reference signer must give the same bytes.
            let mut s = Signer::new(openssl::hash::MessageDigest::sha256(), &key.key).expect("signer");
            s.update(data.as_bytes()).expect("update");
            assert_eq!(ours, s.sign_to_vec().expect("sign"), "copy {i}");
        }
        let contexts_of = |key: &DkimKey| CONTEXTS.with(|c| c.borrow().iter().filter(|(id, _)| *id == key.id).count());
        assert_eq!(contexts_of(&key), 1, "one context per thread and key, reused");
        // Another thread signs with its own copy, and the same bytes.
        let data = "from:a@x.org\r\nsubject:other thread\r\n";
        let (theirs, n) = std::thread::scope(|sc| {
            sc.spawn(|| {
                let sig = key.sign_bytes(data.as_bytes()).expect("sign");
                (sig, contexts_of(&key))
            })
            .join()
            .expect("thread")
        });
        assert_eq!(n, 1, "the other thread set up its own context");
        assert_eq!(theirs, key.sign_bytes(data.as_bytes()).expect("sign"));
    }

    #[test]
    fn a_key_whose_private_and_public_parts_do_not_match_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            openssl::rsa::Rsa::generate(2048).expect("rsa"),
            openssl::rsa::Rsa::generate(2048).expect("rsa"),
        );
        let c = |n: &openssl::bn::BigNumRef| n.to_owned().expect("bn");
        // Modulus and public exponent of one key, private parts of another.
        let mixed = openssl::rsa::Rsa::from_private_components(
            c(a.n()),
            c(a.e()),
            c(b.d()),
            c(b.p().expect("p")),
            c(b.q().expect("q")),
            c(b.dmp1().expect("dmp1")),
            c(b.dmq1().expect("dmq1")),
            c(b.iqmp().expect("iqmp")),
        )
        .expect("components");
        let bad = dir.path().join("mixed.pem");
        std::fs::write(&bad, mixed.private_key_to_pem().expect("pem")).expect("write");
        let err = match DkimKey::load(&bad, "s", None) {
            Ok(_) => panic!("a mismatched key was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("mixed.pem"), "{err}");
        assert!(err.contains("signature"), "{err}");
        // The same check passes a sound RSA key and a sound Ed25519 key.
        let good = dir.path().join("good.pem");
        std::fs::write(&good, a.private_key_to_pem().expect("pem")).expect("write");
        DkimKey::load(&good, "s", None).expect("a sound RSA key loads");
        let ed = openssl::pkey::PKey::generate_ed25519().expect("ed25519");
        let edp = dir.path().join("ed.pem");
        std::fs::write(&edp, ed.private_key_to_pem_pkcs8().expect("pem")).expect("write");
        DkimKey::load(&edp, "s", None).expect("a sound Ed25519 key loads");
    }

    #[test]
    fn relaxed_header_unfolds_and_compresses() {
        assert_eq!(
            relaxed_header("Subject", b" A  long\r\n\t subject  "),
            b"subject:A long subject\r\n".to_vec()
        );
    }
}
