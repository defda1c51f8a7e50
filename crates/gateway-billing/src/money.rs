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
}
