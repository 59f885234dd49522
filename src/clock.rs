//! Calendar dates from the Unix clock, in UTC, without a date library: what a certificate's
//! validity and the CLI's timeline need.

/// (year, month, day) of `days` since 1970-01-01 (H. Hinnant's civil-from-days algorithm).
pub fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// `2026-12-03 14:42:05` for Unix seconds, in UTC.
pub fn utc(secs: u64) -> String {
    let (year, month, day) = civil_date((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_266_474), "2026-12-03 02:54:34");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }
}
