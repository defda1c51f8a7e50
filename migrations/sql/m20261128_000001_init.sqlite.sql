-- BluesMinds schema, SQLite (embedded mode). Money is integer micro-dollars; times are text (UTC).

CREATE TABLE IF NOT EXISTS billing_plans (
    tier                  text PRIMARY KEY CHECK (tier IN ('free', 'starter', 'pro', 'enterprise')),
    name                  text NOT NULL,
    price_monthly_micros  integer NOT NULL CHECK (price_monthly_micros >= 0),
    rate_limit_rpm        integer NOT NULL CHECK (rate_limit_rpm > 0),
    rate_limit_tpm        integer NOT NULL CHECK (rate_limit_tpm > 0),
    quota_daily           integer NOT NULL CHECK (quota_daily > 0),
    quota_monthly         integer NOT NULL CHECK (quota_monthly > 0),
    max_api_keys          integer NOT NULL CHECK (max_api_keys > 0),
    created_at            text NOT NULL DEFAULT CURRENT_TIMESTAMP
);

INSERT INTO billing_plans
    (tier, name, price_monthly_micros, rate_limit_rpm, rate_limit_tpm, quota_daily, quota_monthly, max_api_keys)
VALUES
    ('free',       'Free',               0,   10,    10000,   1000,    10000,   2),
    ('starter',    'Starter',     19000000,   60,   100000,  20000,   500000,   5),
    ('pro',        'Pro',         99000000,  200,   500000, 100000,  2000000,  20),
    ('enterprise', 'Enterprise', 499000000, 1000,  2000000, 500000, 10000000, 100)
ON CONFLICT (tier) DO NOTHING;

CREATE TABLE IF NOT EXISTS users (
    id              blob PRIMARY KEY,
    email           text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) <= 254),
    password_hash   text NOT NULL,
    full_name       text,
    company_name    text,
    role            text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    tier            text NOT NULL DEFAULT 'free' REFERENCES billing_plans (tier),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    credits_micros  integer NOT NULL DEFAULT 0,
    created_at      text NOT NULL,
    updated_at      text NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    id            blob PRIMARY KEY,
    user_id       blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    blob NOT NULL UNIQUE,
    created_at    text NOT NULL,
    expires_at    text NOT NULL,
    last_seen_at  text,
    revoked_at    text
);
CREATE INDEX IF NOT EXISTS sessions_user_id_idx ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE IF NOT EXISTS api_keys (
    id                        blob PRIMARY KEY,
    user_id                   blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                      text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_prefix                text NOT NULL UNIQUE,
    key_hash                  text NOT NULL,
    previous_key_hash         text,
    previous_key_expires_at   text,
    scopes                    text NOT NULL DEFAULT '[]',
    allowed_models            text,
    expires_at                text,
    rate_limit_rpm            integer CHECK (rate_limit_rpm > 0),
    rate_limit_tpm            integer CHECK (rate_limit_tpm > 0),
    quota_daily               integer CHECK (quota_daily > 0),
    quota_monthly             integer CHECK (quota_monthly > 0),
    is_active                 integer NOT NULL DEFAULT 1,
    last_used_at              text,
    created_at                text NOT NULL,
    updated_at                text NOT NULL,
    revoked_at                text
);
CREATE INDEX IF NOT EXISTS api_keys_user_id_idx ON api_keys (user_id, created_at);

CREATE TABLE IF NOT EXISTS litellm_servers (
    id                        blob PRIMARY KEY,
    name                      text NOT NULL,
    base_url                  text NOT NULL UNIQUE,
    api_key                   text,
    priority                  integer NOT NULL DEFAULT 1 CHECK (priority >= 1),
    weight                    integer NOT NULL DEFAULT 1 CHECK (weight >= 1),
    max_concurrent_requests   integer CHECK (max_concurrent_requests > 0),
    supported_models          text NOT NULL DEFAULT '[]',
    is_active                 integer NOT NULL DEFAULT 1,
    health_status             text NOT NULL DEFAULT 'unknown'
                              CHECK (health_status IN ('unknown', 'healthy', 'degraded', 'unhealthy')),
    last_health_check_at      text,
    last_latency_ms           integer,
    consecutive_failures      integer NOT NULL DEFAULT 0,
    total_requests            integer NOT NULL DEFAULT 0,
    total_errors              integer NOT NULL DEFAULT 0,
    created_at                text NOT NULL,
    updated_at                text NOT NULL
);

-- One row per gateway request; a plain table on SQLite (Postgres partitions it by month).
CREATE TABLE IF NOT EXISTS usage_logs (
    request_id            blob NOT NULL,
    created_at            text NOT NULL,
    user_id               blob NOT NULL,
    api_key_id            blob,
    server_id             blob,
    endpoint              text NOT NULL,
    model                 text NOT NULL,
    prompt_tokens         integer NOT NULL DEFAULT 0,
    completion_tokens     integer NOT NULL DEFAULT 0,
    total_tokens          integer NOT NULL DEFAULT 0,
    cost_micros           integer NOT NULL DEFAULT 0,
    latency_ms            integer NOT NULL,
    upstream_latency_ms   integer,
    status_code           integer NOT NULL,
    is_error              integer NOT NULL DEFAULT 0,
    error_message         text,
    streamed              integer NOT NULL DEFAULT 0,
    client_disconnected   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, created_at)
);
CREATE INDEX IF NOT EXISTS usage_logs_user_time_idx ON usage_logs (user_id, created_at DESC, request_id DESC);
CREATE INDEX IF NOT EXISTS usage_logs_key_time_idx ON usage_logs (api_key_id, created_at DESC);

-- Durable mirror of quota usage (the Redis counters are the fast copy).
CREATE TABLE IF NOT EXISTS rate_limit_state (
    api_key_id    blob NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    window_kind   text NOT NULL CHECK (window_kind IN ('day', 'month')),
    window_start  text NOT NULL,
    used_tokens   integer NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    updated_at    text NOT NULL,
    PRIMARY KEY (api_key_id, window_kind, window_start)
);

CREATE TABLE IF NOT EXISTS model_prices (
    model                            text PRIMARY KEY,
    input_micros_per_million_tokens  integer NOT NULL CHECK (input_micros_per_million_tokens >= 0),
    output_micros_per_million_tokens integer NOT NULL CHECK (output_micros_per_million_tokens >= 0),
    updated_at                       text NOT NULL
);

CREATE TABLE IF NOT EXISTS credit_ledger (
    id                    blob PRIMARY KEY,
    user_id               blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount_micros         integer NOT NULL,
    balance_after_micros  integer NOT NULL,
    reason                text NOT NULL,
    reference             text,
    created_at            text NOT NULL,
    UNIQUE (user_id, reference)
);
CREATE INDEX IF NOT EXISTS credit_ledger_user_time_idx ON credit_ledger (user_id, created_at DESC);

CREATE TABLE IF NOT EXISTS invoices (
    id                    blob PRIMARY KEY,
    user_id               blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    period_start          text NOT NULL,
    period_end            text NOT NULL CHECK (period_end > period_start),
    subscription_micros   integer NOT NULL DEFAULT 0,
    usage_micros          integer NOT NULL DEFAULT 0,
    credits_applied_micros integer NOT NULL DEFAULT 0,
    total_micros          integer NOT NULL DEFAULT 0,
    status                text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'open', 'paid', 'void')),
    created_at            text NOT NULL,
    paid_at               text,
    UNIQUE (user_id, period_start)
);

CREATE TABLE IF NOT EXISTS payment_transactions (
    id              blob PRIMARY KEY,
    user_id         blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    invoice_id      blob REFERENCES invoices (id) ON DELETE SET NULL,
    provider        text NOT NULL,
    provider_ref    text UNIQUE,
    amount_micros   integer NOT NULL,
    currency        text NOT NULL DEFAULT 'USD',
    status          text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    created_at      text NOT NULL,
    updated_at      text NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_transactions_user_idx ON payment_transactions (user_id, created_at DESC);
