//! Network rules, tool rules and credential names of an agent policy:
//! each checked and normalized on its own.

use std::net::IpAddr;

use ipnet::IpNet;
use paddock_proto::authz::v1::{Effect, NetworkRule, ToolRule};
use paddock_shared::error::{Error, Result};
use paddock_shared::names;

use crate::limits::{MAX_PATTERN, MAX_PORTS};

fn effect(field: &str, value: i32) -> Result<Effect> {
    match Effect::try_from(value) {
        Ok(e @ (Effect::Allow | Effect::Deny)) => Ok(e),
        _ => Err(Error::invalid(format!(
            "{field}.effect must be EFFECT_ALLOW or EFFECT_DENY"
        ))),
    }
}

/// A domain glob: DNS labels of `a-z0-9-`, where a label may be `*`
/// (e.g. `*.github.com`); `*` alone matches every domain. Lowercased.
fn domain_glob(field: &str, domain: &str) -> Result<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = || {
        Error::invalid(format!(
            "{field} {:?} is not a domain glob: use labels of a-z, 0-9 and '-', with * for a whole label (e.g. *.github.com)",
            names::truncate(domain)
        ))
    };
    if d.is_empty() || d.len() > MAX_PATTERN {
        return Err(bad());
    }
    for label in d.split('.') {
        let ok = label == "*"
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(d)
}

/// A CIDR such as `10.0.0.0/8` or `2001:db8::/32`, without host bits.
fn cidr(field: &str, text: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "{field} {:?} is not a CIDR: {why}",
            names::truncate(text)
        ))
    };
    let (ip, prefix) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.0.0.0/8"))?;
    let ip: IpAddr = ip.parse().map_err(|_| bad("the address does not parse"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad("the prefix is not a number"))?;
    let net = IpNet::new(ip, prefix).map_err(|_| {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        bad(&format!("the prefix is above {bits}"))
    })?;
    if net.trunc() != net {
        return Err(bad("host bits are set; give the network address"));
    }
    Ok(net.to_string())
}

pub(crate) fn network_rule(i: usize, r: &NetworkRule) -> Result<NetworkRule> {
    let field = format!("network_rules[{i}]");
    let effect = effect(&field, r.effect)?;
    let (domain, cidr) = match (r.domain.trim().is_empty(), r.cidr.trim().is_empty()) {
        (false, true) => (
            domain_glob(&format!("{field}.domain"), &r.domain)?,
            String::new(),
        ),
        (true, false) => (String::new(), cidr(&format!("{field}.cidr"), &r.cidr)?),
        _ => {
            return Err(Error::invalid(format!(
                "{field} must set exactly one of domain and cidr"
            )));
        }
    };
    if r.ports.len() > MAX_PORTS {
        return Err(Error::invalid(format!(
            "{field}.ports lists more than {MAX_PORTS} ports"
        )));
    }
    let mut ports: Vec<u32> = Vec::with_capacity(r.ports.len());
    for p in &r.ports {
        if !(1..=65_535).contains(p) {
            return Err(Error::invalid(format!(
                "{field}.ports: {p} is not a port (1-65535)"
            )));
        }
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    Ok(NetworkRule {
        effect: effect as i32,
        domain,
        cidr,
        ports,
    })
}

/// A tool glob over `server/tool`: both sides non-empty, of letters,
/// digits, `_`, `-`, `.` and `*`.
pub(crate) fn tool_rule(i: usize, r: &ToolRule) -> Result<ToolRule> {
    let field = format!("tool_rules[{i}]");
    let effect = effect(&field, r.effect)?;
    let pattern = r.pattern.trim();
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
    };
    let ok = pattern.len() <= MAX_PATTERN
        && pattern
            .split_once('/')
            .is_some_and(|(server, tool)| part_ok(server) && part_ok(tool));
    if !ok {
        return Err(Error::invalid(format!(
            "{field}.pattern {:?} is not a tool glob: use server/tool with letters, digits, _ - . and * (e.g. github/*)",
            names::truncate(&r.pattern)
        )));
    }
    Ok(ToolRule {
        effect: effect as i32,
        pattern: pattern.to_owned(),
    })
}

/// A credential: `{c}` or `organizations/{org}/credentials/{c}`, as the
/// full name.
pub(crate) fn credential(i: usize, org: &str, name: &str) -> Result<String> {
    let field = format!("credentials[{i}]");
    let id = if name.starts_with("organizations/") {
        let (o, id) = names::parse_child(name, "credentials").map_err(|_| {
            Error::invalid(format!(
                "{field} {:?} is not a credential name: use organizations/{{organization}}/credentials/{{credential}} or the credential id",
                names::truncate(name)
            ))
        })?;
        if o != org {
            return Err(Error::invalid(format!(
                "{field} {:?} is another organization's credential",
                names::truncate(name)
            )));
        }
        id
    } else {
        name
    };
    names::validate_id("credential", id).map_err(|e| Error::invalid(format!("{field}: {e}")))?;
    Ok(names::child_name(org, "credentials", id))
}
