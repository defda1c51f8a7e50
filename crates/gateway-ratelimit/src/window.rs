//! Calendar arithmetic shared by the adapters.

use time::OffsetDateTime;

/// Seconds counted by a per-minute window: the current second and the 60 before it.
pub const WINDOW_SECS: i64 = 61;

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
