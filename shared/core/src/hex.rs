//! Lowercase hex, as Paddock stores and mints it (token hashes, sealed
//! values, page tokens), through the `hex` crate.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Bytes of lowercase hex; `None` for odd length or other characters.
/// (The `hex` crate also takes uppercase; nothing Paddock writes has it, so
/// it is refused here as before.)
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    ::hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xab, 0xff];
        assert_eq!(super::encode(&bytes), "00017f80abff");
        assert_eq!(super::decode("00017f80abff").as_deref(), Some(&bytes[..]));
        assert_eq!(super::decode("0"), None);
        assert_eq!(super::decode("0G"), None);
        assert_eq!(super::decode("AB"), None);
        assert_eq!(super::decode("aB"), None);
    }
}
