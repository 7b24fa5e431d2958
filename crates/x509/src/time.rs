//! Certificate times: UTCTime through 2049, GeneralizedTime from 2050
//! (RFC 5280, section 4.1.2.5), always in UTC with seconds.

use crate::derw;

/// (year, month, day) from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down UTC time of Unix seconds.
pub fn ymdhms(unix: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        ((secs % 3600) / 60) as u32,
        (secs % 60) as u32,
    )
}

/// The DER `Time` (UTCTime or GeneralizedTime) of Unix seconds; `None`
/// outside 1950–9999.
pub fn encode(unix: i64) -> Option<Vec<u8>> {
    let (y, mo, d, h, mi, s) = ymdhms(unix);
    if !(1950..=9999).contains(&y) {
        return None;
    }
    Some(if y < 2050 {
        derw::tlv(
            0x17,
            format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes(),
        )
    } else {
        derw::tlv(
            0x18,
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    })
}

/// Appends `n` as `width` decimal digits.
fn digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for k in (0..width).rev() {
        out.push(b'0' + ((n / 10u32.pow(k)) % 10) as u8);
    }
}

/// Appends the DER `Time` of Unix seconds to `out` (as [`encode`] makes
/// it, without allocating); `generalized` forces GeneralizedTime. False
/// (and nothing appended) outside the years the form can hold.
pub fn encode_into(unix: i64, generalized: bool, out: &mut Vec<u8>) -> bool {
    let (y, mo, d, h, mi, s) = ymdhms(unix);
    let utc = !generalized && (1950..2050).contains(&y);
    if !utc && !(if generalized { 0..=9999 } else { 2050..=9999 }).contains(&y) {
        return false;
    }
    let y = y as u32;
    if utc {
        out.extend_from_slice(&[0x17, 13]);
        digits(out, y % 100, 2);
    } else {
        out.extend_from_slice(&[0x18, 15]);
        digits(out, y, 4);
    }
    for v in [mo, d, h, mi, s] {
        digits(out, v, 2);
    }
    out.push(b'Z');
    true
}

/// RFC 3339 text of Unix seconds, for messages.
pub fn rfc3339(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = ymdhms(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(2_524_607_999), "2049-12-31T23:59:59Z");
        assert_eq!(encode(2_524_607_999).unwrap()[0], 0x17);
        assert_eq!(
            encode(2_524_608_000).unwrap(),
            derw::tlv(0x18, b"20500101000000Z")
        );
        assert_eq!(
            encode(1_700_000_000).unwrap(),
            derw::tlv(0x17, b"231114221320Z")
        );
    }
}
