//! Usage records of the BluesMinds gateway: the `UsageSink` port that takes exactly one record
//! per request off the hot path, the batched writer (bounded channel, multi-row inserts, retry
//! with backoff, spill to a local file, flush on shutdown), and the stats and log queries.
//!
//! Status: the crate exists so the workspace has its final shape; it lands with the usage
//! issue. The table it writes, `usage_logs`, already exists (monthly partitions on Postgres,
//! `(request_id, created_at)` as the key that refuses double counting).
