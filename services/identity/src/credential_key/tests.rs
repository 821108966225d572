use super::*;

fn dir() -> PathBuf {
    let mut rng = rand::rng();
    let dir = std::env::temp_dir().join(format!("paddock-ckey-{:016x}", rng.random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn seals_and_opens_with_binding() {
    let (key, _) = CredentialKey::generate();
    let sealed = key.seal("acme", "deploy-key", b"-----BEGIN KEY-----");
    assert_eq!(sealed.key_fingerprint, key.fingerprint());
    assert!(
        !sealed.bytes.windows(5).any(|w| w == b"BEGIN"),
        "plaintext visible in the sealed bytes"
    );
    assert_eq!(
        key.open("acme", "deploy-key", &sealed).expect("opens"),
        b"-----BEGIN KEY-----"
    );
    // Same value twice: different nonces, different bytes.
    assert_ne!(
        key.seal("acme", "deploy-key", b"x").bytes,
        key.seal("acme", "deploy-key", b"x").bytes
    );
    // Bound to the organization and the credential id.
    assert_eq!(key.open("acme", "other", &sealed), Err(OpenError::Corrupt));
    assert_eq!(
        key.open("globex", "deploy-key", &sealed),
        Err(OpenError::Corrupt)
    );
    // "ac" + "me\0x" must not equal "acme" + "x".
    assert_eq!(
        key.open("ac", "me", &key.seal("acm", "e", b"v")),
        Err(OpenError::Corrupt)
    );
    // Tampering and truncation are detected.
    let mut flipped = sealed.clone();
    let last = flipped.bytes.len() - 1;
    flipped.bytes[last] ^= 1;
    assert_eq!(
        key.open("acme", "deploy-key", &flipped),
        Err(OpenError::Corrupt)
    );
    let short = Sealed {
        key_fingerprint: sealed.key_fingerprint.clone(),
        bytes: sealed.bytes[..10].to_vec(),
    };
    assert_eq!(
        key.open("acme", "deploy-key", &short),
        Err(OpenError::Corrupt)
    );
    // Another key says so rather than failing vaguely.
    let (other, _) = CredentialKey::generate();
    assert_eq!(
        other.open("acme", "deploy-key", &sealed),
        Err(OpenError::WrongKey)
    );
    // Even with a forged fingerprint it cannot open the value.
    let forged = Sealed {
        key_fingerprint: other.fingerprint().to_owned(),
        bytes: sealed.bytes.clone(),
    };
    assert_eq!(
        other.open("acme", "deploy-key", &forged),
        Err(OpenError::Corrupt)
    );
}

#[test]
fn parses_base64_and_hex_and_refuses_the_rest() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let a = CredentialKey::parse(hex, "k").expect("hex");
    let b = CredentialKey::parse(&hex.to_uppercase(), "k").expect("upper hex");
    assert_eq!(a.fingerprint(), b.fingerprint());
    let bytes = paddock_shared::hex::decode(hex).expect("bytes");
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    for text in [STANDARD.encode(&bytes), URL_SAFE_NO_PAD.encode(&bytes)] {
        let k = CredentialKey::parse(&format!(" {text}\n"), "k").expect("base64");
        assert_eq!(k.fingerprint(), a.fingerprint());
    }
    for bad in [
        "",
        "short",
        &hex[..62],
        &STANDARD.encode([0u8; 31]),
        "not base64 at all!!",
    ] {
        let err = CredentialKey::parse(bad, "--credential-key").expect_err(bad);
        let msg = err.to_string();
        assert!(msg.contains("--credential-key"), "{msg}");
        if !bad.is_empty() {
            assert!(!msg.contains(bad), "the error echoes the input: {msg}");
        }
    }
    let debug = format!("{a:?}");
    assert!(!debug.contains("0011"), "{debug}");
}

#[test]
fn the_key_file_is_generated_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir();
    let (first, source) = CredentialKey::load(None, &dir).expect("generate");
    let path = dir.join(KEY_FILE);
    assert_eq!(source, KeySource::Generated(path.clone()));
    let mode = std::fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (again, source) = CredentialKey::load(None, &dir).expect("reload");
    assert_eq!(source, KeySource::File(path.clone()));
    assert_eq!(again.fingerprint(), first.fingerprint());
    let sealed = first.seal("acme", "c", b"v");
    assert_eq!(again.open("acme", "c", &sealed).expect("opens"), b"v");

    // A configured key wins over the file.
    let (_, text) = CredentialKey::generate();
    let (configured, source) = CredentialKey::load(Some(&text), &dir).expect("configured");
    assert_eq!(source, KeySource::Configured);
    assert_ne!(configured.fingerprint(), first.fingerprint());

    // A damaged file is an error, never silently replaced.
    std::fs::write(&path, "garbage").expect("write");
    assert!(matches!(
        CredentialKey::load(None, &dir),
        Err(KeyError::Malformed(_))
    ));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "garbage");
    let _ = std::fs::remove_dir_all(dir);
}
