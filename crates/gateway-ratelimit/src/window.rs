//! Calendar arithmetic shared by the adapters.

use time::OffsetDateTime;

/// One-second buckets a per-minute window counts: the current second and the 60 before it.
pub const DEFAULT_BUCKETS: i64 = 61;

/// Buckets for a window of `window` (at least one second), the current second included.
pub fn buckets_for(window: std::time::Duration) -> i64 {
    i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2).max(1) + 1
}

/// The first day of a `YYYYMMDD` (or, with `01` appended by the caller, `YYYYMM`) period.
pub fn date_of(yyyymmdd: u32) -> time::Date {
    let month = time::Month::try_from((yyyymmdd / 100 % 100) as u8).unwrap_or(time::Month::January);
    time::Date::from_calendar_date((yyyymmdd / 10_000) as i32, month, (yyyymmdd % 100) as u8)
        .unwrap_or(time::Date::MIN)
}

/// `YYYYMMDD`, `YYYYMM`, seconds to the next UTC midnight and to the next month.
pub fn periods(now_ms: i64) -> (u32, u32, u64, u64) {
    let now = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let date = now.date();
    let day =
        date.year() as u32 * 10_000 + u32::from(date.month() as u8) * 100 + u32::from(date.day());
    let month = day / 100;
    let next_day = date.next_day().map_or(now, |d| d.midnight().assume_utc());
    let (y, m) = if date.month() == time::Month::December {
        (date.year() + 1, time::Month::January)
    } else {
        (date.year(), date.month().next())
    };
    let next_month =
        time::Date::from_calendar_date(y, m, 1).map_or(now, |d| d.midnight().assume_utc());
    let secs = |t: OffsetDateTime| u64::try_from((t - now).whole_seconds()).unwrap_or(0).max(1);
    (day, month, secs(next_day), secs(next_month))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_roll_over_at_utc_midnight_and_month_end() {
        let ms = time::macros::datetime!(2026-12-31 23:59:30 UTC).unix_timestamp() * 1000;
        assert_eq!(periods(ms), (20_261_231, 202_612, 30, 30));
        let ms = time::macros::datetime!(2027-01-01 00:00:00 UTC).unix_timestamp() * 1000;
        assert_eq!(periods(ms).0, 20_270_101);
    }
}
