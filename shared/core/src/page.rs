//! Page tokens: one format for every list RPC.
//!
//! A token is opaque to the client (hex of a 16-byte digest and the cursor)
//! and bound to the request that produced it: the digest covers the
//! organization and every filter of the query (a [`Query`]). A token
//! replayed against another organization or another filter is refused with
//! INVALID_ARGUMENT rather than silently continuing a different listing.
//! The digest is not a secret: every query is scoped to the caller's
//! organization anyway, so a forged token can only move the cursor inside
//! rows the caller may already list.

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A page when the request names no size.
pub const DEFAULT_SIZE: i64 = 50;

/// The longest token accepted, in characters (a cursor is an id and a
/// time, far shorter).
const MAX_TOKEN: usize = 512;

const DIGEST: usize = 16;

/// What a token is bound to: the RPC, the organization and the filters.
/// Build one the same way on the first and the following pages.
#[derive(Clone)]
pub struct Query {
    hasher: Sha256,
}

impl Query {
    /// A query of `rpc` (e.g. `ListAgents`) in organization `org` (empty
    /// where a listing spans none, such as an account's organizations).
    pub fn new(rpc: &str, org: &str) -> Self {
        let mut q = Query {
            hasher: Sha256::new(),
        };
        q.field(rpc);
        q.field(org);
        q
    }

    /// Adds a filter value. Each value is length-prefixed, so `("ab", "c")`
    /// and `("a", "bc")` differ.
    pub fn with(mut self, value: impl AsRef<[u8]>) -> Self {
        self.field(value);
        self
    }

    fn field(&mut self, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        self.hasher.update((value.len() as u64).to_be_bytes());
        self.hasher.update(value);
    }

    fn digest(&self) -> [u8; DIGEST] {
        let full = self.hasher.clone().finalize();
        let mut out = [0u8; DIGEST];
        out.copy_from_slice(&full[..DIGEST]);
        out
    }
}

/// A request's page: how many rows, and the cursor to continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    /// The last row's key on the previous page, as the service wrote it.
    pub after: Option<String>,
}

impl Page {
    /// Reads `page_size` (0 is [`DEFAULT_SIZE`], at most `max`) and
    /// `page_token` (empty is the first page) of a request for `query`.
    pub fn read(page_size: i32, page_token: &str, max: i64, query: &Query) -> Result<Page> {
        if page_size < 0 {
            return Err(Error::invalid("page_size must not be negative"));
        }
        let size = if page_size == 0 {
            DEFAULT_SIZE.min(max)
        } else {
            i64::from(page_size).min(max)
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token, query)?)
        };
        Ok(Page { size, after })
    }

    /// The cursor, or "" on the first page (for stores that compare keys
    /// with `>`, where every key sorts after "").
    pub fn start_after(&self) -> &str {
        self.after.as_deref().unwrap_or("")
    }

    /// The rows to fetch: one more than the page, to learn whether another
    /// page exists.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts the extra row fetched by [`Page::limit`] and returns the token
    /// of the next page (empty when this was the last), its cursor the
    /// last row's `key`.
    pub fn finish<T>(
        &self,
        rows: &mut Vec<T>,
        query: &Query,
        key: impl Fn(&T) -> String,
    ) -> String {
        if rows.len() as i64 > self.size {
            rows.truncate(usize::try_from(self.size).unwrap_or(0));
            rows.last()
                .map(|r| encode(&key(r), query))
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

/// The token continuing `query` after `cursor`.
pub fn encode(cursor: &str, query: &Query) -> String {
    let mut bytes = query.digest().to_vec();
    bytes.extend_from_slice(cursor.as_bytes());
    crate::hex::encode(&bytes)
}

/// The cursor in `token`, if the token was made for `query`.
pub fn decode(token: &str, query: &Query) -> Result<String> {
    let bad = || Error::invalid("invalid page_token");
    if token.len() > MAX_TOKEN {
        return Err(bad());
    }
    let bytes = crate::hex::decode(token).ok_or_else(bad)?;
    if bytes.len() <= DIGEST {
        return Err(bad());
    }
    let (digest, cursor) = bytes.split_at(DIGEST);
    if digest != query.digest() {
        return Err(Error::invalid(
            "page_token was issued for another query (its organization or filters differ); start again without it",
        ));
    }
    String::from_utf8(cursor.to_vec()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(org: &str) -> Query {
        Query::new("ListAgents", org)
    }

    #[test]
    fn a_token_continues_its_own_query() {
        let q = agents("acme").with("show_deleted=false");
        let token = encode("organizations/acme/agents/bot", &q);
        let page = Page::read(10, &token, 100, &q).expect("read");
        assert_eq!(page.size, 10);
        assert_eq!(page.after.as_deref(), Some("organizations/acme/agents/bot"));
    }

    #[test]
    fn a_token_from_another_organization_or_filter_is_refused() {
        let token = encode("x", &agents("acme").with("a"));
        for other in [
            agents("evil").with("a"),
            agents("acme").with("b"),
            agents("acme"),
            Query::new("ListProjects", "acme").with("a"),
        ] {
            let err = Page::read(0, &token, 100, &other).expect_err("bound");
            assert!(err.to_string().contains("another query"), "{err}");
        }
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let split = encode("x", &agents("o").with("ab").with("c"));
        assert!(decode(&split, &agents("o").with("a").with("bc")).is_err());
    }

    #[test]
    fn sizes_and_malformed_tokens() {
        let q = agents("acme");
        assert_eq!(
            Page::read(0, "", 1000, &q).expect("default").size,
            DEFAULT_SIZE
        );
        assert_eq!(Page::read(5000, "", 500, &q).expect("clamped").size, 500);
        assert!(Page::read(-1, "", 500, &q).is_err());
        for bad in [
            "zz",
            "00",
            &"a".repeat(MAX_TOKEN + 2),
            &crate::hex::encode(&q.digest()),
        ] {
            let err = Page::read(0, bad, 500, &q).expect_err(bad);
            assert!(err.to_string().contains("invalid page_token"), "{err}");
        }
    }

    #[test]
    fn finish_cuts_the_extra_row() {
        let q = agents("acme");
        let page = Page::read(2, "", 100, &q).expect("page");
        let mut rows = vec!["a", "b", "c"];
        let next = page.finish(&mut rows, &q, |r| (*r).to_owned());
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(decode(&next, &q).expect("cursor"), "b");
        let mut last = vec!["d"];
        assert_eq!(page.finish(&mut last, &q, |r| (*r).to_owned()), "");
    }
}
