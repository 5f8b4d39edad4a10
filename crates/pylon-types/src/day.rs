//! Calendar days in UTC, for daily aggregates and budget periods.

/// `YYYY-MM-DD` (UTC) of a Unix time, by the days-from-civil algorithm.
pub fn civil_day(unix_secs: i64) -> String {
    let (y, m, d) = ymd(unix_secs);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM` (UTC) of a Unix time.
pub fn civil_month(unix_secs: i64) -> String {
    let (y, m, _) = ymd(unix_secs);
    format!("{y:04}-{m:02}")
}

/// `YYYYMMDDTHHMMSSZ` (UTC) of a Unix time: sortable, and safe in a file name.
pub fn civil_stamp(unix_secs: i64) -> String {
    let (y, m, d) = ymd(unix_secs);
    let s = unix_secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn ymd(unix_secs: i64) -> (i64, i64, i64) {
    let z = unix_secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months() {
        assert_eq!(civil_day(0), "1970-01-01");
        assert_eq!(civil_day(1_795_400_000), "2026-11-23");
        assert_eq!(civil_day(951_782_400), "2000-02-29");
        assert_eq!(civil_month(1_795_400_000), "2026-11");
        assert_eq!(civil_stamp(1_795_400_000 + 3_723), "20261123T031523Z");
    }
}
