//! Money for people to read. Amounts are integer micro-dollars everywhere else.

/// `micros` as dollars with cents, rounded half up to the cent (`$1,234.57`); amounts under a
/// cent that are not zero show their micro-dollars' precision (`$0.0015`).
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    if m != 0 && m < 10_000 {
        let frac = format!("{m:06}");
        return format!("{sign}$0.{}", frac.trim_end_matches('0'));
    }
    let cents = (m + 5_000) / 10_000;
    format!("{sign}${}.{:02}", thousands(cents / 100), cents % 100)
}

/// `micros` as a plain dollar amount for a form field, exact and without trailing zeros
/// (`29`, `0.002`, `-1.5`).
pub fn plain(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let frac = format!("{:06}", m % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", m / 1_000_000)
    } else {
        format!("{sign}{}.{frac}", m / 1_000_000)
    }
}

/// Dollars as a person types them (`12.34`, `$0.002`, `-2.50`, `.25`; at most six decimals)
/// in micro-dollars; `None` for anything else.
pub fn parse(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let text = text.strip_prefix('$').unwrap_or(text);
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() || frac.len() > 6 || !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac: i64 = format!("{frac:0<6}").parse().ok()?;
    let micros = whole.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if negative { -micros } else { micros })
}

/// `n` with commas between groups of three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_read_as_people_write_them() {
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(29_000_000), "$29.00");
        assert_eq!(usd(1_234_567_890), "$1,234.57");
        assert_eq!(usd(2_000), "$0.002");
        assert_eq!(usd(1_500), "$0.0015");
        assert_eq!(usd(10_000), "$0.01");
        assert_eq!(usd(-65_040), "-$0.07");
        assert_eq!(thousands(14_500_000), "14,500,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn amounts_typed_in_forms_become_micro_dollars_and_back() {
        assert_eq!(parse("29"), Some(29_000_000));
        assert_eq!(parse("29.5"), Some(29_500_000));
        assert_eq!(parse("$0.002"), Some(2_000));
        assert_eq!(parse(".25"), Some(250_000));
        assert_eq!(parse("-2.50"), Some(-2_500_000));
        for bad in ["", ".", "-", "1.0000001", "abc", "1,5", "--1", "+1"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        for micros in [29_000_000, 2_000, -1_500_000, 0, 123_456_789] {
            assert_eq!(parse(&plain(micros)), Some(micros));
        }
        assert_eq!(
            (plain(29_000_000), plain(2_000), plain(-1_500_000)),
            ("29".into(), "0.002".into(), "-1.5".into())
        );
    }
}
