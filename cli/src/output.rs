//! What commands print: human tables by default, JSON with `-o json`. The
//! JSON is built from the proto messages field by field (prost types carry
//! no serde), with times as RFC 3339 strings.

use paddock_proto::authz::v1::{CheckResponse, Link, Reason};
use paddock_proto::identity::v1::{
    Agent, ApiKey, Member, Organization, Principal, PrincipalKind, Project,
};
use serde_json::{Value, json};

/// `-o table|json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Writes one line on stdout. A closed stdout (the reader went away) ends
/// the process with success, as for `grep`; any other write error with 1.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        std::process::exit(if e.kind() == std::io::ErrorKind::BrokenPipe {
            0
        } else {
            1
        });
    }
}

/// Prints a JSON value on stdout, pretty.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => outln!("{s}"),
        Err(_) => outln!("{value}"),
    }
}

/// The one shape of every list with `-o json`: `{"items": [...],
/// "next_page_token": null}` (the CLI reads every page, so there is no next
/// page unless a command says it stopped early).
pub fn list_json(items: impl IntoIterator<Item = Value>) -> Value {
    json!({
        "items": items.into_iter().collect::<Vec<_>>(),
        "next_page_token": Value::Null,
    })
}

/// Prints [`list_json`].
pub fn print_list(items: impl IntoIterator<Item = Value>) {
    print_json(&list_json(items));
}

/// A timestamp as RFC 3339 UTC with second precision, e.g. `2025-03-01T12:00:00Z`
/// (prost-types' format, without the fraction).
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    prost_types::Timestamp {
        seconds: ts.seconds,
        nanos: 0,
    }
    .to_string()
}

fn ts_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// A timestamp for a table cell; `-` when unset.
pub fn ts_cell(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), rfc3339)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

pub fn organization_json(o: &Organization) -> Value {
    let settings = o.settings.unwrap_or_default();
    json!({
        "name": o.name,
        "display_name": o.display_name,
        "settings": {
            "max_key_lifetime_seconds": settings.max_key_lifetime.map(|d| d.seconds),
            "allow_non_expiring_keys": settings.allow_non_expiring_keys,
        },
        "create_time": ts_json(o.create_time.as_ref()),
    })
}

pub fn member_json(m: &Member) -> Value {
    json!({
        "name": m.name,
        "email": m.email,
        "role": m.role,
        "create_time": ts_json(m.create_time.as_ref()),
    })
}

pub fn agent_json(a: &Agent) -> Value {
    json!({
        "name": a.name,
        "description": a.description,
        "role": a.role,
        "created_by": a.created_by,
        "create_time": ts_json(a.create_time.as_ref()),
    })
}

pub fn project_json(p: &Project) -> Value {
    json!({
        "name": p.name,
        "display_name": p.display_name,
        "description": p.description,
        "created_by": p.created_by,
        "create_time": ts_json(p.create_time.as_ref()),
        "update_time": ts_json(p.update_time.as_ref()),
    })
}

pub fn api_key_json(k: &ApiKey) -> Value {
    json!({
        "name": k.name,
        "display_name": k.display_name,
        "owner": k.owner,
        "role": k.role,
        "scope": k.scope,
        "expire_time": ts_json(k.expire_time.as_ref()),
        "created_by": k.created_by,
        "create_time": ts_json(k.create_time.as_ref()),
        "last_used_time": ts_json(k.last_used_time.as_ref()),
        "revoke_time": ts_json(k.revoke_time.as_ref()),
        "sandbox": k.sandbox,
        "state": key_state(k, now_seconds()),
    })
}

pub fn principal_json(p: &Principal) -> Value {
    json!({
        "id": p.id,
        "kind": kind_name(p.kind),
        "name": p.name,
        "organization": p.organization,
        "role": p.role,
        "key_role": p.key_role,
        "scope": p.scope,
        "key_id": p.key_id,
        "display_name": p.display_name,
        "key_expire_time": ts_json(p.key_expire_time.as_ref()),
    })
}

pub fn reason_json(r: &Reason) -> Value {
    json!({
        "summary": r.summary,
        "missing": link_name(r.missing),
        "granted_by_permission": r.granted_by_permission,
        "role": r.role,
        "key_role": r.key_role,
        "scope": r.scope,
    })
}

pub fn check_json(c: &CheckResponse) -> Value {
    json!({
        "allowed": c.allowed,
        "reason": c.reason.as_ref().map_or(Value::Null, reason_json),
    })
}

/// `member`, `agent`, ... for a principal kind number.
pub fn kind_name(kind: i32) -> &'static str {
    match PrincipalKind::try_from(kind).unwrap_or(PrincipalKind::Unspecified) {
        PrincipalKind::Unspecified => "unspecified",
        PrincipalKind::Member => "member",
        PrincipalKind::Agent => "agent",
        PrincipalKind::Service => "service",
        PrincipalKind::Platform => "platform",
    }
}

fn link_name(link: i32) -> Value {
    match Link::try_from(link).unwrap_or(Link::Unspecified) {
        Link::Unspecified => Value::Null,
        Link::Role => "role".into(),
        Link::KeyRole => "key_role".into(),
        Link::Scope => "scope".into(),
        Link::Organization => "organization".into(),
        Link::Ownership => "ownership".into(),
        Link::UnknownPermission => "unknown_permission".into(),
        Link::PrincipalKind => "principal_kind".into(),
    }
}

pub fn now_seconds() -> i64 {
    paddock_shared::time::now_micros() / 1_000_000
}

/// `active`, `revoked` or `expired`.
pub fn key_state(k: &ApiKey, now: i64) -> &'static str {
    if k.revoke_time.is_some() {
        "revoked"
    } else if k.expire_time.as_ref().is_some_and(|t| t.seconds <= now) {
        "expired"
    } else {
        "active"
    }
}

/// A plain text table: a header row and aligned columns, two spaces apart.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, cell) in cells.into_iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(cell.chars().count())
                        + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(self.header.clone());
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }

    pub fn print(&self) {
        outln!("{}", self.render());
    }
}

/// `label: value` lines, labels aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        outln!("{k:<width$}  {v}", k = format!("{k}:"), width = width + 1);
    }
}

pub fn organization_fields(o: &Organization) -> Vec<(&'static str, String)> {
    let settings = o.settings.unwrap_or_default();
    vec![
        ("name", o.name.clone()),
        ("display name", or_dash(&o.display_name)),
        (
            "max key lifetime",
            settings
                .max_key_lifetime
                .map_or_else(|| "-".to_owned(), |d| human_seconds(d.seconds)),
        ),
        (
            "non-expiring keys",
            if settings.allow_non_expiring_keys {
                "allowed"
            } else {
                "not allowed"
            }
            .to_owned(),
        ),
        ("created", ts_cell(o.create_time.as_ref())),
    ]
}

pub fn agent_fields(a: &Agent) -> Vec<(&'static str, String)> {
    vec![
        ("name", a.name.clone()),
        ("role", a.role.clone()),
        ("description", or_dash(&a.description)),
        ("created by", or_dash(&a.created_by)),
        ("created", ts_cell(a.create_time.as_ref())),
    ]
}

pub fn project_fields(p: &Project) -> Vec<(&'static str, String)> {
    vec![
        ("name", p.name.clone()),
        ("display name", or_dash(&p.display_name)),
        ("description", or_dash(&p.description)),
        ("created by", or_dash(&p.created_by)),
        ("created", ts_cell(p.create_time.as_ref())),
        ("updated", ts_cell(p.update_time.as_ref())),
    ]
}

pub fn api_key_fields(k: &ApiKey) -> Vec<(&'static str, String)> {
    vec![
        ("name", k.name.clone()),
        ("display name", or_dash(&k.display_name)),
        ("owner", k.owner.clone()),
        (
            "role",
            if k.role.is_empty() {
                "follows owner".to_owned()
            } else {
                k.role.clone()
            },
        ),
        ("scope", scope_cell(&k.scope)),
        (
            "expires",
            k.expire_time
                .as_ref()
                .map_or_else(|| "never".to_owned(), rfc3339),
        ),
        ("state", key_state(k, now_seconds()).to_owned()),
    ]
}

pub fn principal_fields(p: &Principal) -> Vec<(&'static str, String)> {
    let mut fields = vec![("kind", kind_name(p.kind).to_owned()), ("id", p.id.clone())];
    if !p.name.is_empty() {
        fields.push(("name", p.name.clone()));
    }
    if !p.display_name.is_empty() {
        fields.push(("display name", p.display_name.clone()));
    }
    if !p.organization.is_empty() {
        fields.push(("organization", p.organization.clone()));
    }
    if !p.role.is_empty() {
        fields.push(("role", p.role.clone()));
    }
    if !p.key_id.is_empty() {
        fields.push(("key", p.key_id.clone()));
    }
    // Key role, scope and expiry only mean something for org principals.
    if !p.key_id.is_empty() && matches!(kind_name(p.kind), "member" | "agent") {
        fields.push((
            "key role",
            if p.key_role.is_empty() {
                "follows owner".to_owned()
            } else {
                p.key_role.clone()
            },
        ));
        fields.push(("key scope", scope_cell(&p.scope)));
        fields.push((
            "key expires",
            p.key_expire_time
                .as_ref()
                .map_or_else(|| "never".to_owned(), rfc3339),
        ));
    }
    fields
}

pub fn scope_cell(scope: &[String]) -> String {
    if scope.is_empty() {
        "unscoped".to_owned()
    } else {
        scope.join(",")
    }
}

/// `90d`, `12h`, `45s`: the largest unit that divides evenly.
pub fn human_seconds(secs: i64) -> String {
    if secs < 0 {
        return format!("{secs}s");
    }
    paddock_shared::units::human_seconds(secs as u64)
}

/// `8 GiB`, `64 KiB`, `100 bytes`.
pub fn human_bytes(bytes: i64) -> String {
    paddock_shared::units::human_bytes(bytes.max(0) as u64)
}

/// `member` for `PRINCIPAL_KIND_MEMBER` (the audit trail stores the proto
/// name); other text passes through lowercased.
pub fn kind_short(kind: &str) -> String {
    kind.strip_prefix("PRINCIPAL_KIND_")
        .unwrap_or(kind)
        .to_ascii_lowercase()
}

/// The owner column of a key: `members/abc`, `agents/bot`.
pub fn owner_cell(owner: &str) -> String {
    let parts: Vec<&str> = owner.split('/').collect();
    match parts.as_slice() {
        ["organizations", _, collection, id] => format!("{collection}/{id}"),
        _ => or_dash(owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        assert_eq!(rfc3339(&ts(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&ts(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(&ts(1_735_689_599)), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(&ts(-1)), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "ROLE"]);
        t.row(vec!["alice@example.com".into(), "owner".into()]);
        t.row(vec!["bob".into(), "developer".into()]);
        assert_eq!(
            t.render(),
            "NAME               ROLE\nalice@example.com  owner\nbob                developer"
        );
    }

    #[test]
    fn key_states() {
        let mut k = ApiKey {
            expire_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(key_state(&k, 50), "active");
        assert_eq!(key_state(&k, 100), "expired");
        k.revoke_time = Some(prost_types::Timestamp::default());
        assert_eq!(key_state(&k, 50), "revoked");
        k = ApiKey::default();
        assert_eq!(key_state(&k, i64::MAX), "active");
    }

    #[test]
    fn humane_cells() {
        assert_eq!(human_seconds(90 * 86_400), "90d");
        assert_eq!(human_seconds(7200), "2h");
        assert_eq!(human_seconds(45), "45s");
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(kind_short("PRINCIPAL_KIND_MEMBER"), "member");
        assert_eq!(kind_short("service"), "service");
        assert_eq!(
            list_json([json!(1)]),
            json!({"items": [1], "next_page_token": null})
        );
        assert_eq!(owner_cell("organizations/acme/agents/bot"), "agents/bot");
        assert_eq!(owner_cell(""), "-");
    }
}
