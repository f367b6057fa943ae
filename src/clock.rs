//! Timestamps as operators read them: RFC 3339 in UTC (`/v1/status`, `meridian geoip`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const MILLIS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-01-01T00:00:00.000Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    format(t, MILLIS)
}

/// `2026-01-01T00:00:00Z` from a Unix time.
pub fn rfc3339_epoch(epoch: u64) -> String {
    format(UNIX_EPOCH + Duration::from_secs(epoch), SECONDS)
}

/// An RFC 3339 time (`2026-12-01T16:00:00Z`, any offset); `None` when it is not one or lies
/// before 1970.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

fn format(t: SystemTime, f: &[BorrowedFormatItem<'_>]) -> String {
    OffsetDateTime::from(t)
        .format(f)
        .unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_format_as_utc() {
        assert_eq!(rfc3339_epoch(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_epoch(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339_epoch(951_827_696), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn rfc3339_parses_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_225_599_250);
        assert_eq!(parse_rfc3339(&rfc3339_millis(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        );
        assert_eq!(parse_rfc3339("tomorrow"), None);
        assert_eq!(parse_rfc3339("1960-01-01T00:00:00Z"), None);
    }

    #[test]
    fn times_format_as_utc_with_milliseconds() {
        for (secs, millis, text) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_767_225_599, 999, "2025-12-31T23:59:59.999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(rfc3339_millis(t), text);
        }
    }
}
