//! A client generated from the whole `proto/` root in another language:
//! grpcio-tools generates the Python client, and `tests/python` runs
//! WhoAmI, CreateProject, Check, a denied call and an unauthenticated one
//! through it against a fresh `paddock dev`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use paddock_e2e::{Backend, Dev, TempDir, e2e_tests, test_tool};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.proto` under `dir`.
fn protos(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the proto dir") {
        let path = entry.expect("a proto dir entry").path();
        if path.is_dir() {
            out.extend(protos(&path));
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    out
}

/// Generates the Python client of every proto into `out`, as a user
/// would: `python -m grpc_tools.protoc -I proto ...` (grpc_tools adds the
/// well-known types itself).
fn generate(python: &Path, out: &Path) {
    let proto = repo_root().join("proto");
    let files = protos(&proto);
    assert!(!files.is_empty(), "no .proto under {}", proto.display());
    let status = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(format!("--pyi_out={}", out.display()))
        .args(&files)
        .stdin(Stdio::null())
        .status()
        .expect("run grpc_tools.protoc");
    assert!(status.success(), "grpc_tools.protoc failed: {status}");
}

fn python_client_passes_its_tests(backend: Backend) {
    let python = test_tool("venv/bin/python");
    let generated = TempDir::new();
    generate(&python, generated.path());

    let dev = Dev::start(backend);
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo_root().join("tests/python"))
        .env("PYTHONPATH", generated.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
        .env("PADDOCK_AUTHZ_ENDPOINT", &dev.authz_endpoint)
        .env("PADDOCK_BOOTSTRAP_TOKEN", dev.bootstrap_token())
        .env_remove("PADDOCK_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // pytest fails when it collects nothing; none may be skipped either.
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(!stdout.contains("skipped"), "{stdout}");
}

e2e_tests!(python_client_passes_its_tests);
