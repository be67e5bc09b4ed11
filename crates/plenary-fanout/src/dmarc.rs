//! The author domain's DMARC policy, for the `dmarc = "munge"` list setting.
//!
//! A list that changes a post (subject prefix, footer) breaks the author's DKIM signature,
//! and the copy no longer passes DMARC for the author's domain. When that domain publishes
//! `p=quarantine` or `p=reject`, receivers such as Gmail and Yahoo would junk or refuse
//! every copy (and the bounces would raise every member's score), so the list rewrites
//! From to its own address. Domains with `p=none` or no record keep their From.
//!
//! The lookup follows RFC 7489 §6.6.3: `_dmarc.<author domain>` first, then
//! `_dmarc.<organizational domain>` (the Public Suffix List's registrable domain, from the
//! `psl` crate), where `sp=` (else `p=`) applies to subdomains. A DNS failure other than
//! "no such name / no record" counts as strict: munging a copy that did not need it costs
//! the author's signature; not munging one that did costs its delivery to everyone.
//!
//! hickory-resolver caches answers for their TTL.

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::time::Duration;

/// What a domain asks receivers to do with mail that fails DMARC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No record, or `p=none`.
    None,
    Quarantine,
    Reject,
}

impl Policy {
    pub fn strict(self) -> bool {
        matches!(self, Policy::Quarantine | Policy::Reject)
    }
}

/// Looks up DMARC policies through the system resolver or configured name servers.
pub struct Dmarc {
    resolver: TokioResolver,
}

impl Dmarc {
    /// `servers` empty: the system's `/etc/resolv.conf`.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Dmarc, String> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
        } else {
            let group: Vec<NameServerConfig> = servers
                .iter()
                .flat_map(|a| {
                    [
                        NameServerConfig::new(*a, Protocol::Udp),
                        NameServerConfig::new(*a, Protocol::Tcp),
                    ]
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(group));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.cache_size = 4096;
        Ok(Dmarc {
            resolver: builder.build(),
        })
    }

    /// The policy that applies to mail From `domain`, or an error text for a DNS failure.
    pub async fn policy(&self, domain: &str) -> Result<Policy, String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(r) = self.record(&domain).await? {
            return Ok(parse(&r, false).unwrap_or(Policy::None));
        }
        match psl::domain_str(&domain) {
            Some(org) if org != domain => match self.record(org).await? {
                Some(r) => Ok(parse(&r, true).unwrap_or(Policy::None)),
                None => Ok(Policy::None),
            },
            _ => Ok(Policy::None),
        }
    }

    /// The one `v=DMARC1` TXT record at `_dmarc.<domain>`, if there is exactly one.
    async fn record(&self, domain: &str) -> Result<Option<String>, String> {
        let name = format!("_dmarc.{domain}.");
        match self.resolver.txt_lookup(name.as_str()).await {
            Ok(answer) => {
                let records: Vec<String> = answer
                    .iter()
                    .map(|txt| {
                        txt.txt_data()
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>()
                    })
                    .filter(|r| is_dmarc(r))
                    .collect();
                // RFC 7489 §6.6.3: more than one record means none applies.
                Ok((records.len() == 1).then(|| records.into_iter().next()).flatten())
            }
            Err(e) if no_such_record(&e) => Ok(None),
            Err(e) => Err(format!("DNS lookup of {name}: {e}")),
        }
    }
}

/// NXDOMAIN or an empty NOERROR answer: there is no record. hickory also reports
/// SERVFAIL and REFUSED as "no records found", but those are failures.
fn no_such_record(e: &hickory_resolver::ResolveError) -> bool {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError)
        }
        _ => false,
    }
}

fn is_dmarc(record: &str) -> bool {
    let first = record.split(';').next().unwrap_or_default();
    let (k, v) = first.split_once('=').unwrap_or_default();
    k.trim().eq_ignore_ascii_case("v") && v.trim() == "DMARC1"
}

/// The requested policy of a record; for a subdomain found through its organizational
/// domain, `sp=` wins over `p=`. `None` for a record without a valid `p=`.
pub fn parse(record: &str, subdomain: bool) -> Option<Policy> {
    let mut p = None;
    let mut sp = None;
    for tag in record.split(';') {
        let Some((k, v)) = tag.split_once('=') else { continue };
        let v = match v.trim().to_ascii_lowercase().as_str() {
            "none" => Policy::None,
            "quarantine" => Policy::Quarantine,
            "reject" => Policy::Reject,
            _ => continue,
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "p" => p = Some(v),
            "sp" => sp = Some(v),
            _ => {}
        }
    }
    if subdomain {
        sp.or(p)
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_as_receivers_read_them() {
        assert_eq!(
            parse("v=DMARC1; p=reject; rua=mailto:d@example.com", false),
            Some(Policy::Reject)
        );
        assert_eq!(parse("v=DMARC1;p=Quarantine;pct=100", false), Some(Policy::Quarantine));
        assert_eq!(parse("v=DMARC1; p=none", false), Some(Policy::None));
        assert_eq!(parse("v=DMARC1; p=reject; sp=none", true), Some(Policy::None));
        assert_eq!(parse("v=DMARC1; p=none; sp=reject", true), Some(Policy::Reject));
        assert_eq!(parse("v=DMARC1; p=reject", true), Some(Policy::Reject));
        assert_eq!(parse("v=DMARC1; p=bogus", false), None);
        assert!(is_dmarc("v=DMARC1; p=none"));
        assert!(is_dmarc(" v = DMARC1 ;p=none"));
        assert!(!is_dmarc("v=spf1 -all"));
        assert!(!is_dmarc("p=reject; v=DMARC1"));
        assert!(Policy::Reject.strict() && Policy::Quarantine.strict() && !Policy::None.strict());
    }

    #[test]
    fn organizational_domains_come_from_the_public_suffix_list() {
        assert_eq!(psl::domain_str("lists.example.co.uk"), Some("example.co.uk"));
        assert_eq!(psl::domain_str("mail.sub.example.com"), Some("example.com"));
    }
}
