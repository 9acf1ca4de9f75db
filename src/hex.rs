//! Hexadecimal, as the DB's `sha256:<hex>` hashes and the cache's object names spell bytes.

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse lower- or upper-case hexadecimal of exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parse lower-case hexadecimal of exactly `N` bytes: the only spelling of the cache's object
/// names. An upper-case one is no object's: a name is compared as text wherever a listing
/// meets the names the tool writes (what a collection keeps, what it deletes), and on a
/// backend that ignores case it reaches the same file as the lower-case one.
pub fn parse_lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    parse_hex(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(parse_hex::<4>("0001ABff"), Some(b));
        assert_eq!(parse_hex::<4>("0001ab"), None);
        assert_eq!(parse_hex::<2>("zz00"), None);
        assert_eq!(parse_lower_hex::<4>("0001abff"), Some(b));
        assert_eq!(parse_lower_hex::<4>("0001ABff"), None);
        assert_eq!(parse_lower_hex::<2>("+1ab"), None);
    }
}
