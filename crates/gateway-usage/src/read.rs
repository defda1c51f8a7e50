//! The rules of reading usage back: whose usage a caller may read, page sizes and cursors of
//! the log, the range of statistics. The queries themselves are [`UsageQueries`]'.

use std::sync::Arc;

use gateway_core::{ApiKeyId, RequestId, Role, UserId};
use time::{Date, Duration, OffsetDateTime};

use crate::query::{
    GroupBy, LogQuery, PlatformTotals, StatsQuery, StatsRow, StatusFilter, UsageQueries,
};
use crate::{UsageError, UsageRecord};

/// Log entries per page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 20;
/// The most log entries one page holds.
pub const MAX_PAGE: u32 = 100;
/// The statistics' range when the caller gives no start: 30 UTC days, the last one included.
pub const DEFAULT_RANGE: Duration = Duration::days(30);
/// The longest range statistics cover at once.
pub const MAX_RANGE: Duration = Duration::days(366);

/// The UTC day of `t`.
fn day_of(t: OffsetDateTime) -> Date {
    t.to_offset(time::UtcOffset::UTC).date()
}

/// The first UTC day after a range ending at `t`: `t`'s own day when `t` is its midnight, else
/// the next (a range covers whole days).
fn day_after(t: OffsetDateTime) -> Date {
    let t = t.to_offset(time::UtcOffset::UTC);
    if t.time() == time::Time::MIDNIGHT {
        t.date()
    } else {
        t.date().next_day().unwrap_or(t.date())
    }
}

fn midnight(d: Date) -> OffsetDateTime {
    d.midnight().assume_utc()
}

/// Who is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reader {
    pub user_id: UserId,
    pub role: Role,
}

/// Why a read was refused; the messages are safe to show.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("invalid '{param}': {message}")]
    Invalid { param: &'static str, message: &'static str },
    /// Only administrators may read another user's usage.
    #[error("only administrators may read another user's usage")]
    NotYours,
    #[error(transparent)]
    Store(#[from] UsageError),
}

fn invalid(param: &'static str, message: &'static str) -> ReadError {
    ReadError::Invalid { param, message }
}

/// A page of the log as asked for; `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogsRequest {
    /// Another user's id (administrators only).
    pub user_id: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    pub model: Option<String>,
    pub key_id: Option<ApiKeyId>,
    pub status: Option<StatusFilter>,
}

/// One page of the log, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    pub data: Vec<UsageRecord>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// Statistics as asked for. Statistics cover whole UTC days: `from` counts from the start of
/// its day, `to` to the end of its day (a `to` at midnight stops at that midnight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsRequest {
    pub user_id: Option<String>,
    /// Default: [`DEFAULT_RANGE`] before `to`.
    pub from: Option<OffsetDateTime>,
    /// Default: the end of today (UTC).
    pub to: Option<OffsetDateTime>,
    pub group_by: GroupBy,
}

/// Statistics over `[from, to)`, both UTC midnights.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsPage {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub data: Vec<StatsRow>,
}

/// Reads usage under the rules above.
pub struct UsageReader {
    queries: Arc<dyn UsageQueries>,
}

impl std::fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageReader").finish_non_exhaustive()
    }
}

impl UsageReader {
    pub fn new(queries: Arc<dyn UsageQueries>) -> Self {
        Self { queries }
    }

    pub async fn logs(&self, reader: Reader, req: LogsRequest) -> Result<LogPage, ReadError> {
        let user_id = subject(reader, req.user_id.as_deref())?;
        let limit = req.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(invalid("limit", "must be 1 to 100"));
        }
        let before = req
            .cursor
            .as_deref()
            .map(|c| decode_cursor(c).ok_or(invalid("cursor", "is not a cursor of this API")))
            .transpose()?;
        let query = LogQuery {
            user_id,
            before,
            limit,
            model: req.model,
            key_id: req.key_id,
            status: req.status,
            retained_at: Some(OffsetDateTime::now_utc()),
        };
        let data = self.queries.logs(&query).await?;
        let next_cursor = (data.len() == limit as usize)
            .then(|| data.last().map(|r| encode_cursor(r.created_at, r.request_id)))
            .flatten();
        Ok(LogPage { data, next_cursor })
    }

    pub async fn stats(&self, reader: Reader, req: StatsRequest) -> Result<StatsPage, ReadError> {
        let user_id = subject(reader, req.user_id.as_deref())?;
        let to = day_after(req.to.unwrap_or_else(OffsetDateTime::now_utc));
        let from = req.from.map_or(to - DEFAULT_RANGE, day_of);
        if from >= to {
            return Err(invalid("from", "must be before 'to'"));
        }
        if to - from > MAX_RANGE {
            return Err(invalid("from", "the range may span at most 366 days"));
        }
        let query = StatsQuery { user_id, from, to, group_by: req.group_by };
        let data = self.queries.stats(&query).await?;
        Ok(StatsPage { from: midnight(from), to: midnight(to), data })
    }

    /// Every user's usage on the UTC days `[from, to)`, for administrators only.
    pub async fn platform(
        &self,
        reader: Reader,
        from: Date,
        to: Date,
    ) -> Result<PlatformTotals, ReadError> {
        if reader.role != Role::Admin {
            return Err(ReadError::NotYours);
        }
        if from >= to || to - from > MAX_RANGE {
            return Err(invalid("from", "the range must be 1 to 366 days"));
        }
        Ok(self.queries.platform(from, to).await?)
    }
}

/// The user whose usage to read: the reader, or for an administrator the one asked for.
fn subject(reader: Reader, asked: Option<&str>) -> Result<UserId, ReadError> {
    match asked {
        None => Ok(reader.user_id),
        Some(_) if reader.role != Role::Admin => Err(ReadError::NotYours),
        Some(id) => id.parse().map_err(|_| invalid("user_id", "must be a user id")),
    }
}

/// An opaque cursor: the last record's time (microseconds) and id.
fn encode_cursor(t: OffsetDateTime, id: RequestId) -> String {
    format!("{}.{id}", t.unix_timestamp_nanos() / 1000)
}

fn decode_cursor(s: &str) -> Option<(OffsetDateTime, RequestId)> {
    let (micros, id) = s.split_once('.')?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros.parse::<i128>().ok()? * 1000).ok()?;
    Some((t, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InMemoryUsageStore, UsageStore};

    fn reader(role: Role) -> Reader {
        Reader { user_id: UserId::new(), role }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000).unwrap();
        let id = RequestId::new();
        assert_eq!(decode_cursor(&encode_cursor(t, id)), Some((t, id)));
        assert_eq!(decode_cursor("x' OR 1=1--"), None);
    }

    #[tokio::test]
    async fn only_administrators_read_other_users_usage() {
        let reader_of = UsageReader::new(Arc::new(InMemoryUsageStore::default()));
        let other = UserId::new().to_string();
        let asked = LogsRequest { user_id: Some(other.clone()), ..LogsRequest::default() };
        let user = reader(Role::User);
        assert!(matches!(reader_of.logs(user, asked.clone()).await, Err(ReadError::NotYours)));
        assert!(reader_of.logs(reader(Role::Admin), asked).await.is_ok());
        let garbage = LogsRequest { user_id: Some("me".into()), ..LogsRequest::default() };
        let e = reader_of.logs(reader(Role::Admin), garbage).await.unwrap_err();
        assert!(matches!(e, ReadError::Invalid { param: "user_id", .. }));
    }

    #[tokio::test]
    async fn the_log_pages_through_every_record_once() {
        let store = Arc::new(InMemoryUsageStore::default());
        let user = reader(Role::User);
        let records: Vec<UsageRecord> = (0..5)
            .map(|i| UsageRecord {
                user_id: user.user_id,
                created_at: OffsetDateTime::from_unix_timestamp(1_800_000_000 + i).unwrap(),
                ..UsageRecord::example()
            })
            .collect();
        store.insert_batch(&records).await.unwrap();
        let read = UsageReader::new(store);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = read
                .logs(user, LogsRequest { cursor, limit: Some(2), ..LogsRequest::default() })
                .await
                .unwrap();
            seen.extend(page.data.iter().map(|r| r.request_id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected: Vec<RequestId> = records.iter().rev().map(|r| r.request_id).collect();
        expected.dedup();
        assert_eq!(seen, expected, "newest first, each once");
        for limit in [0, 101] {
            let e = read
                .logs(user, LogsRequest { limit: Some(limit), ..LogsRequest::default() })
                .await
                .unwrap_err();
            assert!(matches!(e, ReadError::Invalid { param: "limit", .. }));
        }
    }

    #[tokio::test]
    async fn statistics_cover_at_most_a_year_forwards_in_time() {
        let read = UsageReader::new(Arc::new(InMemoryUsageStore::default()));
        let user = reader(Role::User);
        let to = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ask = |from| StatsRequest { user_id: None, from, to: Some(to), group_by: GroupBy::Day };
        let page = read.stats(user, ask(None)).await.unwrap();
        let end = midnight(day_of(to).next_day().unwrap());
        assert_eq!(
            (page.from, page.to),
            (end - DEFAULT_RANGE, end),
            "whole days, the last included"
        );
        let at_midnight = midnight(day_of(to));
        let page = read
            .stats(
                user,
                StatsRequest {
                    to: Some(at_midnight),
                    ..ask(Some(at_midnight - Duration::hours(1)))
                },
            )
            .await
            .unwrap();
        assert_eq!((page.from, page.to), (at_midnight - Duration::days(1), at_midnight));
        for from in [to + Duration::days(1), to - Duration::days(367)] {
            let e = read.stats(user, ask(Some(from))).await.unwrap_err();
            assert!(matches!(e, ReadError::Invalid { param: "from", .. }));
        }
    }
}
