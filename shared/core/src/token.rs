//! Token formats. Every Paddock secret is `prefix` + 12-character id +
//! 32-character random secret + 6-character CRC32 checksum, all base62, so
//! secret scanners can recognize and verify them. Only a SHA-256 of the whole
//! token is stored; the id locates the row, the hash is compared in constant
//! time.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECK_LEN: usize = 6;
/// Length of every token.
pub const TOKEN_LEN: usize = 4 + ID_LEN + SECRET_LEN + CHECK_LEN;

/// What a token is for, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `pdk_`: an API key of a member or agent.
    ApiKey,
    /// `pdi_`: a single-use invite code.
    Invite,
    /// `pdb_`: the platform bootstrap token.
    Bootstrap,
    /// `pds_`: service credentials for service-to-service calls.
    Service,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "pdk_",
            TokenKind::Invite => "pdi_",
            TokenKind::Bootstrap => "pdb_",
            TokenKind::Service => "pds_",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Self> {
        [
            TokenKind::ApiKey,
            TokenKind::Invite,
            TokenKind::Bootstrap,
            TokenKind::Service,
        ]
        .into_iter()
        .find(|k| k.prefix() == prefix)
    }
}

/// Why a string is not a well-formed token. The messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token contains non-ASCII characters")]
    NonAscii,
    #[error("token has an unknown prefix (expected pdk_, pdi_, pdb_ or pds_)")]
    UnknownPrefix,
    #[error("token has the wrong length (expected {TOKEN_LEN} characters)")]
    Length,
    #[error("token contains characters outside base62")]
    Alphabet,
    #[error("token checksum does not match (truncated or mistyped?)")]
    Checksum,
}

/// A token that passed the format and checksum checks. Its secret is still
/// unverified.
#[derive(Clone, Copy)]
pub struct ParsedToken<'a> {
    pub kind: TokenKind,
    /// The public id: safe to log, names the key row.
    pub id: &'a str,
    raw: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedToken")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ParsedToken<'_> {
    /// SHA-256 of the whole token, hex.
    pub fn hash(&self) -> String {
        hash(self.raw)
    }

    /// Compares against a stored hash in constant time.
    pub fn matches(&self, stored_hash: &str) -> bool {
        self.hash().as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

/// Mints a new token: returns (id, token).
pub fn mint(kind: TokenKind) -> (String, String) {
    let mut rng = rand::rng();
    let mut body = String::with_capacity(TOKEN_LEN);
    body.push_str(kind.prefix());
    for _ in 0..ID_LEN + SECRET_LEN {
        body.push(BASE62[rng.random_range(0..BASE62.len())] as char);
    }
    let check = checksum(&body);
    body.push_str(&check);
    let id = body[4..4 + ID_LEN].to_owned();
    (id, body)
}

/// A well-formed token that names the key `id`, with a fresh random secret
/// (for probes and tests: it authenticates as nothing).
pub fn mint_with_id(kind: TokenKind, id: &str) -> String {
    let (_, minted) = mint(kind);
    let body = format!(
        "{}{id}{}",
        kind.prefix(),
        &minted[4 + ID_LEN..4 + ID_LEN + SECRET_LEN]
    );
    let check = checksum(&body);
    body + &check
}

/// Checks the format and checksum of a token.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if !token.is_ascii() {
        return Err(TokenError::NonAscii);
    }
    let kind = token
        .get(..4)
        .and_then(TokenKind::from_prefix)
        .ok_or(TokenError::UnknownPrefix)?;
    if token.len() != TOKEN_LEN {
        return Err(TokenError::Length);
    }
    if !token[4..].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TokenError::Alphabet);
    }
    let (body, check) = token.split_at(TOKEN_LEN - CHECK_LEN);
    if checksum(body) != check {
        return Err(TokenError::Checksum);
    }
    Ok(ParsedToken {
        kind,
        id: &token[4..4 + ID_LEN],
        raw: token,
    })
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.as_bytes()))
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_verify() {
        let (id, token) = mint(TokenKind::ApiKey);
        assert!(token.starts_with("pdk_"));
        assert_eq!(token.len(), TOKEN_LEN);
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(parsed.kind, TokenKind::ApiKey);
        assert!(parsed.matches(&hash(&token)));
        let (_, other) = mint(TokenKind::ApiKey);
        assert!(!parsed.matches(&hash(&other)));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let (_, token) = mint(TokenKind::Invite);
        assert_eq!(parse("").unwrap_err(), TokenError::Empty);
        assert_eq!(parse("pdk_é").unwrap_err(), TokenError::NonAscii);
        assert_eq!(parse("xyz_abc").unwrap_err(), TokenError::UnknownPrefix);
        assert_eq!(
            parse(&token[..TOKEN_LEN - 1]).unwrap_err(),
            TokenError::Length
        );
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            parse(std::str::from_utf8(&flipped).unwrap()).unwrap_err(),
            TokenError::Checksum
        );
        let mut bad = token.into_bytes();
        bad[10] = b'-';
        assert_eq!(
            parse(std::str::from_utf8(&bad).unwrap()).unwrap_err(),
            TokenError::Alphabet
        );
    }
}
