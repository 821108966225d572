use std::collections::HashMap;

use super::*;
use crate::secret::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    #[serde(flatten)]
    common: CommonConfig,
    #[serde(with = "duration")]
    flush: Duration,
    max_tails: usize,
    worker_id: Option<String>,
    #[serde(with = "secret", default)]
    key: Option<Secret<String>>,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            common: CommonConfig::listening_on(SocketAddr::from(([127, 0, 0, 1], 7101))),
            flush: Duration::from_secs(10),
            max_tails: 8,
            worker_id: None,
            key: None,
        }
    }
}

#[derive(Default, Serialize)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tails: Option<usize>,
}

const ENV: &[(&str, &str)] = &[
    ("PADDOCK_PROBE_LISTEN", "listen"),
    ("PADDOCK_PROBE_MAX_TAILS", "max_tails"),
    ("PADDOCK_WORKER_ID", "worker_id"),
    ("PADDOCK_PROBE_KEY", "key"),
];

fn load_probe(
    file: Option<&str>,
    env: &[(&str, &str)],
    flags: &Flags,
) -> Result<Probe, ConfigError> {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("probe.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).expect("write");
    }
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    load_with(
        &Probe::default(),
        file.map(|_| path.as_path()),
        &[COMMON_ENV, ENV],
        |var| vars.get(var).cloned(),
        flags,
    )
}

/// Defaults, then the file, then the environment, then flags.
#[test]
fn each_layer_overrides_the_one_before() {
    let p = load_probe(None, &[], &Flags::default()).expect("defaults");
    assert_eq!(p.common.listen.port(), 7101);
    assert_eq!(p.common.data_dir, PathBuf::from("paddock-data"));
    assert_eq!(p.flush, Duration::from_secs(10));
    assert_eq!(
        p.common.service_token_path(),
        PathBuf::from("paddock-data/service-token")
    );

    let file =
        "listen = \"127.0.0.1:8001\"\nmax_tails = 3\nflush = \"1m\"\ndata_dir = \"/srv/p\"\n";
    let p = load_probe(Some(file), &[], &Flags::default()).expect("file");
    assert_eq!(p.common.listen.port(), 8001);
    assert_eq!((p.max_tails, p.flush), (3, Duration::from_secs(60)));
    assert_eq!(p.common.data_dir, PathBuf::from("/srv/p"));

    let env = [
        ("PADDOCK_PROBE_LISTEN", "127.0.0.1:8002"),
        ("PADDOCK_PROBE_MAX_TAILS", "5"),
        ("PADDOCK_AUDIT_ENDPOINT", "http://audit:7104"),
    ];
    let p = load_probe(Some(file), &env, &Flags::default()).expect("env");
    assert_eq!(p.common.listen.port(), 8002);
    assert_eq!(p.max_tails, 5);
    assert_eq!(
        p.common.audit_endpoint.as_deref(),
        Some("http://audit:7104")
    );
    // The file's value where the environment says nothing.
    assert_eq!(p.flush, Duration::from_secs(60));

    let flags = Flags {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 8003))),
        max_tails: None,
    };
    let p = load_probe(Some(file), &env, &flags).expect("flags");
    assert_eq!(p.common.listen.port(), 8003);
    assert_eq!(p.max_tails, 5);
}

/// A typo in the file is refused by name, not ignored.
#[test]
fn an_unknown_key_in_the_file_is_an_error() {
    let err = load_probe(Some("listn = \"127.0.0.1:1\"\n"), &[], &Flags::default())
        .expect_err("unknown key");
    assert!(err.to_string().contains("unknown key \"listn\""), "{err}");
    let err =
        load_probe(Some("max_tails = \"many\"\n"), &[], &Flags::default()).expect_err("bad type");
    assert!(err.to_string().contains("max_tails"), "{err}");
    let err =
        load_probe(Some("flush = \"soon\"\n"), &[], &Flags::default()).expect_err("bad duration");
    assert!(err.to_string().contains("invalid duration"), "{err}");
}

/// Variables are typed like the defaults: a number where one is expected,
/// text everywhere else; a secret stays one.
#[test]
fn variables_take_the_type_of_their_key() {
    let env = [
        ("PADDOCK_WORKER_ID", "123"),
        ("PADDOCK_PROBE_KEY", "s3cr3t"),
    ];
    let p = load_probe(None, &env, &Flags::default()).expect("env");
    assert_eq!(p.worker_id.as_deref(), Some("123"));
    assert_eq!(p.key.as_ref().map(|k| k.expose().as_str()), Some("s3cr3t"));
    assert!(!format!("{p:?}").contains("s3cr3t"));
    let err = load_probe(
        None,
        &[("PADDOCK_PROBE_MAX_TAILS", "lots")],
        &Flags::default(),
    )
    .expect_err("not a number");
    assert!(err.to_string().contains("PADDOCK_PROBE_MAX_TAILS"), "{err}");
}

/// A value of the right shape but the wrong meaning (an address that is
/// not one) is named by its key and the variable that set it, even
/// through the flattened common section.
#[test]
fn a_bad_value_is_named_by_key_and_variable() {
    let err = load_probe(
        None,
        &[("PADDOCK_PROBE_LISTEN", "not-an-address")],
        &Flags::default(),
    )
    .expect_err("not an address");
    let text = err.to_string();
    assert!(
        text.contains("listen (from PADDOCK_PROBE_LISTEN)"),
        "{text}"
    );

    let err = load_probe(Some("flush = \"forever\"\n"), &[], &Flags::default())
        .expect_err("not a duration");
    assert!(err.to_string().contains("flush"), "{err}");
}
