//! Bounded property-based fuzzing (proptest) of what a hostile client or
//! sandbox controls in file transfers: upload archives, download paths and
//! the trees they walk, path confinement. The corpus in `tests/corpus/`
//! (hostile archives: traversal, absolute names, links out, devices,
//! setuid bits, long and PAX names) is replayed first; every case must be
//! refused or come out safe. Runs are bounded (a fixed number of cases), so
//! the suite stays fast and cannot hang.

use std::path::{Component, Path, PathBuf};

use paddock_sandbox_runner::download;
use paddock_sandbox_runner::files::{self, WORKSPACE};
use proptest::prelude::*;

const UID: u32 = 65534;

/// The safety properties of a rewritten upload archive.
fn assert_safe_archive(rewritten: &[u8]) {
    let mut archive = tar::Archive::new(rewritten);
    for entry in archive.entries().expect("the rewritten archive reads") {
        let entry = entry.expect("entry");
        let header = entry.header();
        let path = entry.path().expect("path").into_owned();
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "unsafe name {path:?}"
        );
        assert_eq!(header.uid().expect("uid"), u64::from(UID));
        assert_eq!(header.gid().expect("gid"), u64::from(UID));
        assert_eq!(
            header.mode().expect("mode") & 0o7000,
            0,
            "{path:?} keeps special bits"
        );
        let kind = header.entry_type();
        assert!(
            kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link(),
            "{path:?} is a {kind:?}"
        );
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .expect("link")
                .expect("target")
                .into_owned();
            let base = Path::new(WORKSPACE).join(&path);
            let resolved = lexical(base.parent().unwrap_or(Path::new(WORKSPACE)), &target);
            assert!(
                resolved.starts_with(WORKSPACE),
                "{path:?} links to {target:?}, outside /workspace"
            );
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .expect("link")
                .expect("target")
                .into_owned();
            assert!(
                target
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{path:?} hard-links to {target:?}"
            );
        }
    }
}

/// `target` resolved against `dir` without touching the file system.
fn lexical(dir: &Path, target: &Path) -> PathBuf {
    let mut out = if target.is_absolute() {
        PathBuf::from("/")
    } else {
        dir.to_path_buf()
    };
    for c in target.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

fn check(input: &[u8]) {
    let mut out = Vec::new();
    if files::rewrite_archive(input, WORKSPACE, UID, &mut out).is_ok() {
        assert_safe_archive(&out);
    }
}

#[test]
fn the_corpus_is_refused_or_comes_out_safe() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/upload");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        check(&bytes);
        seen += 1;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mut out = Vec::new();
        let result = files::rewrite_archive(bytes.as_slice(), WORKSPACE, UID, &mut out);
        match name {
            "fine.tar" | "setuid.tar" => assert!(result.is_ok(), "{name}: {result:?}"),
            _ => assert!(result.is_err(), "{name} was accepted"),
        }
    }
    assert!(seen >= 10, "the corpus is missing ({seen} files)");
}

/// One raw tar entry: a name written byte for byte (the tar crate's own
/// setters refuse `..`, a hostile client does not), a type, a link, a mode.
#[derive(Debug, Clone)]
struct RawEntry {
    name: String,
    kind: u8,
    link: String,
    mode: u32,
    data: Vec<u8>,
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(".."),
            Just("."),
            Just(""),
            Just("a"),
            Just("b"),
            Just("etc"),
            Just("workspace")
        ],
        1..6,
    )
    .prop_flat_map(|parts| {
        (Just(parts.join("/")), any::<bool>())
            .prop_map(|(p, absolute)| if absolute { format!("/{p}") } else { p })
    })
}

fn entry_strategy() -> impl Strategy<Value = RawEntry> {
    (
        name_strategy(),
        prop_oneof![
            Just(b'0'),
            Just(b'5'),
            Just(b'2'),
            Just(b'1'),
            Just(b'3'),
            Just(b'6'),
            Just(b'7')
        ],
        name_strategy(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, kind, link, mode, data)| RawEntry {
            name,
            kind,
            link,
            mode,
            data,
        })
}

fn raw_archive(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_old();
        let name = e.name.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let link = e.link.as_bytes();
        let l = link.len().min(99);
        h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        let size = if e.kind == b'0' { e.data.len() } else { 0 };
        h.set_size(size as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if size > 0 {
            out.extend_from_slice(&e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any bytes: refused or safe, never a panic.
    #[test]
    fn any_bytes_upload(bytes in prop::collection::vec(any::<u8>(), 0..3072)) {
        check(&bytes);
    }

    /// Archives of hostile entries: refused or safe.
    #[test]
    fn hostile_archives(entries in prop::collection::vec(entry_strategy(), 1..8)) {
        check(&raw_archive(&entries));
    }

    /// A confined path is /workspace or under it, with no `..`.
    #[test]
    fn confine_stays_inside(path in "[a-z./\\x00]{0,40}") {
        if let Ok(p) = files::confine(&path) {
            prop_assert!(p == WORKSPACE || p.starts_with("/workspace/"), "{p}");
            prop_assert!(!p.split('/').any(|c| c == ".."), "{p}");
            prop_assert!(!p.contains('\0'));
        }
    }
}

/// One node of a workspace tree a hostile sandbox made.
#[derive(Debug, Clone)]
enum Node {
    Dir(String),
    File(String),
    Link(String, String),
}

fn node_strategy() -> impl Strategy<Value = Node> {
    let rel = prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
        .prop_map(|p| p.join("/"));
    let target = prop_oneof![
        Just("OUTSIDE".to_owned()),
        Just("..".to_owned()),
        Just("../..".to_owned()),
        Just("/".to_owned()),
        Just("a".to_owned()),
        Just("../OUTSIDE".to_owned()),
    ];
    prop_oneof![
        rel.clone().prop_map(Node::Dir),
        rel.clone().prop_map(Node::File),
        (rel, target).prop_map(|(p, t)| Node::Link(p, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever tree the sandbox built and whatever path is asked for, a
    /// download never carries a byte from outside the workspace.
    #[test]
    fn downloads_never_leave_the_workspace(
        tree in prop::collection::vec(node_strategy(), 0..12),
        request in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..4),
    ) {
        let root = tempfile::tempdir().expect("dir");
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "SECRET-CONTENT").expect("write");
        let ws = root.path().join("ws");
        std::fs::create_dir(&ws).expect("mkdir");
        for node in &tree {
            match node {
                Node::Dir(p) => { let _ = std::fs::create_dir_all(ws.join(p)); }
                Node::File(p) => { let _ = std::fs::write(ws.join(p), "inside"); }
                Node::Link(p, t) => {
                    let target = if t.contains("OUTSIDE") {
                        t.replace("OUTSIDE", &outside.display().to_string())
                    } else {
                        t.clone()
                    };
                    let _ = std::os::unix::fs::symlink(target, ws.join(p));
                }
            }
        }
        let parts: Vec<&str> = request.to_vec();
        if let Ok(target) = download::open(&ws, &parts, 0) {
            let mut out = Vec::new();
            let _ = target.write(&mut out);
            prop_assert!(
                !String::from_utf8_lossy(&out).contains("SECRET-CONTENT"),
                "a download read outside the workspace: tree {tree:?}, request {parts:?}"
            );
        }
    }
}
