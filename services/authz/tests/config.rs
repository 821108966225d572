//! `paddock-authz` reads its settings in layers: a TOML file (`--config`),
//! then `PADDOCK_*` variables, then flags. A typo in the file stops it at
//! start, naming the key; a good file starts it where the layers say.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_paddock-authz");

fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PADDOCK_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn an_unknown_key_stops_the_service_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("authz.toml");
    std::fs::write(&file, "listn = \"127.0.0.1:0\"\n").expect("write");
    let out = command(dir.path())
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key \"listn\""), "{stderr}");

    // A value of the wrong type, from the environment, names its variable.
    let out = command(dir.path())
        .env("PADDOCK_AUTHZ_LISTEN", "not-an-address")
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen"), "{stderr}");
}

/// The file sets the data dir and the admin listener, the environment
/// overrides the file's gRPC address, and a flag overrides the environment.
#[test]
fn the_file_then_the_environment_then_flags() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("from-file");
    let file = dir.path().join("authz.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = {:?}\nadmin_listen = \"127.0.0.1:0\"\nidentity_endpoint = \"http://127.0.0.1:9\"\n",
            data.display().to_string()
        ),
    )
    .expect("write");
    let mut child = command(dir.path())
        .arg("--config")
        .arg(&file)
        .env("PADDOCK_AUTHZ_LISTEN", "127.0.0.1:2")
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("authz listening") => break line,
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("authz never listened:\n{}", seen.join("\n"));
            }
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("authz exited with {status}:\n{}", seen.join("\n"));
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    // The flag's port 0 won over the variable's 2 and the file's 1.
    let addr: std::net::SocketAddr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    assert!(addr.ip().is_loopback(), "{listening}");
    assert!(![0, 1, 2].contains(&addr.port()), "{listening}");
    // The file's data dir holds the service token and the database.
    assert!(data.join("service-token").exists());
    assert!(data.join("authz.db").exists());
}
