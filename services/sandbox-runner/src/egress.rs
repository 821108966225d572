//! The guard of an `open` sandbox network. The sandbox reaches the
//! internet through its own bridge, but never the host itself (INPUT from
//! its bridge is dropped), loopback, link-local and metadata addresses, or
//! private networks where the control plane and other internal services
//! live (FORWARD from its bridge to them is dropped, in Docker's
//! DOCKER-USER chain). Named exceptions come with the network policy of a
//! later release. Installing the guard must succeed before an open sandbox
//! starts: a runner that cannot install it refuses open networks.

use paddock_shared::error::{Error, Result};

/// Destinations an open sandbox never reaches.
pub const BLOCKED: &[&str] = &[
    "127.0.0.0/8",
    "169.254.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
];

/// The bridge interface of a sandbox's network (at most 15 characters).
pub fn bridge_name(sandbox_id: &str) -> String {
    let tail: String = sandbox_id.chars().skip(2).take(12).collect();
    format!("pdk{tail}")
}

/// The rules of one bridge, as iptables arguments after the chain.
fn rules(bridge: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = vec![(
        "INPUT",
        vec!["-i".into(), bridge.to_owned(), "-j".into(), "DROP".into()],
    )];
    for cidr in BLOCKED {
        out.push((
            "DOCKER-USER",
            vec![
                "-i".into(),
                bridge.to_owned(),
                "-d".into(),
                (*cidr).to_owned(),
                "-j".into(),
                "DROP".into(),
            ],
        ));
    }
    out
}

async fn iptables(args: &[String]) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
}

/// Installs the guard for `bridge`. On failure, removes what it installed.
pub async fn install(bridge: &str) -> Result<()> {
    for (chain, rule) in rules(bridge) {
        let mut args = vec!["-I".to_owned(), chain.to_owned()];
        args.extend(rule);
        let failed = match iptables(&args).await {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            remove(bridge).await;
            return Err(Error::FailedPrecondition(format!(
                "cannot isolate an open sandbox network from the host and internal addresses \
                 (iptables: {why}); open networks are refused on this worker"
            )));
        }
    }
    Ok(())
}

/// Removes every rule of `bridge` (idempotent).
pub async fn remove(bridge: &str) {
    for (chain, rule) in rules(bridge) {
        let mut args = vec!["-D".to_owned(), chain.to_owned()];
        args.extend(rule);
        // A rule inserted twice is deleted twice; stop when none is left.
        for _ in 0..8 {
            match iptables(&args).await {
                Ok(out) if out.status.success() => continue,
                _ => break,
            }
        }
    }
}

/// Removes guard rules whose bridge no longer exists (left by a runner that
/// died before its cleanup). Rules of live bridges are left alone, whoever
/// owns them.
pub async fn purge_stale() {
    for chain in ["INPUT", "DOCKER-USER"] {
        let Ok(out) = iptables(&["-S".to_owned(), chain.to_owned()]).await else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(bridge) = words
                .windows(2)
                .find(|w| w[0] == "-i" && w[1].starts_with("pdk"))
                .map(|w| w[1])
            else {
                continue;
            };
            if words.first() != Some(&"-A")
                || std::path::Path::new("/sys/class/net").join(bridge).exists()
            {
                continue;
            }
            let mut args: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
            args[0] = "-D".to_owned();
            let _ = iptables(&args).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_an_interface_name() {
        let name = bridge_name("sbabcdefghijklmn");
        assert_eq!(name, "pdkabcdefghijkl");
        assert!(name.len() <= 15);
    }

    #[test]
    fn the_host_and_metadata_are_blocked() {
        let r = rules("pdkx");
        assert!(
            r.iter()
                .any(|(c, a)| *c == "INPUT" && a.contains(&"DROP".to_owned()))
        );
        assert!(
            r.iter()
                .any(|(_, a)| a.contains(&"169.254.0.0/16".to_owned()))
        );
    }
}
