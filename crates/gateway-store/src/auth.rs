//! SQL adapter of the auth ports (users and API keys).

use async_trait::async_trait;
use gateway_auth::{
    AdminUserUpdate, AuthError, KeyRecord, KeyStore, KeyUpdate, NewUser, ProfileUpdate,
    SessionRecord, SessionStore, UserRecord, UserStore,
};
use gateway_core::{
    ApiKeyId, ApiKeyMeta, LimitOverrides, Role, Scope, Tier, User, UserId, UserStatus,
};
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::SimpleExpr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, SqlErr, TransactionTrait,
};
use time::OffsetDateTime;

use crate::entity::{api_keys, password_resets, sessions, users};
use crate::{Store, StoreError};

/// Users and keys in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlAuthStore {
    store: Store,
}

impl SqlAuthStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn db_err(e: DbErr) -> AuthError {
    AuthError::store(StoreError::Db(e))
}

fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> AuthError {
    AuthError::store(StoreError::Corrupt { table, detail: detail.to_string() })
}

/// Maps a unique violation to `Conflict(what)`, anything else to a store error.
fn insert_err(e: DbErr, what: &'static str) -> AuthError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AuthError::Conflict(what),
        _ => db_err(e),
    }
}

fn user_from_row(row: users::Model) -> Result<UserRecord, AuthError> {
    let user = User {
        id: UserId(row.id),
        email: row.email,
        full_name: row.full_name,
        company_name: row.company_name,
        role: row.role.parse::<Role>().map_err(|e| corrupt("users", e))?,
        tier: row.tier.parse::<Tier>().map_err(|e| corrupt("users", e))?,
        status: match row.deleted_at {
            Some(_) => UserStatus::Deleted,
            None => row.status.parse::<UserStatus>().map_err(|e| corrupt("users", e))?,
        },
        credits_micros: row.credits_micros,
        overage_cap_micros: row.overage_cap_micros,
        past_due_after: row.past_due_after,
        created_at: row.created_at,
    };
    Ok(UserRecord {
        user,
        password_hash: row.password_hash,
        email_unverified: row.email_unverified,
    })
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn key_from_row(row: api_keys::Model) -> Result<KeyRecord, AuthError> {
    let scopes: Vec<String> =
        serde_json::from_value(row.scopes).map_err(|e| corrupt("api_keys", e))?;
    // A scope this build does not know (written by a newer one, during a rolling upgrade) is
    // left out: the key lacks it here rather than failing as a whole.
    let scopes = scopes.iter().filter_map(|s| s.parse::<Scope>().ok()).collect();
    let allowed_models = row
        .allowed_models
        .map(serde_json::from_value::<Vec<String>>)
        .transpose()
        .map_err(|e| corrupt("api_keys", e))?;
    Ok(KeyRecord {
        meta: ApiKeyMeta {
            id: ApiKeyId(row.id),
            user_id: UserId(row.user_id),
            name: row.name,
            key_prefix: row.key_prefix,
            scopes,
            allowed_models,
            expires_at: row.expires_at,
            overrides: LimitOverrides {
                rate_limit_rpm: opt_u64(row.rate_limit_rpm),
                rate_limit_tpm: opt_u64(row.rate_limit_tpm),
                quota_daily: opt_u64(row.quota_daily),
                quota_monthly: opt_u64(row.quota_monthly),
            },
            is_active: row.is_active,
            last_used_at: row.last_used_at,
            created_at: row.created_at,
        },
        key_hash: row.key_hash,
        previous_key_hash: row.previous_key_hash,
        previous_key_expires_at: row.previous_key_expires_at,
        revoked_at: row.revoked_at,
    })
}

fn json_scopes(scopes: &[gateway_core::Scope]) -> serde_json::Value {
    serde_json::json!(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>())
}

#[async_trait]
impl UserStore for SqlAuthStore {
    async fn insert_user(&self, new: NewUser) -> Result<User, AuthError> {
        let now = OffsetDateTime::now_utc();
        let row = users::ActiveModel {
            id: Set(UserId::new().as_uuid()),
            email: Set(new.email),
            password_hash: Set(new.password_hash),
            full_name: Set(new.full_name),
            company_name: Set(None),
            role: Set(new.role.as_str().to_owned()),
            tier: Set(new.tier.as_str().to_owned()),
            status: Set(UserStatus::Active.as_str().to_owned()),
            credits_micros: Set(0),
            overage_cap_micros: Set(None),
            past_due_after: Set(None),
            creem_customer_id: Set(None),
            creem_subscription_id: Set(None),
            subscription_ends_at: Set(None),
            subscription_event_at: Set(None),
            email_unverified: Set(new.email_unverified),
            deleted_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let row = row.insert(self.store.connection()).await.map_err(|e| insert_err(e, "email"))?;
        Ok(user_from_row(row)?.user)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError> {
        users::Entity::find()
            .filter(users::Column::Email.eq(email))
            .one(self.store.connection())
            .await
            .map_err(db_err)?
            .map(user_from_row)
            .transpose()
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, AuthError> {
        users::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(db_err)?
            .map(user_from_row)
            .transpose()
    }

    async fn set_role_and_password(
        &self,
        id: UserId,
        role: Role,
        password_hash: &str,
    ) -> Result<User, AuthError> {
        let res = users::Entity::update_many()
            .col_expr(users::Column::Role, Expr::value(role.as_str()))
            .col_expr(users::Column::PasswordHash, Expr::value(password_hash))
            .col_expr(users::Column::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
            .filter(users::Column::Id.eq(id.as_uuid()))
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        if res.rows_affected == 0 {
            return Err(AuthError::NotFound("user"));
        }
        Ok(self.find_user_by_id(id).await?.ok_or(AuthError::NotFound("user"))?.user)
    }

    async fn set_email_verified(&self, id: UserId) -> Result<(), AuthError> {
        users::Entity::update_many()
            .col_expr(users::Column::EmailUnverified, Expr::value(false))
            .filter(users::Column::Id.eq(id.as_uuid()))
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), AuthError> {
        self.update_user(id, vec![(users::Column::PasswordHash, Expr::value(password_hash))]).await
    }

    async fn update_profile(&self, id: UserId, update: ProfileUpdate) -> Result<User, AuthError> {
        let mut cols = Vec::new();
        if let Some(v) = update.full_name {
            cols.push((users::Column::FullName, Expr::value(v)));
        }
        if let Some(v) = update.company_name {
            cols.push((users::Column::CompanyName, Expr::value(v)));
        }
        self.update_user(id, cols).await?;
        Ok(self.find_user_by_id(id).await?.ok_or(AuthError::NotFound("user"))?.user)
    }

    async fn update_admin_fields(
        &self,
        id: UserId,
        update: AdminUserUpdate,
    ) -> Result<User, AuthError> {
        let mut cols = Vec::new();
        if let Some(v) = update.role {
            cols.push((users::Column::Role, Expr::value(v.as_str())));
        }
        if let Some(v) = update.tier {
            cols.push((users::Column::Tier, Expr::value(v.as_str())));
        }
        match update.status {
            // Deleted is `suspended` with the time of the deletion (the column's CHECK).
            Some(UserStatus::Deleted) => {
                cols.push((users::Column::Status, Expr::value(UserStatus::Suspended.as_str())));
                cols.push((users::Column::DeletedAt, Expr::value(OffsetDateTime::now_utc())));
            }
            Some(v) => {
                cols.push((users::Column::Status, Expr::value(v.as_str())));
                cols.push((users::Column::DeletedAt, Expr::value(None::<OffsetDateTime>)));
            }
            None => {}
        }
        if let Some(v) = update.overage_cap_micros {
            cols.push((users::Column::OverageCapMicros, Expr::value(v)));
        }
        self.update_user(id, cols).await?;
        Ok(self.find_user_by_id(id).await?.ok_or(AuthError::NotFound("user"))?.user)
    }

    async fn search_users(&self, query: &gateway_auth::UserQuery) -> Result<Vec<User>, AuthError> {
        use sea_orm::QuerySelect as _;
        use sea_orm::sea_query::LikeExpr;
        let escaped =
            query.email_contains.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let mut find = users::Entity::find()
            .filter(users::Column::Email.like(LikeExpr::new(format!("%{escaped}%")).escape('\\')));
        if let Some(after) = &query.after_email {
            find = find.filter(users::Column::Email.gt(after.as_str()));
        }
        if let Some(tier) = query.tier {
            find = find.filter(users::Column::Tier.eq(tier.as_str()));
        }
        match query.status {
            Some(UserStatus::Deleted) => find = find.filter(users::Column::DeletedAt.is_not_null()),
            Some(status) => {
                find = find
                    .filter(users::Column::Status.eq(status.as_str()))
                    .filter(users::Column::DeletedAt.is_null());
            }
            None => {}
        }
        find.order_by_asc(users::Column::Email)
            .limit(u64::from(query.limit))
            .all(self.store.connection())
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|row| user_from_row(row).map(|r| r.user))
            .collect()
    }

    async fn population(&self, now: OffsetDateTime) -> Result<gateway_auth::Population, AuthError> {
        let db = self.store.connection();
        let users = users::Entity::find().count(db).await.map_err(db_err)?;
        let active_keys = api_keys::Entity::find()
            .filter(api_keys::Column::IsActive.eq(true))
            .filter(api_keys::Column::RevokedAt.is_null())
            .filter(
                Condition::any()
                    .add(api_keys::Column::ExpiresAt.is_null())
                    .add(api_keys::Column::ExpiresAt.gt(now)),
            )
            .count(db)
            .await
            .map_err(db_err)?;
        Ok(gateway_auth::Population { users, active_keys })
    }
}

impl SqlAuthStore {
    /// Sets columns of one user (and `updated_at`); `NotFound` if there is no such user.
    async fn update_user(
        &self,
        id: UserId,
        cols: Vec<(users::Column, SimpleExpr)>,
    ) -> Result<(), AuthError> {
        let mut q = users::Entity::update_many()
            .col_expr(users::Column::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
            .filter(users::Column::Id.eq(id.as_uuid()));
        for (col, value) in cols {
            q = q.col_expr(col, value);
        }
        let res = q.exec(self.store.connection()).await.map_err(db_err)?;
        if res.rows_affected == 0 {
            return Err(AuthError::NotFound("user"));
        }
        Ok(())
    }

    /// The owner's unrevoked key row, if any.
    async fn own_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<api_keys::Model>, AuthError> {
        api_keys::Entity::find_by_id(id.as_uuid())
            .filter(api_keys::Column::UserId.eq(user_id.as_uuid()))
            .filter(api_keys::Column::RevokedAt.is_null())
            .one(self.store.connection())
            .await
            .map_err(db_err)
    }
}

#[async_trait]
impl KeyStore for SqlAuthStore {
    async fn insert_key(&self, key: KeyRecord) -> Result<(), AuthError> {
        let m = key.meta;
        let row = api_keys::ActiveModel {
            id: Set(m.id.as_uuid()),
            user_id: Set(m.user_id.as_uuid()),
            name: Set(m.name),
            key_prefix: Set(m.key_prefix),
            key_hash: Set(key.key_hash),
            previous_key_hash: Set(key.previous_key_hash),
            previous_key_expires_at: Set(key.previous_key_expires_at),
            scopes: Set(json_scopes(&m.scopes)),
            allowed_models: Set(m.allowed_models.map(|v| serde_json::json!(v))),
            expires_at: Set(m.expires_at),
            rate_limit_rpm: Set(opt_i64(m.overrides.rate_limit_rpm)),
            rate_limit_tpm: Set(opt_i64(m.overrides.rate_limit_tpm)),
            quota_daily: Set(opt_i64(m.overrides.quota_daily)),
            quota_monthly: Set(opt_i64(m.overrides.quota_monthly)),
            is_active: Set(m.is_active),
            last_used_at: Set(m.last_used_at),
            created_at: Set(m.created_at),
            updated_at: Set(m.created_at),
            revoked_at: Set(key.revoked_at),
        };
        api_keys::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(|e| insert_err(e, "key prefix"))?;
        Ok(())
    }

    async fn find_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, AuthError> {
        api_keys::Entity::find()
            .filter(api_keys::Column::KeyPrefix.eq(prefix))
            .one(self.store.connection())
            .await
            .map_err(db_err)?
            .map(key_from_row)
            .transpose()
    }

    async fn all_keys(&self, query: &gateway_auth::KeyQuery) -> Result<Vec<ApiKeyMeta>, AuthError> {
        use sea_orm::QuerySelect as _;
        let mut find = api_keys::Entity::find().filter(api_keys::Column::RevokedAt.is_null());
        if let Some(user) = query.user_id {
            find = find.filter(api_keys::Column::UserId.eq(user.as_uuid()));
        }
        if let Some(after) = query.after {
            find = find.filter(api_keys::Column::Id.gt(after.as_uuid()));
        }
        find.order_by_asc(api_keys::Column::Id)
            .limit(u64::from(query.limit))
            .all(self.store.connection())
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|row| key_from_row(row).map(|k| k.meta))
            .collect()
    }

    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError> {
        api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user_id.as_uuid()))
            .filter(api_keys::Column::RevokedAt.is_null())
            .order_by_asc(api_keys::Column::CreatedAt)
            .order_by_asc(api_keys::Column::Id)
            .all(self.store.connection())
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|row| key_from_row(row).map(|k| k.meta))
            .collect()
    }

    async fn count_active_keys(&self, user_id: UserId) -> Result<u32, AuthError> {
        let n = api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user_id.as_uuid()))
            .filter(api_keys::Column::IsActive.eq(true))
            .filter(api_keys::Column::RevokedAt.is_null())
            .count(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn find_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        self.own_key(user_id, id).await?.map(|row| key_from_row(row).map(|k| k.meta)).transpose()
    }

    async fn update_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        update: KeyUpdate,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        let Some(row) = self.own_key(user_id, id).await? else { return Ok(None) };
        let mut meta = key_from_row(row.clone())?.meta;
        update.apply(&mut meta);
        let mut active: api_keys::ActiveModel = row.into();
        active.name = Set(meta.name.clone());
        active.scopes = Set(json_scopes(&meta.scopes));
        active.allowed_models = Set(meta.allowed_models.as_ref().map(|v| serde_json::json!(v)));
        active.expires_at = Set(meta.expires_at);
        active.rate_limit_rpm = Set(opt_i64(meta.overrides.rate_limit_rpm));
        active.rate_limit_tpm = Set(opt_i64(meta.overrides.rate_limit_tpm));
        active.quota_daily = Set(opt_i64(meta.overrides.quota_daily));
        active.quota_monthly = Set(opt_i64(meta.overrides.quota_monthly));
        active.is_active = Set(meta.is_active);
        active.updated_at = Set(OffsetDateTime::now_utc());
        active.update(self.store.connection()).await.map_err(db_err)?;
        Ok(Some(meta))
    }

    async fn rotate_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        new_hash: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        // Read and write in one transaction, so two rotations cannot both keep the same
        // "previous" hash.
        let txn = self.store.connection().begin().await.map_err(db_err)?;
        let row = api_keys::Entity::find_by_id(id.as_uuid())
            .filter(api_keys::Column::UserId.eq(user_id.as_uuid()))
            .filter(api_keys::Column::RevokedAt.is_null())
            .one(&txn)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let meta = key_from_row(row.clone())?.meta;
        let mut active: api_keys::ActiveModel = row.clone().into();
        active.previous_key_hash = Set(Some(row.key_hash));
        active.previous_key_expires_at = Set(Some(previous_expires_at));
        active.key_hash = Set(new_hash.to_owned());
        active.updated_at = Set(OffsetDateTime::now_utc());
        active.update(&txn).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(Some(meta))
    }

    async fn revoke_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        at: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        let res = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(at))
            .col_expr(api_keys::Column::IsActive, Expr::value(false))
            .col_expr(api_keys::Column::UpdatedAt, Expr::value(at))
            .filter(api_keys::Column::Id.eq(id.as_uuid()))
            .filter(api_keys::Column::UserId.eq(user_id.as_uuid()))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected > 0)
    }

    async fn touch_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> Result<(), AuthError> {
        // A later time never goes backwards. Postgres: one statement for the whole batch (a
        // gateway serving 10,000 keys flushes 10,000 of them every ten seconds).
        let conn = self.store.connection();
        if conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            let ids: Vec<uuid::Uuid> = used.iter().map(|(id, _)| id.as_uuid()).collect();
            let times: Vec<OffsetDateTime> = used.iter().map(|(_, at)| *at).collect();
            sqlx::query(
                "UPDATE api_keys AS k SET last_used_at = u.at \
                 FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, at) \
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
            )
            .bind(ids)
            .bind(times)
            .execute(conn.get_postgres_connection_pool())
            .await
            .map_err(|e| db_err(crate::error::sqlx_db_err(e)))?;
            return Ok(());
        }
        // SQLite: one short transaction per batch.
        let txn = self.store.connection().begin().await.map_err(db_err)?;
        for (id, at) in used {
            api_keys::Entity::update_many()
                .col_expr(api_keys::Column::LastUsedAt, Expr::value(*at))
                .filter(api_keys::Column::Id.eq(id.as_uuid()))
                .filter(
                    Condition::any()
                        .add(api_keys::Column::LastUsedAt.is_null())
                        .add(api_keys::Column::LastUsedAt.lt(*at)),
                )
                .exec(&txn)
                .await
                .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }
}

fn session_from_row(row: sessions::Model) -> SessionRecord {
    SessionRecord {
        id: row.id,
        user_id: UserId(row.user_id),
        token_hash: row.token_hash,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
    }
}

#[async_trait]
impl SessionStore for SqlAuthStore {
    async fn insert_session(&self, s: SessionRecord) -> Result<(), AuthError> {
        let row = sessions::ActiveModel {
            id: Set(s.id),
            user_id: Set(s.user_id.as_uuid()),
            token_hash: Set(s.token_hash),
            created_at: Set(s.created_at),
            expires_at: Set(s.expires_at),
            last_seen_at: Set(None),
            revoked_at: Set(s.revoked_at),
        };
        sessions::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(|e| insert_err(e, "session"))?;
        Ok(())
    }

    async fn find_session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, AuthError> {
        Ok(sessions::Entity::find()
            .filter(sessions::Column::TokenHash.eq(token_hash.to_vec()))
            .one(self.store.connection())
            .await
            .map_err(db_err)?
            .map(session_from_row))
    }

    async fn revoke_session(
        &self,
        token_hash: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        let res = sessions::Entity::update_many()
            .col_expr(sessions::Column::RevokedAt, Expr::value(at))
            .filter(sessions::Column::TokenHash.eq(token_hash.to_vec()))
            .filter(sessions::Column::RevokedAt.is_null())
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected > 0)
    }

    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        at: OffsetDateTime,
    ) -> Result<u64, AuthError> {
        let res = sessions::Entity::update_many()
            .col_expr(sessions::Column::RevokedAt, Expr::value(at))
            .filter(sessions::Column::UserId.eq(user_id.as_uuid()))
            .filter(sessions::Column::RevokedAt.is_null())
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected)
    }

    async fn insert_reset(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), AuthError> {
        let row = password_resets::ActiveModel {
            token_hash: Set(token_hash.to_vec()),
            user_id: Set(user_id.as_uuid()),
            created_at: Set(created_at),
            expires_at: Set(expires_at),
            used_at: Set(None),
        };
        password_resets::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn take_reset(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<UserId>, AuthError> {
        let txn = self.store.connection().begin().await.map_err(db_err)?;
        let Some(row) = password_resets::Entity::find_by_id(token_hash.to_vec())
            .one(&txn)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        // The conditional update is the single use: of two concurrent takes, one changes the row.
        let taken = password_resets::Entity::update_many()
            .col_expr(password_resets::Column::UsedAt, Expr::value(now))
            .filter(password_resets::Column::TokenHash.eq(token_hash.to_vec()))
            .filter(password_resets::Column::UsedAt.is_null())
            .filter(password_resets::Column::ExpiresAt.gt(now))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if taken.rows_affected != 1 {
            return Ok(None);
        }
        password_resets::Entity::update_many()
            .col_expr(password_resets::Column::UsedAt, Expr::value(now))
            .filter(password_resets::Column::UserId.eq(row.user_id))
            .filter(password_resets::Column::UsedAt.is_null())
            .exec(&txn)
            .await
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(Some(UserId(row.user_id)))
    }
}
