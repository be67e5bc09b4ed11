//! The list engine: membership with double opt-in, the moderation queue, commands by
//! e-mail, owner mail, bounces and digests.
//!
//! Data flow: the SMTP ingress and the committer put mail for command addresses in the
//! store's inbox and held posts in the moderation queue; [`Engine::tick`] turns them into
//! state changes and notices. Every step is a list of [`Write`]s applied in one durable
//! transaction, so a crash repeats a step at worst, never half-does it. Mail the engine
//! sends is a `Notice` or `Forward` job for the fan-out worker; the engine never talks SMTP.
//!
//! No backscatter: the engine never answers mail that is auto-submitted (RFC 3834) or that
//! carries our own `X-Loop`, and never tells non-members about discarded posts.

pub mod bounce;
pub mod digest;
pub mod notice;
pub mod token;

use notice::{Auto, Notice};
use plenary_core::list::{Delivery, JoinedVia, Member, SubscriptionPolicy};
use plenary_core::meta::Fallback;
use plenary_core::{ListAddress, ListId, MemberAddress, MessageMeta, RecipientKind};
use plenary_store::{
    FanoutJob, HeldPost, IngestRequest, IngestTarget, JobKind, ListRecord, LogEntry, Pending, PendingAction,
    PostHandling, Store, StoreError, TargetOutcome, Write,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Engine settings (from the `[list]` section of the config).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Public base URL of the web archive, e.g. `https://lists.example.org` (no trailing /).
    pub base_url: String,
    /// How long confirmation tokens work.
    pub token_ttl: Duration,
    /// Confirmation mails per address per hour.
    pub confirm_per_address: usize,
    /// Subscription requests per client IP per hour (web form).
    pub confirm_per_ip: usize,
    /// A digest goes out at least this often when posts wait.
    pub digest_interval: Duration,
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            base_url: "http://127.0.0.1:8080".into(),
            token_ttl: Duration::from_secs(3 * 86_400),
            confirm_per_address: 3,
            confirm_per_ip: 10,
            digest_interval: Duration::from_secs(86_400),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no list with the address {0}")]
    NoList(String),
    #[error("{0}")]
    Invalid(String),
    #[error("this list does not accept subscriptions; ask its owners")]
    Closed,
    #[error("too many requests; try again later")]
    RateLimited,
    #[error("this link or token is unknown, used or expired")]
    BadToken,
    #[error("only the list's moderators may do this")]
    NotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a moderator decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModAction {
    Approve,
    Reject(String),
    Discard,
}

impl ModAction {
    /// Read a moderator's reply: the first line that is not quoted or empty.
    pub fn from_reply(text: &str) -> Option<ModAction> {
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('>') {
                continue;
            }
            let lower = l.to_ascii_lowercase();
            let (word, rest) = lower.split_once(char::is_whitespace).unwrap_or((&lower, ""));
            return match word.trim_end_matches([':', '.', ',']) {
                "approve" | "approved" | "accept" => Some(ModAction::Approve),
                "discard" => Some(ModAction::Discard),
                "reject" => {
                    let start = l.len() - rest.len();
                    Some(ModAction::Reject(l[start..].trim().to_string()))
                }
                _ => None,
            };
        }
        None
    }

    fn name(&self) -> &'static str {
        match self {
            ModAction::Approve => "approve",
            ModAction::Reject(_) => "reject",
            ModAction::Discard => "discard",
        }
    }
}

/// What happened to a subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A confirmation mail is on its way.
    ConfirmationSent,
    /// Already a member (for leave: not a member); nothing was sent.
    NothingToDo,
}

/// What a confirmed token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    Subscribed(MemberAddress),
    AwaitingApproval(MemberAddress),
    Unsubscribed(MemberAddress),
    Moderated(ModAction),
}

/// The list engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    settings: Arc<EngineSettings>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Engine {
    pub fn new(store: Store, settings: EngineSettings) -> Engine {
        Engine {
            store,
            settings: Arc::new(settings),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    fn list(&self, address: &str) -> Result<ListRecord, EngineError> {
        self.store
            .list(address)?
            .ok_or_else(|| EngineError::NoList(address.to_string()))
    }

    fn list_by_id(&self, id: ListId) -> Result<ListRecord, EngineError> {
        self.store
            .list_by_id(id)?
            .ok_or_else(|| EngineError::NoList(format!("#{}", id.0)))
    }

    /// Confirmation-mail rate limit: at most `max` per `key` per hour, kept in the store
    /// so that a restart does not reset it. A store error refuses (no mail).
    fn limit(&self, key: String, max: usize) -> bool {
        match self.store.rate_hit(&key, max, 3600, now()) {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(error = %e, "rate limit check failed; refusing");
                false
            }
        }
    }

    /// A notice job for `to`.
    fn notice_job(&self, list: &ListRecord, to: &[MemberAddress], raw: String) -> Result<FanoutJob, EngineError> {
        Ok(FanoutJob {
            id: self.store.new_id()?,
            list: list.id,
            what: JobKind::Notice { to: to.to_vec(), raw },
            created: now(),
            cursor: None,
            walked: false,
            delivered: 0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn notice(
        &self,
        list: &ListRecord,
        to: &MemberAddress,
        subject: &str,
        body: &str,
        reply_to: Option<String>,
        in_reply_to: Option<&str>,
        auto: Auto,
    ) -> Result<Write, EngineError> {
        let raw = notice::compose(&Notice {
            list: &list.address,
            list_name: &list.name,
            to,
            subject,
            body,
            reply_to,
            in_reply_to,
            auto,
        });
        Ok(Write::PutJob(self.notice_job(list, std::slice::from_ref(to), raw)?))
    }

    fn log(list: &ListRecord, actor: &str, action: &str, subject: &str, reason: &str) -> Write {
        Write::Log(LogEntry {
            at: now(),
            list: list.id,
            actor: actor.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            reason: reason.to_string(),
        })
    }

    /// A pending action that expires after `ttl_multiple` times the token lifetime.
    fn pending(&self, action: PendingAction, ttl_multiple: i64) -> Pending {
        let t = now();
        Pending {
            action,
            created: t,
            expires: t + ttl_multiple * self.settings.token_ttl.as_secs() as i64,
        }
    }

    fn base(&self) -> &str {
        self.settings.base_url.trim_end_matches('/')
    }

    /// Ask to join: sends a confirmation (double opt-in). `ip` is the web client, if any.
    pub fn request_subscribe(
        &self,
        list_addr: &str,
        address: &str,
        name: &str,
        delivery: Delivery,
        via: JoinedVia,
        ip: Option<IpAddr>,
    ) -> Result<Requested, EngineError> {
        let list = self.list(list_addr)?;
        let addr = MemberAddress::parse(address).map_err(|e| EngineError::Invalid(format!("{address:?}: {e}")))?;
        if list.settings.subscription == SubscriptionPolicy::Closed {
            return Err(EngineError::Closed);
        }
        if let Some(ip) = ip {
            if !self.limit(format!("ip:{ip}"), self.settings.confirm_per_ip) {
                return Err(EngineError::RateLimited);
            }
        }
        if self.store.member(list.id, &addr)?.is_some() {
            return Ok(Requested::NothingToDo);
        }
        if !self.limit(format!("addr:{addr}"), self.settings.confirm_per_address) {
            return Err(EngineError::RateLimited);
        }
        let tok = token::new_token();
        let pending = self.pending(
            PendingAction::Subscribe {
                list: list.id,
                address: addr.clone(),
                name: notice::header_text(name, 100),
                delivery,
                via,
            },
            1,
        );
        let body = format!(
            "Someone (hopefully you) asked to subscribe {addr} to the mailing list {list}.\n\n\
             To confirm, reply to this message (the reply goes to {reply}),\n\
             or open this page and press the button:\n\n  {base}/confirm/{tok}\n\n\
             If you did not ask for this, ignore this message: nothing will happen\n\
             and the link stops working in {days} days.\n",
            list = list.address,
            reply = list.address.confirm(&tok),
            base = self.base(),
            days = self.settings.token_ttl.as_secs().div_ceil(86_400),
        );
        let w = self.notice(
            &list,
            &addr,
            &format!("Confirm your subscription to {} [{tok}]", list.address),
            &body,
            Some(list.address.confirm(&tok)),
            None,
            Auto::Replied,
        )?;
        self.store.apply(vec![Write::PutToken(tok, pending), w])?;
        Ok(Requested::ConfirmationSent)
    }

    /// A member asks to read a members-only archive on the web: mail them a single-use link.
    /// A non-member gets the same answer and no mail (the form does not reveal membership).
    pub fn request_access(&self, list_addr: &str, address: &str, ip: Option<IpAddr>) -> Result<Requested, EngineError> {
        let list = self.list(list_addr)?;
        let addr = MemberAddress::parse(address).map_err(|e| EngineError::Invalid(format!("{address:?}: {e}")))?;
        if let Some(ip) = ip {
            if !self.limit(format!("ip:{ip}"), self.settings.confirm_per_ip) {
                return Err(EngineError::RateLimited);
            }
        }
        if self.store.member(list.id, &addr)?.is_none() {
            return Ok(Requested::NothingToDo);
        }
        if !self.limit(format!("addr:{addr}"), self.settings.confirm_per_address) {
            return Err(EngineError::RateLimited);
        }
        let tok = token::new_token();
        let pending = self.pending(
            PendingAction::ArchiveAccess {
                list: list.id,
                address: addr.clone(),
            },
            1,
        );
        let body = format!(
            "Someone (hopefully you) asked to read the archive of the mailing list {list},\n\
             which only its members may read.\n\n\
             Open this page and press the button to read it in that browser:\n\n  {base}/access/{tok}\n\n\
             If you did not ask for this, ignore this message: nothing will happen\n\
             and the link stops working in {days} days.\n",
            list = list.address,
            base = self.base(),
            days = self.settings.token_ttl.as_secs().div_ceil(86_400),
        );
        let w = self.notice(
            &list,
            &addr,
            &format!("Your link to the archive of {}", list.address),
            &body,
            None,
            None,
            Auto::Generated,
        )?;
        self.store.apply(vec![Write::PutToken(tok, pending), w])?;
        Ok(Requested::ConfirmationSent)
    }

    /// Use an archive-access token (once): the list and the member it was sent to, who must
    /// still be a member.
    pub fn redeem_access(&self, tok: &str) -> Result<(ListRecord, MemberAddress), EngineError> {
        let (list, action) = self.describe_token(tok)?;
        let PendingAction::ArchiveAccess { address, .. } = action else {
            return Err(EngineError::BadToken);
        };
        self.store.apply(vec![Write::RemoveToken(tok.to_string())])?;
        if self.store.member(list.id, &address)?.is_none() {
            return Err(EngineError::BadToken);
        }
        Ok((list, address))
    }

    /// Ask to leave: sends a confirmation to the member.
    pub fn request_unsubscribe(
        &self,
        list_addr: &str,
        address: &str,
        ip: Option<IpAddr>,
    ) -> Result<Requested, EngineError> {
        let list = self.list(list_addr)?;
        let addr = MemberAddress::parse(address).map_err(|e| EngineError::Invalid(format!("{address:?}: {e}")))?;
        if let Some(ip) = ip {
            if !self.limit(format!("ip:{ip}"), self.settings.confirm_per_ip) {
                return Err(EngineError::RateLimited);
            }
        }
        if self.store.member(list.id, &addr)?.is_none() {
            return Ok(Requested::NothingToDo);
        }
        if !self.limit(format!("addr:{addr}"), self.settings.confirm_per_address) {
            return Err(EngineError::RateLimited);
        }
        let tok = token::new_token();
        let pending = self.pending(
            PendingAction::Unsubscribe {
                list: list.id,
                address: addr.clone(),
            },
            1,
        );
        let body = format!(
            "Someone (hopefully you) asked to unsubscribe {addr} from {list}.\n\n\
             To confirm, reply to this message, or open this page and press the button:\n\n  {base}/confirm/{tok}\n\n\
             If you did not ask for this, ignore this message.\n",
            list = list.address,
            base = self.base(),
        );
        let w = self.notice(
            &list,
            &addr,
            &format!("Confirm leaving {} [{tok}]", list.address),
            &body,
            Some(list.address.confirm(&tok)),
            None,
            Auto::Replied,
        )?;
        self.store.apply(vec![Write::PutToken(tok, pending), w])?;
        Ok(Requested::ConfirmationSent)
    }

    /// Describe what a token would do (the web confirm page, shown on GET).
    pub fn describe_token(&self, tok: &str) -> Result<(ListRecord, PendingAction), EngineError> {
        if !token::plausible(tok) {
            return Err(EngineError::BadToken);
        }
        let p = self.store.token(tok)?.ok_or(EngineError::BadToken)?;
        if p.expires < now() {
            return Err(EngineError::BadToken);
        }
        let list = match &p.action {
            PendingAction::Subscribe { list, .. }
            | PendingAction::ApproveSubscription { list, .. }
            | PendingAction::Unsubscribe { list, .. }
            | PendingAction::Moderate { list, .. }
            | PendingAction::ArchiveAccess { list, .. } => self.list_by_id(*list)?,
        };
        Ok((list, p.action))
    }

    /// Carry out a token. `from` is the sender of a reply (None for the web), `reply_text`
    /// its body (a moderator's decision).
    pub async fn confirm(
        &self,
        tok: &str,
        from: Option<&MemberAddress>,
        reply_text: &str,
    ) -> Result<Confirmed, EngineError> {
        let (list, action) = self.describe_token(tok)?;
        let actor = from.map(|a| a.to_string()).unwrap_or_else(|| "web".into());
        match action {
            // Archive access is used only through its own web page, never by a reply.
            PendingAction::ArchiveAccess { .. } => Err(EngineError::BadToken),
            PendingAction::Subscribe {
                address,
                name,
                delivery,
                via,
                ..
            } => {
                if list.settings.subscription == SubscriptionPolicy::Approve {
                    let owners = list.settings.owners.clone();
                    let approve_tok = token::new_token();
                    let mut writes = vec![
                        Write::RemoveToken(tok.to_string()),
                        Write::PutToken(
                            approve_tok.clone(),
                            self.pending(
                                PendingAction::ApproveSubscription {
                                    list: list.id,
                                    address: address.clone(),
                                    name,
                                    delivery,
                                    via,
                                },
                                4,
                            ),
                        ),
                        Self::log(&list, &actor, "confirm", address.as_str(), "awaiting owner approval"),
                    ];
                    let body = format!(
                        "{address} confirmed a request to join {list}, which needs an owner's approval.\n\n\
                         To approve, reply to this message, or open {base}/confirm/{approve_tok}\n\
                         and press the button, or run: plenary member add {list} {address}\n",
                        list = list.address,
                        base = self.base(),
                    );
                    for o in &owners {
                        writes.push(self.notice(
                            &list,
                            o,
                            &format!("{}: subscription of {address} awaits approval", list.address),
                            &body,
                            Some(list.address.confirm(&approve_tok)),
                            None,
                            Auto::Generated,
                        )?);
                    }
                    self.store.apply(writes)?;
                    return Ok(Confirmed::AwaitingApproval(address));
                }
                let mut writes = vec![Write::RemoveToken(tok.to_string())];
                writes.extend(self.add_member_writes(&list, address.clone(), &name, delivery, via, &actor, true)?);
                self.store.apply(writes)?;
                Ok(Confirmed::Subscribed(address))
            }
            PendingAction::ApproveSubscription {
                address,
                name,
                delivery,
                via,
                ..
            } => {
                if let Some(f) = from {
                    if !list.settings.is_owner(f) {
                        return Err(EngineError::NotAllowed);
                    }
                }
                let mut writes = vec![Write::RemoveToken(tok.to_string())];
                writes.extend(self.add_member_writes(&list, address.clone(), &name, delivery, via, &actor, true)?);
                self.store.apply(writes)?;
                Ok(Confirmed::Subscribed(address))
            }
            PendingAction::Unsubscribe { address, .. } => {
                let mut writes = vec![Write::RemoveToken(tok.to_string())];
                writes.extend(self.remove_member_writes(&list, &address, &actor, true)?);
                self.store.apply(writes)?;
                Ok(Confirmed::Unsubscribed(address))
            }
            PendingAction::Moderate { held, .. } => {
                // Only by a moderator's reply (the web moderation UI comes later).
                let Some(f) = from else {
                    return Err(EngineError::NotAllowed);
                };
                if !list.settings.is_moderator(f) {
                    return Err(EngineError::NotAllowed);
                }
                let action = ModAction::from_reply(reply_text).ok_or_else(|| {
                    EngineError::Invalid("the reply must start with approve, reject or discard".into())
                })?;
                self.moderate(held, action.clone(), f.as_str()).await?;
                self.store.apply(vec![Write::RemoveToken(tok.to_string())])?;
                Ok(Confirmed::Moderated(action))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_member_writes(
        &self,
        list: &ListRecord,
        address: MemberAddress,
        name: &str,
        delivery: Delivery,
        via: JoinedVia,
        actor: &str,
        welcome: bool,
    ) -> Result<Vec<Write>, EngineError> {
        let member = Member {
            address: address.clone(),
            name: name.to_string(),
            delivery,
            receive_own: true,
            moderated: false,
            joined_at: now(),
            joined_via: via,
            unsub_token: token::new_token(),
            bounce_score: 0,
            last_bounce: 0,
            disabled: None,
        };
        let mut writes = vec![
            Write::PutMember(list.id, member.clone()),
            Self::log(list, actor, "subscribe", address.as_str(), ""),
        ];
        if welcome {
            let body = format!(
                "Welcome to {list}{name}.\n\n\
                 To post, write to {list}.\n\
                 The archive is at {base}/lists/{list}/\n\
                 To leave, send a message to {leave} or use the unsubscribe link in any list message.\n",
                list = list.address,
                name = if list.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", list.name)
                },
                base = self.base(),
                leave = list.address.sub("leave"),
            );
            writes.push(self.notice(
                list,
                &address,
                &format!("Welcome to {}", list.address),
                &body,
                None,
                None,
                Auto::Generated,
            )?);
        }
        Ok(writes)
    }

    fn remove_member_writes(
        &self,
        list: &ListRecord,
        address: &MemberAddress,
        actor: &str,
        goodbye: bool,
    ) -> Result<Vec<Write>, EngineError> {
        let mut writes = vec![
            Write::RemoveMember(list.id, address.clone()),
            Self::log(list, actor, "unsubscribe", address.as_str(), ""),
        ];
        if goodbye {
            writes.push(self.notice(
                list,
                address,
                &format!("You have left {}", list.address),
                &format!(
                    "{address} is no longer a member of {list} and will get no more mail from it.\n",
                    list = list.address
                ),
                None,
                None,
                Auto::Generated,
            )?);
        }
        Ok(writes)
    }

    /// RFC 8058 one-click unsubscribe (POST with the per-member token).
    pub fn one_click_unsubscribe(&self, tok: &str) -> Result<(ListRecord, MemberAddress), EngineError> {
        if !token::plausible(tok) {
            return Err(EngineError::BadToken);
        }
        let (list_id, member) = self.store.member_by_unsub(tok)?.ok_or(EngineError::BadToken)?;
        let list = self.list_by_id(list_id)?;
        let writes = self.remove_member_writes(&list, &member.address, "one-click", false)?;
        self.store.apply(writes)?;
        Ok((list, member.address))
    }

    /// The member a one-click token names (for the GET confirmation page).
    pub fn one_click_member(&self, tok: &str) -> Result<(ListRecord, MemberAddress), EngineError> {
        if !token::plausible(tok) {
            return Err(EngineError::BadToken);
        }
        let (list_id, member) = self.store.member_by_unsub(tok)?.ok_or(EngineError::BadToken)?;
        Ok((self.list_by_id(list_id)?, member.address))
    }

    /// Owners add members in bulk (CLI). Returns (added, already members).
    pub fn add_members(
        &self,
        list_addr: &str,
        rows: Vec<(MemberAddress, String, Delivery)>,
        welcome: bool,
    ) -> Result<(usize, usize), EngineError> {
        let list = self.list(list_addr)?;
        let (mut added, mut existing) = (0, 0);
        let mut writes = Vec::new();
        for (addr, name, delivery) in rows {
            if self.store.member(list.id, &addr)?.is_some() {
                existing += 1;
                continue;
            }
            writes.extend(self.add_member_writes(&list, addr, &name, delivery, JoinedVia::Cli, "cli", welcome)?);
            added += 1;
            if writes.len() >= 3000 {
                self.store.apply_with(std::mem::take(&mut writes), false)?;
            }
        }
        self.store.apply(writes)?;
        Ok((added, existing))
    }

    /// Owners remove members in bulk (CLI). Returns (removed, not members).
    pub fn remove_members(&self, list_addr: &str, addrs: Vec<MemberAddress>) -> Result<(usize, usize), EngineError> {
        let list = self.list(list_addr)?;
        let (mut removed, mut missing) = (0, 0);
        let mut writes = Vec::new();
        for a in addrs {
            if self.store.member(list.id, &a)?.is_none() {
                missing += 1;
                continue;
            }
            writes.extend(self.remove_member_writes(&list, &a, "cli", false)?);
            removed += 1;
        }
        self.store.apply(writes)?;
        Ok((removed, missing))
    }

    /// Change one member's options (CLI): `delivery`, `moderated`, `receive_own`, `enabled`.
    pub fn set_member_option(
        &self,
        list_addr: &str,
        address: &str,
        key: &str,
        value: &str,
    ) -> Result<Member, EngineError> {
        let list = self.list(list_addr)?;
        let addr = MemberAddress::parse(address).map_err(|e| EngineError::Invalid(format!("{address:?}: {e}")))?;
        let mut m = self
            .store
            .member(list.id, &addr)?
            .ok_or_else(|| EngineError::Invalid(format!("{addr} is not a member of {}", list.address)))?;
        let yes = |v: &str| matches!(v, "yes" | "true" | "on" | "1");
        match key {
            "delivery" => {
                m.delivery = Delivery::parse(value)
                    .ok_or_else(|| EngineError::Invalid("delivery is each, digest, plain or none".into()))?
            }
            "moderated" => m.moderated = yes(value),
            "receive_own" => m.receive_own = yes(value),
            "enabled" => {
                if yes(value) {
                    m.disabled = None;
                    m.bounce_score = 0;
                } else {
                    m.disabled = Some("by an owner".into());
                }
            }
            _ => {
                return Err(EngineError::Invalid(format!(
                    "unknown member option {key:?} (delivery, moderated, receive_own, enabled)"
                )))
            }
        }
        self.store.apply(vec![
            Write::PutMember(list.id, m.clone()),
            Self::log(&list, "cli", &format!("set {key}={value}"), addr.as_str(), ""),
        ])?;
        Ok(m)
    }

    /// Approve, reject or discard a held post.
    pub async fn moderate(&self, held_id: u64, action: ModAction, actor: &str) -> Result<String, EngineError> {
        let held = self
            .store
            .held_post(held_id)?
            .ok_or_else(|| EngineError::Invalid(format!("no held post {held_id}")))?;
        let list = self.list_by_id(held.list)?;
        let mut writes = Vec::new();
        let outcome = match &action {
            ModAction::Approve => {
                let raw = self.store.held_raw(&held)?;
                let req = IngestRequest {
                    raw,
                    meta: held.meta.clone(),
                    origin: held.origin,
                    envelope_from: held.envelope_from.clone(),
                    targets: vec![IngestTarget {
                        list: list.id,
                        kind: RecipientKind::Post,
                    }],
                    received_at: held.received_at,
                    handling: PostHandling::Approved,
                };
                match self.store.ingest(req).await?.first() {
                    Some(TargetOutcome::Archived(k)) => format!("approved; archived as {k} and sent to the list"),
                    Some(TargetOutcome::Duplicate(k)) => format!("approved; already archived as {k}"),
                    _ => "approved".to_string(),
                }
            }
            ModAction::Reject(reason) => {
                if let Some(author) = poster(&held) {
                    let body = format!(
                        "Your message to {list} with the subject\n\n  {subject}\n\n\
                         was rejected by the list's moderators.{why}\n",
                        list = list.address,
                        subject = held.meta.subject,
                        why = if reason.is_empty() {
                            String::new()
                        } else {
                            format!("\n\nReason given: {reason}")
                        },
                    );
                    writes.push(self.notice(
                        &list,
                        &author,
                        &format!("Your post to {} was rejected", list.address),
                        &body,
                        None,
                        Some(&held.meta.message_id),
                        Auto::Generated,
                    )?);
                }
                "rejected; the author was told".to_string()
            }
            ModAction::Discard => "discarded".to_string(),
        };
        let reason = match &action {
            ModAction::Reject(r) => r.clone(),
            _ => String::new(),
        };
        writes.push(Write::RemoveHeld(held_id, true));
        writes.push(Self::log(&list, actor, action.name(), &held.meta.message_id, &reason));
        self.store.apply(writes)?;
        Ok(outcome)
    }

    /// Tell moderators about newly held posts.
    async fn notify_held(&self) -> Result<usize, EngineError> {
        let mut n = 0;
        // Only durable posts (plenary-store's `durable.rs`).
        for mut h in self.store.read_durable(|s| s.held(None)).await? {
            if h.notified {
                continue;
            }
            let list = self.list_by_id(h.list)?;
            let mut mods: Vec<MemberAddress> = list.settings.owners.clone();
            for m in &list.settings.moderators {
                if !mods.contains(m) {
                    mods.push(m.clone());
                }
            }
            let tok = token::new_token();
            let mut writes = Vec::new();
            if mods.is_empty() {
                tracing::warn!(list = %list.address, held = h.id, "post held but the list has no owners or moderators; use `plenary moderate`");
            } else {
                let raw = self.store.held_raw(&h)?;
                let excerpt = text_excerpt(&raw, 40);
                let body = format!(
                    "A post to {list} is held for moderation.\n\n  Reason:  {reason}\n  From:    {from}\n  Subject: {subject}\n  Held id: {id}\n\n\
                     Reply to this message with one of these as the first line:\n\n  approve\n  reject REASON   (the reason is mailed to the author)\n  discard\n\n\
                     or run: plenary moderate approve {id}\n\n--- the post begins ---\n{excerpt}\n",
                    list = list.address,
                    reason = h.reason,
                    from = h.meta.from_addr.as_deref().unwrap_or(&h.envelope_from),
                    subject = h.meta.subject,
                    id = h.id,
                );
                let raw_notice_subject = format!("{}: held post: {}", list.address, h.meta.subject);
                writes.push(Write::PutToken(
                    tok.clone(),
                    self.pending(
                        PendingAction::Moderate {
                            list: list.id,
                            held: h.id,
                        },
                        4,
                    ),
                ));
                for m in &mods {
                    writes.push(self.notice(
                        &list,
                        m,
                        &raw_notice_subject,
                        &body,
                        Some(list.address.confirm(&tok)),
                        None,
                        Auto::Generated,
                    )?);
                }
            }
            h.notified = true;
            writes.push(Write::PutHeld(h));
            self.store.apply(writes)?;
            n += 1;
        }
        Ok(n)
    }

    /// Record a bounce for a member: the score rises (once per day), and past the list's
    /// threshold delivery is disabled and the member and owners are told.
    pub fn bounce_writes(
        &self,
        list: &ListRecord,
        addr: &MemberAddress,
        hard: bool,
        detail: &str,
    ) -> Result<Vec<Write>, EngineError> {
        let Some(mut m) = self.store.member(list.id, addr)? else {
            return Ok(Vec::new());
        };
        let t = now();
        if m.disabled.is_some() || (m.last_bounce / 86_400 == t / 86_400 && m.bounce_score > 0) {
            // Mailman counts at most one bounce per member per day.
            return Ok(Vec::new());
        }
        m.bounce_score += if hard { 10 } else { 5 };
        m.last_bounce = t;
        let mut writes = vec![Self::log(
            list,
            "system",
            "bounce",
            addr.as_str(),
            &format!("{detail}; score {}.{}", m.bounce_score / 10, m.bounce_score % 10),
        )];
        if m.bounce_score >= list.settings.bounce_threshold * 10 {
            m.disabled = Some("bounces".into());
            writes.push(Self::log(
                list,
                "system",
                "disable",
                addr.as_str(),
                "bounce score reached the threshold",
            ));
            let body = format!(
                "Mail from {list} to {addr} has bounced too often, so delivery to you is now disabled.\n\
                 You are still a member. Reply to the list owners at {owner} to turn delivery back on.\n",
                list = list.address,
                owner = list.address.sub("owner"),
            );
            writes.push(self.notice(
                list,
                addr,
                &format!("Delivery from {} disabled", list.address),
                &body,
                None,
                None,
                Auto::Generated,
            )?);
            for o in &list.settings.owners {
                writes.push(self.notice(
                    list,
                    o,
                    &format!("{}: delivery to {addr} disabled after bounces", list.address),
                    &format!(
                        "Delivery to {addr} was disabled: bounce score {}.\n",
                        m.bounce_score / 10
                    ),
                    None,
                    None,
                    Auto::Generated,
                )?);
            }
        }
        writes.push(Write::PutMember(list.id, m));
        Ok(writes)
    }

    /// Handle mail waiting in the inbox. Returns how many entries were handled.
    pub async fn process_inbox(&self) -> Result<usize, EngineError> {
        // Only durable mail (plenary-store's `durable.rs`): a command whose commit a crash
        // could undo must not be answered.
        let entries = self.store.read_durable(|s| s.inbox(256)).await?;
        let n = entries.len();
        for (seq, entry) in entries {
            let list = match self.store.list_by_id(entry.list)? {
                Some(l) => l,
                None => {
                    self.store.apply(vec![Write::InboxDone(seq, true)])?;
                    continue;
                }
            };
            let raw = match self.store.inbox_raw(&entry) {
                Ok(raw) => raw,
                // Unreadable bytes (damaged spool) must not stop every later command mail.
                Err(e @ plenary_store::StoreError::Corrupt { .. }) => {
                    tracing::error!(list = %list.address, error = %e, "dropping unreadable command or owner mail");
                    self.store.apply(vec![Write::InboxDone(seq, false)])?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mail = Incoming::parse(&raw, &list.address);
            let mut writes = Vec::new();
            let mut keep_blob = false;
            let sender = mail
                .from
                .clone()
                .or_else(|| MemberAddress::parse(&entry.envelope_from).ok());
            match &entry.kind {
                RecipientKind::Bounces(token) => {
                    let b = bounce::classify(&raw);
                    let who = MemberAddress::from_verp(token).or(b.recipient.clone());
                    match (b.kind, who) {
                        (bounce::BounceKind::NotABounce, _) | (_, None) => {
                            tracing::info!(list = %list.address, detail = %b.detail, "mail to the bounce address not counted");
                        }
                        (kind, Some(who)) => {
                            writes.extend(self.bounce_writes(
                                &list,
                                &who,
                                kind == bounce::BounceKind::Hard,
                                &b.detail,
                            )?);
                        }
                    }
                }
                RecipientKind::Owner => {
                    if mail.ours {
                        tracing::info!(list = %list.address, "dropping owner mail with our own X-Loop");
                    } else if list.settings.owners.is_empty() {
                        tracing::warn!(list = %list.address, "mail for the owners, but the list has none");
                    } else {
                        keep_blob = true;
                        writes.push(Write::PutJob(FanoutJob {
                            id: self.store.new_id()?,
                            list: list.id,
                            what: JobKind::Forward {
                                to: list.settings.owners.clone(),
                                raw: entry.raw,
                            },
                            created: now(),
                            cursor: None,
                            walked: false,
                            delivered: 0,
                        }));
                    }
                }
                kind if mail.automated || mail.ours => {
                    tracing::info!(list = %list.address, kind = kind.label(), "ignoring automated mail to a command address (RFC 3834)");
                }
                RecipientKind::Confirm(tok) => match sender.as_ref() {
                    Some(from) => {
                        if let Err(e) = self.confirm(tok, Some(from), &mail.text).await {
                            tracing::info!(list = %list.address, error = %e, "confirmation by reply not done");
                        }
                    }
                    None => tracing::info!(list = %list.address, "confirmation reply without a usable sender"),
                },
                RecipientKind::Join | RecipientKind::Leave | RecipientKind::Request => {
                    let cmd = match &entry.kind {
                        RecipientKind::Join => Some(Command::Subscribe(Delivery::Each)),
                        RecipientKind::Leave => Some(Command::Unsubscribe),
                        _ => Command::find(&mail.subject, &mail.text),
                    };
                    if let Some(from) = sender.as_ref() {
                        let r = match cmd {
                            Some(Command::Subscribe(d)) => self
                                .request_subscribe(
                                    list.address.as_str(),
                                    from.as_str(),
                                    &mail.name,
                                    d,
                                    JoinedVia::Email,
                                    None,
                                )
                                .map(|_| ()),
                            Some(Command::Unsubscribe) => self
                                .request_unsubscribe(list.address.as_str(), from.as_str(), None)
                                .map(|_| ()),
                            Some(Command::Confirm(tok)) => self.confirm(&tok, Some(from), &mail.text).await.map(|_| ()),
                            Some(Command::Help) | None => {
                                if self.limit(format!("addr:{from}"), self.settings.confirm_per_address) {
                                    writes.push(self.notice(
                                        &list,
                                        from,
                                        &format!("Help for {}", list.address),
                                        &help_text(&list.address, self.base()),
                                        None,
                                        mail.message_id.as_deref(),
                                        Auto::Replied,
                                    )?);
                                }
                                Ok(())
                            }
                        };
                        if let Err(e) = r {
                            tracing::info!(list = %list.address, error = %e, "command by mail not done");
                        }
                    }
                }
                RecipientKind::Post => {}
            }
            writes.push(Write::InboxDone(seq, !keep_blob));
            self.store.apply(writes)?;
        }
        Ok(n)
    }

    /// Turn waiting posts into digest jobs (or, on a list where nobody takes digests, just
    /// take them): when a list has `digest_size` posts waiting, or
    /// the oldest has waited `digest_interval`, or `force` names the list.
    pub async fn make_digests(&self, force: Option<ListId>) -> Result<usize, EngineError> {
        let mut by_list: HashMap<ListId, Vec<(plenary_core::MessageKey, i64)>> = HashMap::new();
        // Only durable posts (plenary-store's `durable.rs`).
        for (k, at) in self.store.read_durable(plenary_store::Store::digest_pending).await? {
            by_list.entry(k.list).or_default().push((k, at));
        }
        let t = now();
        let mut made = 0;
        for (list_id, items) in by_list {
            let Some(list) = self.store.list_by_id(list_id)? else {
                continue;
            };
            let oldest = items.iter().map(|(_, at)| *at).min().unwrap_or(t);
            let due = force == Some(list_id)
                || items.len() >= list.settings.digest_size as usize
                || t - oldest >= self.settings.digest_interval.as_secs() as i64;
            if !due {
                continue;
            }
            let keys: Vec<_> = items.iter().map(|(k, _)| *k).collect();
            if !self.store.has_digest_member(list_id)? {
                // Nobody takes digests: the posts leave the queue as a digest job would take
                // them (one to nobody), without building and walking one. A member who
                // switches to digests later gets the posts from then on, as before: a job
                // never goes to members who joined after it was made.
                self.store.apply(vec![Write::DigestTaken(keys)])?;
                continue;
            }
            let counter = format!("digest:{}", list_id.0);
            let number = self.store.counter(&counter)? + 1;
            self.store.set_counter(&counter, number)?;
            let job = FanoutJob {
                id: self.store.new_id()?,
                list: list_id,
                what: JobKind::Digest {
                    keys: keys.clone(),
                    number,
                },
                created: t,
                cursor: None,
                walked: false,
                delivered: 0,
            };
            self.store.apply(vec![Write::DigestTaken(keys), Write::PutJob(job)])?;
            made += 1;
        }
        Ok(made)
    }

    /// One round of engine work: inbox, held notices, digests, expired tokens.
    pub async fn tick(&self) -> Result<usize, EngineError> {
        let mut n = self.process_inbox().await?;
        n += self.notify_held().await?;
        n += self.make_digests(None).await?;
        let expired = self.store.expired_tokens(now())?;
        if !expired.is_empty() {
            self.store
                .apply(expired.into_iter().map(Write::RemoveToken).collect())?;
        }
        Ok(n)
    }

    /// Run until `stop` is set: wake on new work or every second.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let wake = self.store.work_notify();
        loop {
            if *stop.borrow() {
                return;
            }
            match self.tick().await {
                Ok(_) => {}
                Err(EngineError::Store(e)) if self.store.has_failed() => {
                    tracing::error!(error = %e, "list engine stops: the store failed");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "list engine step failed; retrying"),
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // An error means the sender is gone (the daemon is giving up): stop too.
                r = stop.changed() => if r.is_err() { return },
            }
        }
    }
}

/// The author of a held post (From, else the envelope sender).
fn poster(h: &HeldPost) -> Option<MemberAddress> {
    h.meta
        .from_addr
        .as_deref()
        .and_then(|a| MemberAddress::parse(a).ok())
        .or_else(|| MemberAddress::parse(&h.envelope_from).ok())
}

fn help_text(list: &ListAddress, base: &str) -> String {
    format!(
        "This is the mailing list {list}.\n\n\
         Commands, sent to {request} in the subject or as the first line of the body:\n\n\
         \x20 subscribe          join (you will be asked to confirm)\n\
         \x20 subscribe digest   join and receive a daily digest\n\
         \x20 unsubscribe        leave\n\
         \x20 help               this message\n\n\
         Or write to {join} to join and {leave} to leave.\n\
         The archive is at {base}/lists/{list}/\n",
        request = list.sub("request"),
        join = list.sub("join"),
        leave = list.sub("leave"),
    )
}

/// A command found in a message to `LIST-request@`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Subscribe(Delivery),
    Unsubscribe,
    Help,
    Confirm(String),
}

impl Command {
    /// The subject, then the first five non-quoted body lines, as Mailman reads them.
    fn find(subject: &str, body: &str) -> Option<Command> {
        let lines = std::iter::once(subject).chain(
            body.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('>'))
                .take(5),
        );
        for line in lines {
            let lower = line.trim().to_ascii_lowercase();
            let lower = lower.trim_start_matches("re:").trim();
            let mut words = lower.split_whitespace();
            let cmd = match words.next() {
                Some("subscribe" | "join") => Command::Subscribe(
                    words
                        .find_map(|w| match w {
                            "digest" => Some(Delivery::Digest),
                            "plain" => Some(Delivery::PlainDigest),
                            "nomail" => Some(Delivery::None),
                            _ => None,
                        })
                        .unwrap_or(Delivery::Each),
                ),
                Some("unsubscribe" | "leave" | "remove") => Command::Unsubscribe,
                Some("help") => Command::Help,
                Some("confirm") => match words.next() {
                    Some(t) if token::plausible(t) => Command::Confirm(t.to_string()),
                    _ => continue,
                },
                _ => continue,
            };
            return Some(cmd);
        }
        None
    }
}

/// What the engine needs from an incoming message.
struct Incoming {
    from: Option<MemberAddress>,
    name: String,
    subject: String,
    text: String,
    message_id: Option<String>,
    /// RFC 3834 auto-submitted, or Precedence bulk/junk/list: never answered.
    automated: bool,
    /// Carries our own X-Loop or List-Id.
    ours: bool,
}

impl Incoming {
    fn parse(raw: &[u8], list: &ListAddress) -> Incoming {
        let meta = MessageMeta::extract(
            raw,
            Fallback {
                envelope_date: None,
                received_at: now(),
            },
        );
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let mut automated = false;
        let mut ours = false;
        for line in head.split("\r\n") {
            if let Some(v) = line.strip_prefix("auto-submitted:") {
                automated |= v.trim() != "no";
            }
            if let Some(v) = line.strip_prefix("precedence:") {
                automated |= matches!(v.trim(), "bulk" | "junk" | "list");
            }
            if let Some(v) = line.strip_prefix("x-loop:") {
                ours |= v.trim() == list.as_str();
            }
            if let Some(v) = line.strip_prefix("list-id:") {
                ours |= v.contains(&format!("<{}>", list.list_id()));
            }
        }
        Incoming {
            from: meta.from_addr.as_deref().and_then(|a| MemberAddress::parse(a).ok()),
            name: meta.from_name.clone().unwrap_or_default(),
            subject: meta.subject.clone(),
            text: text_excerpt(raw, 200),
            message_id: (!meta.generated_id).then(|| meta.message_id.clone()),
            automated,
            ours,
        }
    }
}

/// The first `lines` lines of a message's text, decoded (for notices and commands).
pub fn text_excerpt(raw: &[u8], lines: usize) -> String {
    let text = std::panic::catch_unwind(|| {
        mail_parser::MessageParser::default()
            .parse(raw)
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
    })
    .ok()
    .flatten()
    .unwrap_or_default();
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests;
