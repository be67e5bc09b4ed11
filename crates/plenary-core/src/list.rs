//! List settings, member records and the posting rule.
//!
//! Why here: the decision "what happens to this post" is pure (settings + who sent it →
//! action), and it is taken inside the store's committer so that the decision, the archive
//! write and the delivery job are one transaction. Keeping it free of I/O lets every
//! combination be tested in a table below.

use crate::address::MemberAddress;
use serde::{Deserialize, Serialize};

/// Who may join (Mailman's subscription policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionPolicy {
    /// Anyone, after confirming their address (double opt-in).
    #[default]
    Open,
    /// Confirmation, then an owner's approval.
    Approve,
    /// Only owners add members.
    Closed,
}

/// Who may post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PostingPolicy {
    /// Anyone; non-members too.
    Open,
    /// Members post freely; non-members get [`NonMemberAction`].
    #[default]
    MembersOnly,
    /// Every post is held for a moderator.
    Moderated,
    /// Only owners and moderators post; `List-Post: NO`.
    Announce,
}

/// What happens to a post from someone who may not post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NonMemberAction {
    #[default]
    Hold,
    /// Refused during the SMTP session (the sending server tells the author; no backscatter).
    Reject,
    /// Accepted and dropped, with no notice to anyone.
    Discard,
}

/// DMARC mitigation (see ARCHITECTURE.md): rewrite From only when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DmarcMode {
    /// Never touch From. With no subject prefix and no footer the author's DKIM survives.
    #[default]
    Off,
    /// Munge From when the author's domain publishes p=quarantine/reject or is listed in
    /// `always_munge`.
    Munge,
    /// Always munge From.
    Always,
}

/// Who may read a list's archive on the web.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveVisibility {
    /// Public, and search engines are welcome.
    #[default]
    Public,
    /// Public, but pages ask search engines not to index them (`noindex`, robots.txt).
    NoIndex,
    /// Not on the public web at all: no pages, feeds, downloads or search results.
    Private,
}

/// The language a list is mostly written in: chooses stemming and tokenising for search,
/// and the `lang` of its messages on pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    #[default]
    English,
    French,
    Spanish,
    Portuguese,
    Russian,
    Arabic,
    German,
    /// Chinese, Japanese and other scripts without spaces: split into overlapping pairs of
    /// characters (bigrams), no stemming.
    Chinese,
    /// Any other language: words lower-cased and accents folded, no stemming.
    Other,
}

impl Language {
    pub const ALL: [Language; 9] = [
        Language::English,
        Language::French,
        Language::Spanish,
        Language::Portuguese,
        Language::Russian,
        Language::Arabic,
        Language::German,
        Language::Chinese,
        Language::Other,
    ];

    /// The setting's name.
    pub fn name(self) -> &'static str {
        match self {
            Language::English => "english",
            Language::French => "french",
            Language::Spanish => "spanish",
            Language::Portuguese => "portuguese",
            Language::Russian => "russian",
            Language::Arabic => "arabic",
            Language::German => "german",
            Language::Chinese => "chinese",
            Language::Other => "other",
        }
    }

    /// BCP 47 tag for `lang` attributes (none for `Other`).
    pub fn tag(self) -> Option<&'static str> {
        Some(match self {
            Language::English => "en",
            Language::French => "fr",
            Language::Spanish => "es",
            Language::Portuguese => "pt",
            Language::Russian => "ru",
            Language::Arabic => "ar",
            Language::German => "de",
            Language::Chinese => "zh",
            Language::Other => return None,
        })
    }

    pub fn parse(s: &str) -> Option<Language> {
        let s = s.to_ascii_lowercase();
        Language::ALL
            .into_iter()
            .find(|l| l.name() == s || l.tag() == Some(s.as_str()))
    }
}

/// Per-list settings, stored with the list record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListSettings {
    pub subscription: SubscriptionPolicy,
    pub posting: PostingPolicy,
    pub nonmember: NonMemberAction,
    pub dmarc: DmarcMode,
    /// Domains whose authors are always munged in `Munge` mode.
    pub always_munge: Vec<String>,
    /// e.g. `[gov]`; empty for none.
    pub subject_prefix: String,
    /// Plain-text footer appended to text/plain posts; empty for none.
    pub footer: String,
    /// Owners receive `LIST-owner@` mail and approve subscriptions.
    pub owners: Vec<MemberAddress>,
    /// Moderators (owners moderate too).
    pub moderators: Vec<MemberAddress>,
    /// Send a digest once this many messages wait (and at least daily).
    pub digest_size: u32,
    /// Bounce score at which delivery to a member is disabled.
    pub bounce_threshold: u32,
    /// Who may read the archive on the web.
    pub archive: ArchiveVisibility,
    /// Main language of the list (search stemming, `lang` of messages).
    pub language: Language,
}

impl Default for ListSettings {
    fn default() -> ListSettings {
        ListSettings {
            subscription: SubscriptionPolicy::Open,
            posting: PostingPolicy::MembersOnly,
            nonmember: NonMemberAction::Hold,
            dmarc: DmarcMode::Off,
            always_munge: Vec::new(),
            subject_prefix: String::new(),
            footer: String::new(),
            owners: Vec::new(),
            moderators: Vec::new(),
            digest_size: 30,
            bounce_threshold: 5,
            archive: ArchiveVisibility::Public,
            language: Language::English,
        }
    }
}

impl ListSettings {
    pub fn is_owner(&self, a: &MemberAddress) -> bool {
        self.owners.contains(a)
    }

    pub fn is_moderator(&self, a: &MemberAddress) -> bool {
        self.is_owner(a) || self.moderators.contains(a)
    }

    /// Set one setting from `key=value` text (the CLI's `plenary list set`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn pick<T: Copy>(key: &str, value: &str, options: &[(&str, T)]) -> Result<T, String> {
            options
                .iter()
                .find(|(n, _)| *n == value)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                    format!("{key}: {value:?} is not one of {}", names.join(", "))
                })
        }
        fn addresses(key: &str, value: &str) -> Result<Vec<MemberAddress>, String> {
            value
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| MemberAddress::parse(s).map_err(|e| format!("{key}: {s:?}: {e}")))
                .collect()
        }
        let one_line = |v: &str| v.chars().filter(|c| !c.is_control()).collect::<String>();
        match key {
            "subscription" => {
                self.subscription = pick(
                    key,
                    value,
                    &[
                        ("open", SubscriptionPolicy::Open),
                        ("approve", SubscriptionPolicy::Approve),
                        ("closed", SubscriptionPolicy::Closed),
                    ],
                )?
            }
            "posting" => {
                self.posting = pick(
                    key,
                    value,
                    &[
                        ("open", PostingPolicy::Open),
                        ("members", PostingPolicy::MembersOnly),
                        ("moderated", PostingPolicy::Moderated),
                        ("announce", PostingPolicy::Announce),
                    ],
                )?
            }
            "nonmember" => {
                self.nonmember = pick(
                    key,
                    value,
                    &[
                        ("hold", NonMemberAction::Hold),
                        ("reject", NonMemberAction::Reject),
                        ("discard", NonMemberAction::Discard),
                    ],
                )?
            }
            "dmarc" => {
                self.dmarc = pick(
                    key,
                    value,
                    &[
                        ("off", DmarcMode::Off),
                        ("munge", DmarcMode::Munge),
                        ("always", DmarcMode::Always),
                    ],
                )?
            }
            "always_munge" => {
                self.always_munge = value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            }
            "subject_prefix" => self.subject_prefix = one_line(value),
            // A footer may span lines: written as `\n` in the value.
            "footer" => self.footer = one_line(&value.replace("\\n", "\u{1}")).replace('\u{1}', "\n"),
            "owners" => self.owners = addresses(key, value)?,
            "moderators" => self.moderators = addresses(key, value)?,
            "digest_size" => {
                self.digest_size = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| format!("{key}: expected a number from 1 to 1000"))?
            }
            "bounce_threshold" => {
                self.bounce_threshold = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("{key}: expected a number from 1 to 100"))?
            }
            "archive" => {
                self.archive = pick(
                    key,
                    value,
                    &[
                        ("public", ArchiveVisibility::Public),
                        ("noindex", ArchiveVisibility::NoIndex),
                        ("private", ArchiveVisibility::Private),
                    ],
                )?
            }
            "language" => {
                self.language = Language::parse(value).ok_or_else(|| {
                    let names: Vec<&str> = Language::ALL.iter().map(|l| l.name()).collect();
                    format!("{key}: {value:?} is not one of {}", names.join(", "))
                })?
            }
            _ => {
                return Err(format!(
                    "unknown list setting {key:?} (subscription, posting, nonmember, dmarc, always_munge, \
                     subject_prefix, footer, owners, moderators, digest_size, bounce_threshold, archive, language)"
                ))
            }
        }
        Ok(())
    }
}

/// How a member receives list mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every post, as it arrives.
    #[default]
    Each,
    /// A MIME digest (RFC 2046 multipart/digest).
    Digest,
    /// A plain-text digest (RFC 1153).
    PlainDigest,
    /// No mail (reads the archive).
    None,
}

impl Delivery {
    pub fn parse(s: &str) -> Option<Delivery> {
        Some(match s {
            "each" | "" => Delivery::Each,
            "digest" | "mime" => Delivery::Digest,
            "plain" | "plain_digest" => Delivery::PlainDigest,
            "none" | "nomail" => Delivery::None,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Delivery::Each => "each",
            Delivery::Digest => "digest",
            Delivery::PlainDigest => "plain",
            Delivery::None => "none",
        }
    }
}

/// How a member came to be on the list (kept for reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinedVia {
    Email,
    Web,
    Cli,
}

/// One member of one list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub address: MemberAddress,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub delivery: Delivery,
    /// Receive a copy of one's own posts.
    #[serde(default = "yes")]
    pub receive_own: bool,
    /// Posts by this member are held for moderation.
    #[serde(default)]
    pub moderated: bool,
    /// Unix seconds.
    pub joined_at: i64,
    pub joined_via: JoinedVia,
    /// Opaque token for one-click unsubscribe (RFC 8058); never derived from the address.
    pub unsub_token: String,
    /// Bounce score in tenths (a hard bounce adds 10, a soft one 5).
    #[serde(default)]
    pub bounce_score: u32,
    /// Unix seconds of the last counted bounce (a day counts once, as in Mailman).
    #[serde(default)]
    pub last_bounce: i64,
    /// Set when delivery was disabled, with the reason.
    #[serde(default)]
    pub disabled: Option<String>,
}

fn yes() -> bool {
    true
}

impl Member {
    /// True when this member should get `post` individually.
    pub fn gets_post_from(&self, author: Option<&MemberAddress>) -> bool {
        self.delivery == Delivery::Each
            && self.disabled.is_none()
            && (self.receive_own || author != Some(&self.address))
    }

    pub fn gets_digest(&self) -> bool {
        matches!(self.delivery, Delivery::Digest | Delivery::PlainDigest) && self.disabled.is_none()
    }
}

/// Who sent a post, as far as the list is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// An owner or moderator.
    Moderator,
    /// A member; `moderated` when their moderation flag is set.
    Member {
        moderated: bool,
    },
    NonMember,
}

/// What the list does with a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostDecision {
    /// Archive and deliver.
    Distribute,
    /// Keep in the moderation queue, with the reason shown to moderators.
    Hold(String),
    /// Refuse in the SMTP session with this text.
    Reject(String),
    /// Accept and drop silently.
    Discard,
}

/// The posting rule: settings and sender → decision.
pub fn decide(settings: &ListSettings, sender: Sender) -> PostDecision {
    let nonmember = |why: &str| match settings.nonmember {
        NonMemberAction::Hold => PostDecision::Hold(why.to_string()),
        NonMemberAction::Reject => PostDecision::Reject(why.to_string()),
        NonMemberAction::Discard => PostDecision::Discard,
    };
    match (settings.posting, sender) {
        (_, Sender::Moderator) => PostDecision::Distribute,
        (PostingPolicy::Announce, _) => {
            nonmember("only the list's owners and moderators may post to this announce list")
        }
        (_, Sender::Member { moderated: true }) => PostDecision::Hold("the author's posts are moderated".into()),
        (PostingPolicy::Moderated, _) => PostDecision::Hold("every post to this list is moderated".into()),
        (PostingPolicy::Open, _) => PostDecision::Distribute,
        (PostingPolicy::MembersOnly, Sender::Member { .. }) => PostDecision::Distribute,
        (PostingPolicy::MembersOnly, Sender::NonMember) => nonmember("the author is not a member of this list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posting_rule_table() {
        use PostDecision::*;
        let member = Sender::Member { moderated: false };
        let modded = Sender::Member { moderated: true };
        type Case = (PostingPolicy, NonMemberAction, Sender, fn(&PostDecision) -> bool);
        let cases: &[Case] = &[
            (PostingPolicy::Open, NonMemberAction::Hold, Sender::NonMember, |d| {
                *d == Distribute
            }),
            (PostingPolicy::Open, NonMemberAction::Hold, modded, |d| {
                matches!(d, Hold(_))
            }),
            (PostingPolicy::MembersOnly, NonMemberAction::Hold, member, |d| {
                *d == Distribute
            }),
            (
                PostingPolicy::MembersOnly,
                NonMemberAction::Hold,
                Sender::NonMember,
                |d| matches!(d, Hold(_)),
            ),
            (
                PostingPolicy::MembersOnly,
                NonMemberAction::Reject,
                Sender::NonMember,
                |d| matches!(d, Reject(_)),
            ),
            (
                PostingPolicy::MembersOnly,
                NonMemberAction::Discard,
                Sender::NonMember,
                |d| *d == Discard,
            ),
            (PostingPolicy::Moderated, NonMemberAction::Discard, member, |d| {
                matches!(d, Hold(_))
            }),
            (
                PostingPolicy::Moderated,
                NonMemberAction::Hold,
                Sender::Moderator,
                |d| *d == Distribute,
            ),
            (PostingPolicy::Announce, NonMemberAction::Reject, member, |d| {
                matches!(d, Reject(_))
            }),
            (PostingPolicy::Announce, NonMemberAction::Hold, Sender::Moderator, |d| {
                *d == Distribute
            }),
        ];
        for (posting, nonmember, sender, ok) in cases {
            let s = ListSettings {
                posting: *posting,
                nonmember: *nonmember,
                ..ListSettings::default()
            };
            let d = decide(&s, *sender);
            assert!(ok(&d), "{posting:?}/{nonmember:?}/{sender:?} gave {d:?}");
        }
    }

    #[test]
    fn settings_parse_and_refuse() {
        let mut s = ListSettings::default();
        s.set("posting", "announce").expect("valid");
        assert_eq!(s.posting, PostingPolicy::Announce);
        s.set("owners", "a@x.org, b@y.org").expect("valid");
        assert_eq!(s.owners.len(), 2);
        assert!(s.set("posting", "everyone").is_err());
        assert!(s.set("owners", "not an address").is_err());
        assert!(s.set("colour", "red").is_err());
        s.set("subject_prefix", "[gov]\r\nBcc: x@y").expect("valid");
        assert!(!s.subject_prefix.contains('\n'));
    }

    #[test]
    fn delivery_choices() {
        let m = Member {
            address: MemberAddress::parse("a@x.org").expect("valid"),
            name: String::new(),
            delivery: Delivery::Each,
            receive_own: false,
            moderated: false,
            joined_at: 0,
            joined_via: JoinedVia::Cli,
            unsub_token: "t".into(),
            bounce_score: 0,
            last_bounce: 0,
            disabled: None,
        };
        assert!(m.gets_post_from(None));
        assert!(!m.gets_post_from(Some(&m.address)));
        assert!(!m.gets_digest());
        let d = Member {
            delivery: Delivery::Digest,
            ..m.clone()
        };
        assert!(!d.gets_post_from(None) && d.gets_digest());
        let off = Member {
            disabled: Some("bounces".into()),
            ..m
        };
        assert!(!off.gets_post_from(None));
    }
}
