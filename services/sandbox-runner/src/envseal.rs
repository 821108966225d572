//! Sandbox env values at rest: sealed with the runner's sandbox key (see
//! `paddock_shared::seal`), each value bound to its organization, sandbox
//! and variable name, so none can be read from the database or moved to
//! another sandbox or variable. Only the view for the sandbox's creator
//! and `sessions.manage` holders opens them.

use paddock_proto::sandbox::v1::SandboxSpec;
use paddock_shared::seal::{Purpose, Sealed, SealingKey};

/// The sandbox key.
pub static PURPOSE: Purpose = Purpose {
    file: "sandbox-key",
    flag: "--sandbox-key / PADDOCK_SANDBOX_KEY",
    aad_prefix: b"paddock.sandbox-env.v1\0",
    fingerprint_domain: b"paddock.sandbox-key.v1\0",
};

const PREFIX: &str = "sealed:v1:";

/// What a value that does not open reads as.
pub const UNREADABLE: &str = "[sealed under another sandbox key]";

fn bound(sandbox: &str, name: &str) -> String {
    format!("{sandbox}\0{name}")
}

/// `spec` with every env value sealed, as stored.
pub fn sealed_spec(key: &SealingKey, org: &str, sandbox: &str, spec: &SandboxSpec) -> SandboxSpec {
    let mut out = spec.clone();
    out.env = spec
        .env
        .iter()
        .map(|(name, value)| {
            let sealed = key.seal(org, &bound(sandbox, name), value.as_bytes());
            let text = format!(
                "{PREFIX}{}:{}",
                sealed.key_fingerprint,
                paddock_shared::hex::encode(&sealed.bytes)
            );
            (name.clone(), text)
        })
        .collect();
    out
}

/// Opens the sealed env values of `spec` in place; a value that does not
/// open (another key, tampered) reads as [`UNREADABLE`].
pub fn open_env(key: &SealingKey, org: &str, sandbox: &str, spec: &mut SandboxSpec) {
    for (name, value) in spec.env.iter_mut() {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            continue;
        };
        let opened = rest.split_once(':').and_then(|(fingerprint, hex)| {
            let sealed = Sealed {
                key_fingerprint: fingerprint.to_owned(),
                bytes: paddock_shared::hex::decode(hex)?,
            };
            let plain = key.open(org, &bound(sandbox, name), &sealed).ok()?;
            String::from_utf8(plain).ok()
        });
        *value = opened.unwrap_or_else(|| UNREADABLE.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sealed_and_bound_to_their_place() {
        let (key, _) = SealingKey::generate(&PURPOSE);
        let mut spec = SandboxSpec::default();
        spec.env.insert("DB_PASSWORD".into(), "hunter2".into());
        spec.env.insert("MODE".into(), "debug".into());
        let stored = sealed_spec(&key, "acme", "sb1", &spec);
        let text = format!("{stored:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("debug"),
            "{text}"
        );
        let mut opened = stored.clone();
        open_env(&key, "acme", "sb1", &mut opened);
        assert_eq!(opened.env, spec.env);
        // Moved to another sandbox, organization or variable: unreadable.
        for (org, sb) in [("acme", "sb2"), ("globex", "sb1")] {
            let mut moved = stored.clone();
            open_env(&key, org, sb, &mut moved);
            assert!(moved.env.values().all(|v| v == UNREADABLE), "{org}/{sb}");
        }
        let mut swapped = stored.clone();
        let a = swapped.env["MODE"].clone();
        swapped.env.insert("DB_PASSWORD".into(), a);
        open_env(&key, "acme", "sb1", &mut swapped);
        assert_eq!(swapped.env["DB_PASSWORD"], UNREADABLE);
        // Another key says so.
        let (other, _) = SealingKey::generate(&PURPOSE);
        let mut foreign = stored.clone();
        open_env(&other, "acme", "sb1", &mut foreign);
        assert!(foreign.env.values().all(|v| v == UNREADABLE));
    }
}
