//! The account rules on top of any store: sign-up and login, sessions, profile and password
//! changes, admin bootstrap, and the life of API keys.

use std::sync::Arc;
use std::time::Duration;

use gateway_core::{
    ApiKeyId, ApiKeyMeta, Clock, DefaultPlans, LimitOverrides, PlanSource, Role, Scope,
    SystemClock, Tier, User, UserId, UserStatus,
};
use time::OffsetDateTime;

use crate::mail::{AccountMail, Link};
use crate::ports::Mailer;
use crate::throttle::{Admission, LoginThrottle, SharedFailures, ThrottleConfig};
use crate::token::{KeyedHasher, is_session_token, new_session_token};
use crate::{
    AdminUserUpdate, AuthError, KeyRecord, KeyStore, KeyUpdate, NewUser, ProfileUpdate,
    SessionRecord, SessionStore, UserStore, apikey, password,
};

/// Trims and lower-cases an email and checks its shape; the message is safe to show.
pub fn normalize_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && email.chars().all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
        });
    if valid { Ok(email) } else { Err(AuthError::invalid("email", "is not a valid email address")) }
}

/// Longest key name.
pub const MAX_KEY_NAME_CHARS: usize = 100;
/// Longest profile field.
pub const MAX_PROFILE_CHARS: usize = 200;

/// A key name: 1 to 100 letters, digits, spaces and `- _ . : / ( ) # @ +`. Names are labels
/// shown in dashboards and logs, so quotes, angle brackets and control characters are refused.
pub fn validate_key_name(name: &str) -> Result<String, AuthError> {
    let name = name.trim();
    let ok_len = (1..=MAX_KEY_NAME_CHARS).contains(&name.chars().count());
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || " -_.:/()#@+".contains(c));
    if ok_len && ok_chars {
        Ok(name.to_owned())
    } else {
        Err(AuthError::invalid(
            "name",
            format!(
                "must be 1 to {MAX_KEY_NAME_CHARS} letters, digits, spaces or - _ . : / ( ) # @ +"
            ),
        ))
    }
}

fn validate_profile_field(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, AuthError> {
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if value
        .as_ref()
        .is_some_and(|v| v.chars().count() > MAX_PROFILE_CHARS || v.chars().any(char::is_control))
    {
        return Err(AuthError::invalid(
            field,
            format!("must be at most {MAX_PROFILE_CHARS} printable characters"),
        ));
    }
    Ok(value)
}

/// What a new key should be.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub allowed_models: Option<Vec<String>>,
    pub expires_at: Option<OffsetDateTime>,
    pub overrides: LimitOverrides,
}

impl NewKey {
    pub fn named(name: impl Into<String>, scopes: Vec<Scope>) -> Self {
        Self {
            name: name.into(),
            scopes,
            allowed_models: None,
            expires_at: None,
            overrides: LimitOverrides::default(),
        }
    }
}

/// A key as issued by create or rotate: its metadata and the full key, shown once. `Debug`
/// hides the key.
#[derive(Clone)]
pub struct IssuedKey {
    pub meta: ApiKeyMeta,
    pub key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey").field("meta", &self.meta).finish_non_exhaustive()
    }
}

/// A new session: the token for the cookie (shown once) and its expiry.
#[derive(Clone)]
pub struct NewSession {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// Told about every change that must reach key caches (on this and other instances).
pub trait Invalidations: Send + Sync + std::fmt::Debug {
    fn key_changed(&self, id: ApiKeyId);
    fn user_changed(&self, id: UserId);
}

/// For stores nobody caches.
#[derive(Debug, Default)]
pub struct NoInvalidations;

impl Invalidations for NoInvalidations {
    fn key_changed(&self, _: ApiKeyId) {}
    fn user_changed(&self, _: UserId) {}
}

/// Settings of the account rules.
#[derive(Clone, Debug)]
pub struct AccountsConfig {
    /// bcrypt cost of passwords.
    pub password_cost: u32,
    /// bcrypt cost of API-key secrets. Keys carry about 256 random bits, so a high cost adds
    /// no security, only CPU on every cache miss.
    pub key_cost: u32,
    pub session_ttl: Duration,
    /// How long a rotated key's old secret keeps working.
    pub rotation_grace: Duration,
    pub throttle: ThrottleConfig,
    /// New accounts must open a mailed link before they can sign in.
    pub verify_email: bool,
    /// Accounts with these emails (lower case) are administrators: made so at sign-up, and by
    /// [`Accounts::promote_admins`] (`ADMIN_EMAILS` of the original product).
    pub admin_emails: Vec<String>,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            password_cost: 12,
            key_cost: 10,
            session_ttl: Duration::from_hours(24 * 7),
            rotation_grace: Duration::ZERO,
            throttle: ThrottleConfig::default(),
            verify_email: false,
            admin_emails: Vec::new(),
        }
    }
}

/// How long a password-reset link works.
pub const RESET_TTL: Duration = Duration::from_mins(30);

/// The stores `Accounts` works on.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // trait objects of stores
pub struct AuthStores {
    pub users: Arc<dyn UserStore>,
    pub keys: Arc<dyn KeyStore>,
    pub sessions: Arc<dyn SessionStore>,
}

impl AuthStores {
    /// One adapter implementing all three ports.
    pub fn from<S: UserStore + KeyStore + SessionStore + 'static>(store: Arc<S>) -> Self {
        Self { users: store.clone(), keys: store.clone(), sessions: store }
    }
}

/// Account, session and key services.
#[derive(Clone)]
pub struct Accounts {
    stores: AuthStores,
    clock: Arc<dyn Clock>,
    session_hasher: KeyedHasher,
    config: AccountsConfig,
    invalidations: Arc<dyn Invalidations>,
    /// The plans: how many keys a user may hold, and the limits a key may not exceed.
    plans: Arc<dyn PlanSource>,
    throttle: Arc<LoginThrottle>,
    shared_failures: Option<Arc<dyn SharedFailures>>,
    /// Account mail, when set up.
    mail: Option<AccountMail>,
    /// A hash checked when the email is unknown, so such logins take as long as wrong passwords.
    dummy_hash: Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Accounts {
    /// `session_secret` keys the hashes of session tokens (`JWT_SECRET`).
    pub fn new(stores: AuthStores, session_secret: &[u8], config: AccountsConfig) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            throttle: Arc::new(LoginThrottle::new(config.throttle.clone(), clock.clone())),
            stores,
            clock,
            session_hasher: KeyedHasher::new(session_secret),
            config,
            invalidations: Arc::new(NoInvalidations),
            plans: Arc::new(DefaultPlans::default()),
            dummy_hash: Arc::default(),
            shared_failures: None,
            mail: None,
        }
    }

    /// Reads the plans from `plans` (by default, the seeded ones).
    #[must_use]
    pub fn with_plans(mut self, plans: Arc<dyn PlanSource>) -> Self {
        self.plans = plans;
        self
    }

    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.throttle = Arc::new(self.make_throttle());
        self
    }

    /// Sends account mail (reset and verification links under `public_url`) through `mailer`.
    #[must_use]
    pub fn with_mail(mut self, mailer: Arc<dyn Mailer>, public_url: &str) -> Self {
        self.mail = Some(AccountMail::new(mailer, public_url));
        self
    }

    /// Counts failed logins in `shared` too (the gateway's Redis), so every instance sees them.
    #[must_use]
    pub fn with_shared_failures(mut self, shared: Arc<dyn SharedFailures>) -> Self {
        self.shared_failures = Some(shared);
        self.throttle = Arc::new(self.make_throttle());
        self
    }

    fn make_throttle(&self) -> LoginThrottle {
        let throttle = LoginThrottle::new(self.config.throttle.clone(), self.clock.clone());
        match &self.shared_failures {
            Some(shared) => throttle.with_shared(shared.clone(), self.session_hasher.clone()),
            None => throttle,
        }
    }

    #[must_use]
    pub fn with_invalidations(mut self, invalidations: Arc<dyn Invalidations>) -> Self {
        self.invalidations = invalidations;
        self
    }

    pub fn stores(&self) -> &AuthStores {
        &self.stores
    }

    // === accounts ===

    /// Makes the existing accounts of [`AccountsConfig::admin_emails`] administrators (at
    /// start); returns the emails it promoted.
    pub async fn promote_admins(&self) -> Result<Vec<String>, AuthError> {
        let mut promoted = Vec::new();
        for email in &self.config.admin_emails {
            let Some(found) = self.stores.users.find_user_by_email(email).await? else { continue };
            if found.user.role != Role::Admin {
                let update = AdminUserUpdate { role: Some(Role::Admin), ..Default::default() };
                self.stores.users.update_admin_fields(found.user.id, update).await?;
                self.invalidations.user_changed(found.user.id);
                promoted.push(email.clone());
            }
        }
        Ok(promoted)
    }

    /// Creates an admin account, or promotes an existing one and sets its password.
    pub async fn create_or_promote_admin(
        &self,
        email: &str,
        pass: &str,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        let hash = password::hash(pass, self.config.password_cost).await?;
        if let Some(existing) = self.stores.users.find_user_by_email(&email).await? {
            let user = self
                .stores
                .users
                .set_role_and_password(existing.user.id, Role::Admin, &hash)
                .await?;
            self.invalidations.user_changed(user.id);
            return Ok(user);
        }
        let new = NewUser {
            email,
            password_hash: hash,
            full_name: None,
            role: Role::Admin,
            tier: Tier::Enterprise,
            email_unverified: false,
        };
        self.stores.users.insert_user(new).await
    }

    /// Creates a user account with the default role and tier.
    pub async fn signup(
        &self,
        email: &str,
        pass: &str,
        full_name: Option<String>,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        let full_name = validate_profile_field("full_name", full_name)?;
        let password_hash = password::hash(pass, self.config.password_cost).await?;
        let role = if self.config.admin_emails.contains(&email) { Role::Admin } else { Role::User };
        let new = NewUser {
            email,
            password_hash,
            full_name,
            role,
            tier: Tier::Free,
            email_unverified: self.config.verify_email,
        };
        self.stores.users.insert_user(new).await
    }

    /// Checks a password and opens a session. Unknown emails and wrong passwords get the same
    /// answer after the same bcrypt work; repeated failures are slowed, then refused.
    pub async fn login(
        &self,
        email: &str,
        pass: &str,
        client: &str,
    ) -> Result<(User, NewSession), AuthError> {
        let email = normalize_email(email).map_err(|_| AuthError::InvalidCredentials)?;
        match self.throttle.admit(&email, client).await {
            Admission::Refuse { retry_after_secs } => {
                return Err(AuthError::Throttled { retry_after_secs });
            }
            Admission::Proceed { delay } if !delay.is_zero() => tokio::time::sleep(delay).await,
            Admission::Proceed { .. } => {}
        }
        let record = self.stores.users.find_user_by_email(&email).await?;
        let hash = match &record {
            Some(r) => r.password_hash.clone(),
            None => self.dummy_hash().await?,
        };
        let ok = password::verify(pass, &hash).await? && record.is_some();
        let Some(record) = record.filter(|_| ok) else {
            self.throttle.failed(&email, client).await;
            return Err(AuthError::InvalidCredentials);
        };
        if record.user.status == UserStatus::Deleted {
            return Err(AuthError::InvalidCredentials);
        }
        if record.user.status == UserStatus::Suspended {
            return Err(AuthError::Suspended);
        }
        if record.email_unverified {
            return Err(AuthError::EmailUnverified);
        }
        self.throttle.succeeded(&email).await;
        let session = self.open_session(record.user.id).await?;
        Ok((record.user, session))
    }

    async fn dummy_hash(&self) -> Result<String, AuthError> {
        let cost = self.config.password_cost;
        self.dummy_hash
            .get_or_try_init(
                || async move { password::hash("not a password of anyone", cost).await },
            )
            .await
            .cloned()
    }

    async fn open_session(&self, user_id: UserId) -> Result<NewSession, AuthError> {
        let token = new_session_token()?;
        let now = self.clock.now();
        let expires_at = now + self.config.session_ttl;
        self.stores
            .sessions
            .insert_session(SessionRecord {
                id: uuid::Uuid::now_v7(),
                user_id,
                token_hash: self.session_hasher.hash(token.as_bytes()).to_vec(),
                created_at: now,
                expires_at,
                revoked_at: None,
            })
            .await?;
        Ok(NewSession { token, expires_at })
    }

    /// The user of a live session.
    pub async fn session_user(&self, token: &str) -> Result<User, AuthError> {
        if !is_session_token(token) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = self.session_hasher.hash(token.as_bytes());
        let session =
            self.stores.sessions.find_session(&hash).await?.ok_or(AuthError::Unauthenticated)?;
        if session.revoked_at.is_some() || session.expires_at <= self.clock.now() {
            return Err(AuthError::Unauthenticated);
        }
        let user = self
            .stores
            .users
            .find_user_by_id(session.user_id)
            .await?
            .ok_or(AuthError::Unauthenticated)?
            .user;
        if user.status == UserStatus::Deleted {
            return Err(AuthError::Unauthenticated);
        }
        if user.status == UserStatus::Suspended {
            return Err(AuthError::Suspended);
        }
        Ok(user)
    }

    /// Ends a session server-side; replaying its cookie afterwards fails.
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        if is_session_token(token) {
            let hash = self.session_hasher.hash(token.as_bytes());
            self.stores.sessions.revoke_session(&hash, self.clock.now()).await?;
        }
        Ok(())
    }

    /// Ends every session of the user (every browser signs in again).
    pub async fn sign_out_everywhere(&self, user_id: UserId) -> Result<(), AuthError> {
        self.stores.sessions.revoke_user_sessions(user_id, self.clock.now()).await?;
        Ok(())
    }

    pub async fn update_profile(
        &self,
        user_id: UserId,
        update: ProfileUpdate,
    ) -> Result<User, AuthError> {
        let update = ProfileUpdate {
            full_name: update
                .full_name
                .map(|v| validate_profile_field("full_name", v))
                .transpose()?,
            company_name: update
                .company_name
                .map(|v| validate_profile_field("company_name", v))
                .transpose()?,
        };
        self.stores.users.update_profile(user_id, update).await
    }

    /// Changes the password after checking the current one, ends every session of the user
    /// and opens a fresh one for the caller.
    pub async fn change_password(
        &self,
        user_id: UserId,
        current: &str,
        new: &str,
    ) -> Result<NewSession, AuthError> {
        let record =
            self.stores.users.find_user_by_id(user_id).await?.ok_or(AuthError::Unauthenticated)?;
        if !password::verify(current, &record.password_hash).await? {
            return Err(AuthError::invalid("current_password", "is not your current password"));
        }
        let hash = password::hash(new, self.config.password_cost).await?;
        self.stores.users.set_password_hash(user_id, &hash).await?;
        self.stores.sessions.revoke_user_sessions(user_id, self.clock.now()).await?;
        self.open_session(user_id).await
    }

    /// Whether account mail is set up ([`Accounts::with_mail`]).
    pub fn mails(&self) -> bool {
        self.mail.is_some()
    }

    /// Whether new accounts must confirm their email before they sign in.
    pub fn verifies_email(&self) -> bool {
        self.config.verify_email
    }

    /// Mails a password-reset link to the account of `email`, if there is such an active account:
    /// a single-use token, live for [`RESET_TTL`], stored as a keyed hash. The caller answers
    /// the same either way and runs this off the request; failures are logged.
    pub async fn mail_password_reset(&self, email: &str) {
        self.mail_link(email, Link::Reset, |r| r.user.status == UserStatus::Active).await;
    }

    /// Mails an email-verification link to the account of `email` when it still waits for its
    /// confirmation (after sign-up, or asked again). Off the request, as
    /// [`Accounts::mail_password_reset`].
    pub async fn mail_email_verification(&self, email: &str) {
        self.mail_link(email, Link::Verify, |r| r.email_unverified).await;
    }

    /// Mails a `link` to the account of `email` when `wanted` says it should get one.
    async fn mail_link(
        &self,
        email: &str,
        link: Link,
        wanted: impl Fn(&crate::UserRecord) -> bool,
    ) {
        let Some(mail) = &self.mail else { return };
        let Ok(email) = normalize_email(email) else { return };
        let user = match self.stores.users.find_user_by_email(&email).await {
            Ok(Some(record)) if wanted(&record) => record.user,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "link mail: account lookup failed");
                return;
            }
        };
        match self.link_token(link.label(), user.id).await {
            Ok(token) => mail.send_link(&user, link, &token).await,
            Err(e) => tracing::error!(user = %user.id, error = %e, "link mail: no token stored"),
        }
    }

    /// A new single-use token for a mailed link, live for [`RESET_TTL`], stored under its
    /// purpose's label.
    async fn link_token(&self, label: &str, user_id: UserId) -> Result<String, AuthError> {
        let token = new_session_token()?;
        let now = self.clock.now();
        let hash = self.labelled_hash(label, &token);
        self.stores.sessions.insert_reset(&hash, user_id, now, now + RESET_TTL).await?;
        Ok(token)
    }

    /// Sets a new password with a reset token: the token and every other of the user's are used
    /// up, and every session of the user ends. A weak password is refused before the token is
    /// used, so it can be tried again.
    /// Wrong tokens count as failures of the client's address (as failed logins do), so
    /// guessing is refused long before it could find one.
    pub async fn finish_password_reset(
        &self,
        token: &str,
        new: &str,
        client: &str,
    ) -> Result<User, AuthError> {
        if let Admission::Refuse { retry_after_secs } = self.throttle.admit_address(client).await {
            return Err(AuthError::Throttled { retry_after_secs });
        }
        password::validate(new)?;
        let invalid =
            || AuthError::invalid("token", "is not a valid reset link: it may be used or expired");
        let now = self.clock.now();
        let taken = if is_session_token(token) {
            self.stores
                .sessions
                .take_reset(&self.labelled_hash(Link::Reset.label(), token), now)
                .await?
        } else {
            None
        };
        let Some(user_id) = taken else {
            self.throttle.failed_address(client).await;
            return Err(invalid());
        };
        let hash = password::hash(new, self.config.password_cost).await?;
        self.stores.users.set_password_hash(user_id, &hash).await?;
        // The link came through the mailbox: the address is verified too.
        self.stores.users.set_email_verified(user_id).await?;
        self.stores.sessions.revoke_user_sessions(user_id, now).await?;
        self.owner(user_id).await
    }

    /// Verifies the email of the account a mailed token belongs to. Wrong tokens count against
    /// the client's address, as wrong reset tokens do.
    pub async fn verify_email(&self, token: &str, client: &str) -> Result<User, AuthError> {
        if let Admission::Refuse { retry_after_secs } = self.throttle.admit_address(client).await {
            return Err(AuthError::Throttled { retry_after_secs });
        }
        let taken = if is_session_token(token) {
            let hash = self.labelled_hash(Link::Verify.label(), token);
            self.stores.sessions.take_reset(&hash, self.clock.now()).await?
        } else {
            None
        };
        let Some(user_id) = taken else {
            self.throttle.failed_address(client).await;
            return Err(AuthError::invalid(
                "token",
                "is not a valid verification link: it may be used or expired",
            ));
        };
        self.stores.users.set_email_verified(user_id).await?;
        self.owner(user_id).await
    }

    /// A mailed token's stored hash under its purpose's label: a verification link is no
    /// reset link, and neither is a session.
    fn labelled_hash(&self, label: &str, token: &str) -> Vec<u8> {
        self.session_hasher.hash(format!("{label}:{token}").as_bytes()).to_vec()
    }

    /// Sets a user's own spend cap: from 0 to ten times their plan's monthly price, or `None`
    /// for the plan's price. (An admin sets any cap through [`Accounts::admin_update_user`].)
    pub async fn set_overage_cap(&self, id: UserId, cap: Option<i64>) -> Result<User, AuthError> {
        let owner = self.owner(id).await?;
        let plan = self.plans.plan(owner.tier);
        let max = plan.max_user_cap_micros();
        if cap.is_some_and(|cap| !(0..=max).contains(&cap)) {
            return Err(AuthError::invalid(
                "overage_cap_micros",
                format!("must be from 0 to {max} (ten times the {} plan's price)", plan.name),
            ));
        }
        let update =
            AdminUserUpdate { overage_cap_micros: Some(cap), ..AdminUserUpdate::default() };
        let user = self.stores.users.update_admin_fields(id, update).await?;
        self.invalidations.user_changed(id);
        Ok(user)
    }

    /// Changes role, tier or status (admins only, checked by the caller's role). Suspension
    /// ends the user's sessions, and every change reaches the key caches.
    /// Changes what only an administrator may change, as the administrator `actor`, who may
    /// not take their own admin role away or suspend themselves (nobody could undo it).
    pub async fn admin_update_user(
        &self,
        actor: UserId,
        id: UserId,
        update: AdminUserUpdate,
    ) -> Result<User, AuthError> {
        if update.overage_cap_micros.flatten().is_some_and(|c| c < 0) {
            return Err(AuthError::invalid("overage_cap_micros", "must not be negative"));
        }
        if actor == id && update.role.is_some_and(|r| r != Role::Admin) {
            return Err(AuthError::invalid("role", "cannot be taken from your own account"));
        }
        if update.status == Some(UserStatus::Deleted) {
            return Err(AuthError::invalid("status", "is set to deleted by deleting the user"));
        }
        if actor == id && update.status.is_some_and(|s| s != UserStatus::Active) {
            return Err(AuthError::invalid("status", "cannot suspend your own account"));
        }
        let suspend = update.status == Some(UserStatus::Suspended);
        let user = self.stores.users.update_admin_fields(id, update).await?;
        if suspend {
            self.stores.sessions.revoke_user_sessions(id, self.clock.now()).await?;
        }
        self.invalidations.user_changed(id);
        Ok(user)
    }

    // === keys ===

    /// One user, for administrators' pages.
    pub async fn user(&self, user_id: UserId) -> Result<User, AuthError> {
        self.owner(user_id).await
    }

    async fn owner(&self, user_id: UserId) -> Result<User, AuthError> {
        Ok(self
            .stores
            .users
            .find_user_by_id(user_id)
            .await?
            .ok_or(AuthError::NotFound("user"))?
            .user)
    }

    /// Checks limit overrides: positive, and for non-admins at most the plan's value.
    fn check_overrides(&self, owner: &User, o: &LimitOverrides) -> Result<(), AuthError> {
        let tier = self.plans.plan(owner.tier).limits;
        for (field, value, cap) in [
            ("rate_limit_rpm", o.rate_limit_rpm, tier.rpm),
            ("rate_limit_tpm", o.rate_limit_tpm, tier.tpm),
            ("quota_daily", o.quota_daily, tier.daily_tokens),
            ("quota_monthly", o.quota_monthly, tier.monthly_tokens),
        ] {
            match value {
                Some(0) => return Err(AuthError::invalid(field, "must be greater than 0")),
                Some(v) if v > cap && owner.role != Role::Admin => {
                    return Err(AuthError::invalid(
                        field,
                        format!("may not exceed your {} tier's limit of {cap}", owner.tier),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Refuses one more active key when the owner's plan's limit is reached.
    async fn check_key_count(&self, owner: &User) -> Result<(), AuthError> {
        let plan = self.plans.plan(owner.tier);
        if self.stores.keys.count_active_keys(owner.id).await? >= plan.max_api_keys {
            return Err(AuthError::KeyLimit { plan: plan.name.clone(), max: plan.max_api_keys });
        }
        Ok(())
    }

    fn check_key_fields(
        &self,
        scopes: &[Scope],
        models: Option<&Vec<String>>,
        expires: Option<OffsetDateTime>,
    ) -> Result<(), AuthError> {
        if scopes.is_empty() {
            return Err(AuthError::invalid("scopes", "must name at least one scope"));
        }
        let bad_models = |m: &Vec<String>| {
            m.is_empty() || m.len() > 100 || m.iter().any(|m| m.trim().is_empty() || m.len() > 200)
        };
        if models.is_some_and(bad_models) {
            return Err(AuthError::invalid("allowed_models", "must list 1 to 100 model names"));
        }
        if expires.is_some_and(|t| t <= self.clock.now()) {
            return Err(AuthError::invalid("expires_at", "must be in the future"));
        }
        Ok(())
    }

    async fn hash_secret(&self, secret: String) -> Result<String, AuthError> {
        let cost = self.config.key_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(secret, cost))
            .await
            .map_err(|e| AuthError::Hashing(Box::new(e)))?
            .map_err(|e| AuthError::Hashing(Box::new(e)))
    }

    /// Users whose email contains `email_contains` (case-insensitive), in email order, a page
    /// of at most `limit` (1 to 100) after `after_email`. For administrators.
    pub async fn search_users(
        &self,
        email_contains: &str,
        after_email: Option<&str>,
        (tier, status): (Option<Tier>, Option<UserStatus>),
        limit: u32,
    ) -> Result<Vec<User>, AuthError> {
        if !(1..=100).contains(&limit) {
            return Err(AuthError::invalid("limit", "must be 1 to 100"));
        }
        let email_contains = email_contains.trim().to_lowercase();
        if email_contains.len() > 254 {
            return Err(AuthError::invalid("q", "is longer than any email"));
        }
        let query = crate::UserQuery {
            email_contains,
            after_email: after_email.map(str::to_owned),
            tier,
            status,
            limit,
        };
        self.stores.users.search_users(&query).await
    }

    /// Every owner's unrevoked keys (or `user`'s), a page of `limit` after `after`, for
    /// administrators: never a secret or a hash.
    pub async fn all_keys(
        &self,
        user: Option<UserId>,
        after: Option<ApiKeyId>,
        limit: u32,
    ) -> Result<Vec<ApiKeyMeta>, AuthError> {
        if !(1..=100).contains(&limit) {
            return Err(AuthError::invalid("limit", "must be 1 to 100"));
        }
        self.stores.keys.all_keys(&crate::KeyQuery { user_id: user, after, limit }).await
    }

    /// Deletes an account softly: every key revoked, every session ended, the status
    /// `deleted` (it cannot sign in again); its usage, ledger and invoices are kept. An
    /// administrator cannot delete their own account.
    pub async fn delete_user(&self, actor: UserId, id: UserId) -> Result<User, AuthError> {
        if actor == id {
            return Err(AuthError::invalid("id", "cannot be your own account"));
        }
        let now = self.clock.now();
        for key in self.stores.keys.list_keys(id).await? {
            self.stores.keys.revoke_key(id, key.id, now).await?;
            self.invalidations.key_changed(key.id);
        }
        let update = AdminUserUpdate { status: Some(UserStatus::Deleted), ..Default::default() };
        let user = self.stores.users.update_admin_fields(id, update).await?;
        self.stores.sessions.revoke_user_sessions(id, now).await?;
        self.invalidations.user_changed(id);
        Ok(user)
    }

    /// How many users and usable keys there are.
    pub async fn population(&self) -> Result<crate::Population, AuthError> {
        self.stores.users.population(self.clock.now()).await
    }

    /// Issues a new key for `user_id`, enforcing the plan's key count and limits.
    pub async fn create_key(&self, user_id: UserId, new: NewKey) -> Result<IssuedKey, AuthError> {
        let name = validate_key_name(&new.name)?;
        self.check_key_fields(&new.scopes, new.allowed_models.as_ref(), new.expires_at)?;
        let owner = self.owner(user_id).await?;
        self.check_overrides(&owner, &new.overrides)?;
        if owner.role != Role::Admin {
            self.check_key_count(&owner).await?;
        }
        let generated = apikey::generate()?;
        let key_hash = self.hash_secret(generated.secret.clone()).await?;
        let mut scopes = new.scopes;
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        let meta = ApiKeyMeta {
            id: ApiKeyId::new(),
            user_id,
            name,
            key_prefix: generated.display_prefix(),
            scopes,
            allowed_models: new.allowed_models,
            expires_at: new.expires_at,
            overrides: new.overrides,
            is_active: true,
            last_used_at: None,
            created_at: self.clock.now(),
        };
        self.stores
            .keys
            .insert_key(KeyRecord {
                meta: meta.clone(),
                key_hash,
                previous_key_hash: None,
                previous_key_expires_at: None,
                revoked_at: None,
            })
            .await?;
        Ok(IssuedKey { meta, key: generated.full() })
    }

    pub async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError> {
        self.stores.keys.list_keys(user_id).await
    }

    pub async fn get_key(&self, user_id: UserId, id: ApiKeyId) -> Result<ApiKeyMeta, AuthError> {
        self.stores.keys.find_key(user_id, id).await?.ok_or(AuthError::NotFound("API key"))
    }

    /// Changes one of the caller's keys. The result is checked as a whole (scopes, limits
    /// against the tier) before anything is written.
    pub async fn update_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        mut update: KeyUpdate,
    ) -> Result<ApiKeyMeta, AuthError> {
        let mut preview = self.get_key(user_id, id).await?;
        if let Some(name) = &update.name {
            update.name = Some(validate_key_name(name)?);
        }
        let reactivates = update.is_active == Some(true) && !preview.is_active;
        update.apply(&mut preview);
        self.check_key_fields(
            &preview.scopes,
            preview.allowed_models.as_ref(),
            update.expires_at.flatten(),
        )?;
        let owner = self.owner(user_id).await?;
        self.check_overrides(&owner, &preview.overrides)?;
        if reactivates && owner.role != Role::Admin {
            self.check_key_count(&owner).await?;
        }
        let meta = self
            .stores
            .keys
            .update_key(user_id, id, update)
            .await?
            .ok_or(AuthError::NotFound("API key"))?;
        self.invalidations.key_changed(id);
        Ok(meta)
    }

    /// Revokes one of the caller's keys, at once on this instance and, through the
    /// invalidations, on the others.
    pub async fn revoke_key(&self, user_id: UserId, id: ApiKeyId) -> Result<(), AuthError> {
        if !self.stores.keys.revoke_key(user_id, id, self.clock.now()).await? {
            return Err(AuthError::NotFound("API key"));
        }
        self.invalidations.key_changed(id);
        Ok(())
    }

    /// Issues a new secret for one of the caller's keys, keeping its id, prefix and settings.
    /// The old secret keeps working for the configured grace period.
    pub async fn rotate_key(&self, user_id: UserId, id: ApiKeyId) -> Result<IssuedKey, AuthError> {
        let secret = apikey::generate_secret()?;
        let hash = self.hash_secret(secret.clone()).await?;
        let grace_end = self.clock.now() + self.config.rotation_grace;
        let meta = self
            .stores
            .keys
            .rotate_key(user_id, id, &hash, grace_end)
            .await?
            .ok_or(AuthError::NotFound("API key"))?;
        self.invalidations.key_changed(id);
        let prefix = meta.key_prefix.trim_start_matches("bm_");
        Ok(IssuedKey { key: format!("bm_{prefix}_{secret}"), meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryAuthStore;

    fn accounts() -> Accounts {
        let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
        Accounts::new(
            AuthStores::from(Arc::new(InMemoryAuthStore::default())),
            b"session secret",
            config,
        )
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
            "a@com.",
            "x' OR (SELECT pg_sleep(5)) IS NOT NULL--@x.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_names_are_labels_not_code() {
        assert_eq!(validate_key_name("  prod: api (eu) #2 ").unwrap(), "prod: api (eu) #2");
        for bad in
            ["", "x' OR (SELECT pg_sleep(5)) IS NOT NULL--", "<script>", &"n".repeat(101), "a\nb"]
        {
            assert!(validate_key_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn admin_create_twice_promotes_instead_of_failing() {
        let a = accounts();
        let user = a.signup("bob@example.com", "password-1", None).await.unwrap();
        assert_eq!(user.role, Role::User);
        let admin = a.create_or_promote_admin("BOB@example.com", "password-2").await.unwrap();
        assert_eq!(admin.id, user.id);
        assert_eq!(admin.role, Role::Admin);
        assert!(matches!(
            a.signup("bob@example.com", "password-3", None).await,
            Err(AuthError::Conflict("email"))
        ));
    }

    #[tokio::test]
    async fn login_opens_a_session_that_logout_and_password_change_end() {
        let a = accounts();
        a.signup("s@example.com", "password-1", None).await.unwrap();
        assert!(matches!(
            a.login("s@example.com", "wrong-pass", "ip").await,
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            a.login("nobody@example.com", "password-1", "ip").await,
            Err(AuthError::InvalidCredentials)
        ));
        let (user, s1) = a.login("S@Example.com", "password-1", "ip").await.unwrap();
        assert_eq!(a.session_user(&s1.token).await.unwrap().id, user.id);
        a.logout(&s1.token).await.unwrap();
        assert!(matches!(a.session_user(&s1.token).await, Err(AuthError::Unauthenticated)));

        let (_, s2) = a.login("s@example.com", "password-1", "ip").await.unwrap();
        let (_, s3) = a.login("s@example.com", "password-1", "ip").await.unwrap();
        assert!(matches!(
            a.change_password(user.id, "not-current", "password-2").await,
            Err(AuthError::Invalid { field: "current_password", .. })
        ));
        let s4 = a.change_password(user.id, "password-1", "password-2").await.unwrap();
        for old in [&s2, &s3] {
            assert!(matches!(a.session_user(&old.token).await, Err(AuthError::Unauthenticated)));
        }
        assert_eq!(a.session_user(&s4.token).await.unwrap().id, user.id);
        assert!(a.login("s@example.com", "password-2", "ip").await.is_ok());
    }

    #[tokio::test]
    async fn suspension_ends_sessions_and_blocks_login() {
        let a = accounts();
        let user = a.signup("bad@example.com", "password-1", None).await.unwrap();
        let (_, s) = a.login("bad@example.com", "password-1", "ip").await.unwrap();
        let update =
            AdminUserUpdate { status: Some(UserStatus::Suspended), ..AdminUserUpdate::default() };
        let suspend_self = a.admin_update_user(user.id, user.id, update.clone()).await;
        assert!(
            matches!(suspend_self, Err(AuthError::Invalid { field: "status", .. })),
            "nobody suspends their own account"
        );
        let demote_self = AdminUserUpdate { role: Some(Role::User), ..AdminUserUpdate::default() };
        assert!(matches!(
            a.admin_update_user(user.id, user.id, demote_self).await,
            Err(AuthError::Invalid { field: "role", .. })
        ));
        a.admin_update_user(UserId::new(), user.id, update).await.unwrap();
        assert!(matches!(a.session_user(&s.token).await, Err(AuthError::Unauthenticated)));
        assert!(matches!(
            a.login("bad@example.com", "password-1", "ip").await,
            Err(AuthError::Suspended)
        ));
    }

    #[tokio::test]
    async fn key_count_and_limits_are_capped_by_tier_for_users_only() {
        let a = accounts();
        let user = a.signup("free@example.com", "password-1", None).await.unwrap();
        let mut too_high = NewKey::named("k", vec![Scope::Models]);
        too_high.overrides.rate_limit_rpm = Some(11);
        assert!(matches!(
            a.create_key(user.id, too_high.clone()).await,
            Err(AuthError::Invalid { field: "rate_limit_rpm", .. })
        ));
        for i in 0..Tier::Free.default_plan().max_api_keys {
            a.create_key(user.id, NewKey::named(format!("k{i}"), vec![Scope::Models]))
                .await
                .unwrap();
        }
        let err = a.create_key(user.id, NewKey::named("one more", vec![Scope::Models])).await;
        assert!(
            matches!(&err, Err(AuthError::KeyLimit { plan, max: 1 }) if plan == "Free"),
            "{err:?}"
        );

        let admin = a.create_or_promote_admin("root@example.com", "password-1").await.unwrap();
        let key = a.create_key(admin.id, too_high).await.unwrap();
        assert_eq!(key.meta.overrides.rate_limit_rpm, Some(11));
    }

    #[tokio::test]
    async fn rotation_keeps_identity_and_settings() {
        let a = accounts();
        let user = a.signup("rot@example.com", "password-1", None).await.unwrap();
        let issued =
            a.create_key(user.id, NewKey::named("r", vec![Scope::ChatCompletions])).await.unwrap();
        let rotated = a.rotate_key(user.id, issued.meta.id).await.unwrap();
        assert_eq!(rotated.meta, issued.meta);
        assert_ne!(rotated.key, issued.key);
        assert!(rotated.key.starts_with(&format!("{}_", issued.meta.key_prefix)));
        let other = a.signup("other@example.com", "password-1", None).await.unwrap();
        assert!(matches!(
            a.rotate_key(other.id, issued.meta.id).await,
            Err(AuthError::NotFound(_))
        ));
        assert!(matches!(
            a.revoke_key(other.id, issued.meta.id).await,
            Err(AuthError::NotFound(_))
        ));
    }
}
