//! Configuration: one TOML file, read in two stages (raw TOML, then validated settings).
//!
//! Every key is read through [`Reader`], which records a problem instead of stopping at the
//! first one, so a bad file gets a single report naming every bad and every unknown key.
//! With no file at all the embedded defaults apply: data in `./data`, SMTP on
//! `127.0.0.1:2525`, web on `http://127.0.0.1:8080`. `config/plenary.toml` documents every
//! key with its default, and a test checks it against [`KEYS`] so it cannot go stale.

use plenary_core::MimeLimits;
use plenary_fanout::{FanoutSettings, RelayTls};
use plenary_index::{IndexerSettings, QueryLimits};
use plenary_list::EngineSettings;
use plenary_smtp::SmtpSettings;
use plenary_store::StoreSettings;
use plenary_web::WebSettings;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every key the file may contain, as `section.key`.
pub const KEYS: &[&str] = &[
    "data.dir",
    "data.min_free_mb",
    "data.cache_mb",
    "smtp.listen",
    "smtp.lmtp_listen",
    "smtp.hostname",
    "smtp.max_message_size",
    "smtp.max_recipients",
    "smtp.max_line_length",
    "smtp.max_command_line",
    "smtp.command_timeout_secs",
    "smtp.data_timeout_secs",
    "smtp.session_timeout_secs",
    "smtp.max_connections",
    "smtp.max_connections_per_ip",
    "smtp.max_errors",
    "smtp.max_received_headers",
    "smtp.greeting_delay_ms",
    "smtp.tls_cert",
    "smtp.tls_key",
    "limits.max_header_bytes",
    "limits.max_header_fields",
    "limits.max_mime_depth",
    "limits.max_mime_parts",
    "web.listen",
    "web.base_url",
    "web.site_name",
    "web.templates_dir",
    "web.page_size",
    "search.max_query_bytes",
    "search.max_query_depth",
    "search.max_query_terms",
    "search.max_page_size",
    "search.max_offset",
    "search.commit_delay_ms",
    "relay.host",
    "relay.port",
    "relay.tls",
    "relay.username",
    "relay.password",
    "relay.ca_file",
    "fanout.concurrency",
    "fanout.batch",
    "fanout.max_per_second",
    "fanout.retry_initial_secs",
    "fanout.retry_max_secs",
    "fanout.give_up_secs",
    "dns.servers",
    "dns.timeout_secs",
    "dkim.selector",
    "dkim.rsa_key",
    "dkim.ed25519_key",
    "dkim.ed25519_selector",
    "dkim.domain",
    "arc.enabled",
    "arc.authserv_id",
    "arc.check_spf",
    "list.token_ttl_hours",
    "list.confirm_per_address",
    "list.confirm_per_ip",
    "list.digest_interval_hours",
    "admin.socket",
    "log.level",
];

/// Where the DKIM keys are; loaded when the daemon starts.
#[derive(Clone, Debug, Default)]
pub struct DkimConfig {
    pub selector: String,
    pub ed25519_selector: String,
    pub rsa_key: Option<PathBuf>,
    pub ed25519_key: Option<PathBuf>,
    pub domain: Option<String>,
}

/// ARC sealing of list posts (`plenary-fanout/src/arc.rs`), with the RSA DKIM key.
#[derive(Clone, Debug, Default)]
pub struct ArcConfig {
    pub enabled: bool,
    /// The name in `ARC-Authentication-Results` (RFC 8601 authserv-id).
    pub authserv_id: String,
    /// Check SPF and DMARC for posts received over SMTP (off behind a front MTA).
    pub check_spf: bool,
}

/// Validated settings for every component.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store: StoreSettings,
    pub smtp: SmtpSettings,
    pub smtp_listen: SocketAddr,
    pub lmtp_listen: Option<SocketAddr>,
    pub web: WebSettings,
    pub web_listen: SocketAddr,
    pub query: QueryLimits,
    pub indexer: IndexerSettings,
    pub admin_socket: PathBuf,
    pub log_level: String,
    pub fanout: FanoutSettings,
    pub engine: EngineSettings,
    pub dkim: DkimConfig,
    pub arc: ArcConfig,
}

struct Reader<'a> {
    root: &'a toml::Table,
    errors: Vec<String>,
    seen: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.seen.insert(key.to_string());
        let (section, name) = key.split_once('.')?;
        self.root.get(section)?.as_table()?.get(name)
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        match self.get(key) {
            None => default.to_string(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => {
                self.errors
                    .push(format!("{key}: expected a string, found {}", v.type_str()));
                default.to_string()
            }
        }
    }

    fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) if *i >= min as i64 && (*i as u64) <= max => *i as u64,
            Some(toml::Value::Integer(i)) => {
                self.errors.push(format!("{key}: {i} is out of range ({min} to {max})"));
                default
            }
            Some(v) => {
                self.errors
                    .push(format!("{key}: expected an integer, found {}", v.type_str()));
                default
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                self.errors
                    .push(format!("{key}: expected true or false, found {}", v.type_str()));
                default
            }
        }
    }

    fn socket(&mut self, key: &str, default: &str) -> Option<SocketAddr> {
        let s = self.string(key, default);
        if s.is_empty() {
            return None;
        }
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.errors
                    .push(format!("{key}: {s:?} is not an address like 127.0.0.1:2525"));
                None
            }
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl Config {
    /// Load from a file, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let table = match path {
            None => toml::Table::new(),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                text.parse::<toml::Table>()
                    .map_err(|e| format!("config file {} is not valid TOML: {e}", p.display()))?
            }
        };
        Config::from_table(&table)
    }

    /// Resolve a parsed table. Relative paths are relative to the working directory.
    pub fn from_table(table: &toml::Table) -> Result<Config, String> {
        let mut r = Reader {
            root: table,
            errors: Vec::new(),
            seen: BTreeSet::new(),
        };
        let rel = PathBuf::from;
        let data_dir = rel(r.string("data.dir", "./data"));
        let mut store = StoreSettings::new(&data_dir);
        store.min_free_bytes = r.int("data.min_free_mb", 64, 0, 1 << 30) * 1024 * 1024;
        store.cache_bytes = r.int("data.cache_mb", 8, 1, 1 << 20) * 1024 * 1024;

        let defaults = SmtpSettings::default();
        let smtp_listen = r.socket("smtp.listen", "127.0.0.1:2525");
        let lmtp_listen = r.socket("smtp.lmtp_listen", "");
        let mime = MimeLimits {
            max_header_bytes: r.int("limits.max_header_bytes", 256 * 1024, 1024, 64 << 20) as usize,
            max_header_fields: r.int("limits.max_header_fields", 1000, 10, 1_000_000) as usize,
            max_depth: r.int("limits.max_mime_depth", 32, 1, 100) as usize,
            max_parts: r.int("limits.max_mime_parts", 500, 1, 100_000) as usize,
        };
        let tls_cert = r.string("smtp.tls_cert", "");
        let tls_key = r.string("smtp.tls_key", "");
        let tls = match (tls_cert.is_empty(), tls_key.is_empty()) {
            (true, true) => None,
            (false, false) => match plenary_smtp::load_tls(&rel(tls_cert), &rel(tls_key)) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.errors.push(format!("smtp.tls_cert/smtp.tls_key: {e}"));
                    None
                }
            },
            _ => {
                r.errors
                    .push("smtp.tls_cert and smtp.tls_key must be set together".into());
                None
            }
        };
        let smtp = SmtpSettings {
            hostname: r.string("smtp.hostname", "localhost"),
            max_message_size: r.int("smtp.max_message_size", defaults.max_message_size as u64, 1024, 1 << 31) as usize,
            max_recipients: r.int("smtp.max_recipients", 100, 1, 100_000) as usize,
            max_line_length: r.int("smtp.max_line_length", 1000, 78, 1 << 20) as usize,
            max_command_line: r.int("smtp.max_command_line", 2048, 512, 1 << 16) as usize,
            command_timeout: secs(r.int("smtp.command_timeout_secs", 300, 1, 86_400)),
            data_timeout: secs(r.int("smtp.data_timeout_secs", 600, 1, 86_400)),
            session_timeout: secs(r.int("smtp.session_timeout_secs", 600, 1, 86_400)),
            max_connections: r.int("smtp.max_connections", 500, 1, 1_000_000) as usize,
            max_connections_per_ip: r.int("smtp.max_connections_per_ip", 10, 1, 1_000_000) as usize,
            max_errors: r.int("smtp.max_errors", 10, 1, 10_000) as usize,
            max_received_headers: r.int("smtp.max_received_headers", 30, 1, 1000) as usize,
            greeting_delay: Duration::from_millis(r.int("smtp.greeting_delay_ms", 0, 0, 60_000)),
            mime,
            tls,
        };
        let web_listen = r.socket("web.listen", "127.0.0.1:8080");
        let base_default = format!(
            "http://{}",
            web_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "127.0.0.1:8080".into())
        );
        let base_url = r
            .string("web.base_url", &base_default)
            .trim_end_matches('/')
            .to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            r.errors.push(format!(
                "web.base_url: {base_url:?} must start with http:// or https://"
            ));
        }
        let templates_dir = Some(r.string("web.templates_dir", ""))
            .filter(|s| !s.is_empty())
            .map(rel);
        if let Some(d) = &templates_dir {
            if !d.is_dir() {
                r.errors
                    .push(format!("web.templates_dir: {} is not a directory", d.display()));
            }
        }
        let web = WebSettings {
            base_url,
            site_name: r.string("web.site_name", "Plenary archives"),
            templates_dir,
            page_size: r.int("web.page_size", 20, 1, 100) as usize,
        };
        let query = QueryLimits {
            max_bytes: r.int("search.max_query_bytes", 512, 16, 4096) as usize,
            max_depth: r.int("search.max_query_depth", 8, 1, 32) as usize,
            max_terms: r.int("search.max_query_terms", 64, 1, 1024) as usize,
            max_page_size: r.int("search.max_page_size", 100, 1, 1000) as usize,
            max_offset: r.int("search.max_offset", 10_000, 0, 1_000_000) as usize,
        };
        let indexer = IndexerSettings {
            commit_delay: Duration::from_millis(r.int("search.commit_delay_ms", 800, 0, 60_000)),
            ..IndexerSettings::default()
        };
        let relay_tls = match r.string("relay.tls", "none").as_str() {
            "none" => RelayTls::None,
            "starttls" => RelayTls::StartTls,
            "tls" => RelayTls::Tls,
            other => {
                r.errors
                    .push(format!("relay.tls: {other:?} is not one of none, starttls, tls"));
                RelayTls::None
            }
        };
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        let mut dns_servers = Vec::new();
        for part in r
            .string("dns.servers", "")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let with_port = if part.parse::<std::net::IpAddr>().is_ok() {
                format!("{part}:53")
            } else {
                part.to_string()
            };
            match with_port.parse::<SocketAddr>() {
                Ok(a) => dns_servers.push(a),
                Err(_) => r.errors.push(format!(
                    "dns.servers: {part:?} is not an IP address or IP:port (e.g. 127.0.0.1:53)"
                )),
            }
        }
        let dns_timeout = secs(r.int("dns.timeout_secs", 5, 1, 60));
        let fanout = FanoutSettings {
            relay_host: r.string("relay.host", "127.0.0.1"),
            relay_port: r.int("relay.port", 25, 1, 65_535) as u16,
            tls: relay_tls,
            username: nonempty(r.string("relay.username", "")),
            password: nonempty(r.string("relay.password", "")),
            ca_file: nonempty(r.string("relay.ca_file", "")).map(rel),
            dns_servers,
            dns_timeout,
            concurrency: r.int("fanout.concurrency", 16, 1, 1000) as usize,
            batch: r.int("fanout.batch", 500, 1, 100_000) as usize,
            max_per_second: r.int("fanout.max_per_second", 0, 0, 1_000_000) as u32,
            retry_initial: secs(r.int("fanout.retry_initial_secs", 60, 1, 86_400)),
            retry_max: secs(r.int("fanout.retry_max_secs", 3600, 1, 7 * 86_400)),
            give_up: secs(r.int("fanout.give_up_secs", 432_000, 0, 60 * 86_400)),
            base_url: web.base_url.clone(),
            timeout: secs(60),
        };
        let selector = r.string("dkim.selector", "plenary");
        let dkim = DkimConfig {
            ed25519_selector: r.string("dkim.ed25519_selector", &format!("{selector}-ed")),
            selector,
            rsa_key: nonempty(r.string("dkim.rsa_key", "")).map(rel),
            ed25519_key: nonempty(r.string("dkim.ed25519_key", "")).map(rel),
            domain: nonempty(r.string("dkim.domain", "")),
        };
        for key in [&dkim.rsa_key, &dkim.ed25519_key].into_iter().flatten() {
            if let Err(e) = plenary_fanout::dkim::DkimKey::load(key, "check", None) {
                r.errors.push(format!("dkim: {e}"));
            }
        }
        let arc = ArcConfig {
            enabled: r.boolean("arc.enabled", false),
            authserv_id: nonempty(r.string("arc.authserv_id", "")).unwrap_or_else(|| smtp.hostname.clone()),
            check_spf: r.boolean("arc.check_spf", true),
        };
        if arc.enabled && dkim.rsa_key.is_none() {
            r.errors
                .push("arc.enabled: ARC seals with the RSA DKIM key; set dkim.rsa_key too".into());
        }
        let engine = EngineSettings {
            base_url: web.base_url.clone(),
            token_ttl: secs(r.int("list.token_ttl_hours", 72, 1, 24 * 60) * 3600),
            confirm_per_address: r.int("list.confirm_per_address", 3, 1, 1000) as usize,
            confirm_per_ip: r.int("list.confirm_per_ip", 10, 1, 100_000) as usize,
            digest_interval: secs(r.int("list.digest_interval_hours", 24, 1, 24 * 31) * 3600),
        };
        let admin_socket = Some(r.string("admin.socket", ""))
            .filter(|s| !s.is_empty())
            .map(rel)
            .unwrap_or_else(|| data_dir.join("admin.sock"));
        let log_level = r.string("log.level", "info");
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            r.errors.push(format!(
                "log.level: {log_level:?} is not one of error, warn, info, debug, trace"
            ));
        }
        // Unknown sections and keys.
        for (section, v) in table {
            match v.as_table() {
                Some(t) => {
                    for k in t.keys() {
                        let full = format!("{section}.{k}");
                        if !KEYS.contains(&full.as_str()) {
                            r.errors.push(format!("{full}: unknown key"));
                        }
                    }
                }
                None => r.errors.push(format!(
                    "{section}: unknown top-level key (keys live in sections such as [smtp])"
                )),
            }
        }
        debug_assert!(
            r.seen.iter().all(|k| KEYS.contains(&k.as_str())),
            "KEYS is missing a key the reader uses"
        );
        let (Some(smtp_listen), Some(web_listen)) = (smtp_listen, web_listen) else {
            if r.errors.is_empty() {
                r.errors.push("smtp.listen and web.listen must not be empty".into());
            }
            return Err(report(&r.errors));
        };
        if !r.errors.is_empty() {
            return Err(report(&r.errors));
        }
        Ok(Config {
            data_dir,
            store,
            smtp,
            smtp_listen,
            lmtp_listen,
            web,
            web_listen,
            query,
            indexer,
            admin_socket,
            log_level,
            fanout,
            engine,
            dkim,
            arc,
        })
    }
}

fn report(errors: &[String]) -> String {
    let mut s = format!(
        "the configuration has {} problem{}:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        s.push_str("\n  - ");
        s.push_str(e);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> toml::Table {
        let text = include_str!("../../../config/plenary.toml");
        text.parse().expect("config/plenary.toml is valid TOML")
    }

    #[test]
    fn example_file_documents_every_key_with_its_default() {
        let t = example();
        let mut found = BTreeSet::new();
        for (section, v) in &t {
            for k in v.as_table().expect("sections only").keys() {
                found.insert(format!("{section}.{k}"));
            }
        }
        let expected: BTreeSet<String> = KEYS.iter().map(|k| k.to_string()).collect();
        assert_eq!(found, expected, "config/plenary.toml and KEYS differ");
        // Loading it must give exactly the embedded defaults.
        let from_file = Config::from_table(&t).expect("example loads");
        let defaults = Config::load(None).expect("defaults");
        assert_eq!(from_file.smtp_listen, defaults.smtp_listen);
        assert_eq!(from_file.web_listen, defaults.web_listen);
        assert_eq!(from_file.data_dir, defaults.data_dir);
        assert_eq!(from_file.web.base_url, defaults.web.base_url);
        assert_eq!(from_file.smtp.max_message_size, defaults.smtp.max_message_size);
        assert_eq!(from_file.smtp.mime, defaults.smtp.mime);
        assert_eq!(from_file.query, defaults.query);
        assert_eq!(from_file.store.min_free_bytes, defaults.store.min_free_bytes);
        assert_eq!(from_file.store.cache_bytes, defaults.store.cache_bytes);
        assert_eq!(from_file.admin_socket, defaults.admin_socket);
        assert_eq!(from_file.arc.enabled, defaults.arc.enabled);
        assert_eq!(from_file.arc.authserv_id, defaults.arc.authserv_id);
        assert_eq!(from_file.arc.check_spf, defaults.arc.check_spf);
        // And every other setting too, whatever component it belongs to.
        assert_eq!(
            format!("{from_file:#?}"),
            format!("{defaults:#?}"),
            "config/plenary.toml must load to exactly the embedded defaults"
        );
    }

    #[test]
    fn arc_needs_the_rsa_key_and_names_this_host() {
        let t: toml::Table = "[arc]\nenabled = true\n".parse().expect("toml");
        let err = Config::from_table(&t).expect_err("ARC without a key must fail");
        assert!(err.contains("arc.enabled") && err.contains("dkim.rsa_key"), "{err}");
        let t: toml::Table = "[arc]\nenabled = \"yes\"\n".parse().expect("toml");
        let err = Config::from_table(&t).expect_err("a string is not a boolean");
        assert!(err.contains("arc.enabled: expected true or false"), "{err}");
        let t: toml::Table = "[smtp]\nhostname = \"lists.example.org\"\n".parse().expect("toml");
        let c = Config::from_table(&t).expect("loads");
        assert!(!c.arc.enabled);
        assert_eq!(c.arc.authserv_id, "lists.example.org");
    }

    #[test]
    fn defaults_match_the_issue() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.smtp_listen.to_string(), "127.0.0.1:2525");
        assert_eq!(c.web_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.web.base_url, "http://127.0.0.1:8080");
        assert!(c.lmtp_listen.is_none());
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let t: toml::Table = r#"
            bogus = 1
            [smtp]
            listen = "not an address"
            max_recipients = 0
            colour = "blue"
            [web]
            page_size = "ten"
            [nope]
            x = 1
            [log]
            level = "loud"
        "#
        .parse()
        .expect("toml");
        let err = Config::from_table(&t).expect_err("must fail");
        for needle in [
            "bogus",
            "smtp.listen",
            "smtp.max_recipients",
            "smtp.colour: unknown key",
            "web.page_size",
            "nope.x: unknown key",
            "log.level",
        ] {
            assert!(err.contains(needle), "report misses {needle}: {err}");
        }
        assert!(err.starts_with("the configuration has 7 problems"), "{err}");
    }
}
