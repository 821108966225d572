//! The image sandbox tests run: a root filesystem holding only Debian's
//! busybox-static and its applet links, made with `docker import` (there
//! is no registry to pull from).

use std::os::unix::fs::PermissionsExt as _;
use std::sync::OnceLock;

/// The test image's tag.
pub const IMAGE: &str = "paddock-test-busybox:1";

static READY: OnceLock<()> = OnceLock::new();

/// Builds the image once per test binary and returns its tag.
pub fn busybox_image() -> &'static str {
    READY.get_or_init(build);
    IMAGE
}

fn build() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox not found: install Debian's busybox-static (scripts/test does)");
    let root = crate::TempDir::new();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for dir in ["etc", "tmp", "workspace", "home"] {
        std::fs::create_dir_all(root.path().join(dir)).expect("dir");
    }
    // As in real images: Docker copies the image's /tmp mode onto the
    // tmpfs mounted there.
    std::fs::set_permissions(
        root.path().join("tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .expect("chmod /tmp");
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/sandbox:/bin/sh\n",
    )
    .expect("passwd");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {IMAGE} >/dev/null",
            root.path().display()
        ))
        .status()
        .expect("docker import");
    assert!(status.success(), "docker import of the test image failed");
}

/// Removes every container, network and volume labelled with `worker`
/// (through the docker CLI, so it also works from `Drop`).
pub fn remove_worker_resources(worker: &str) {
    let label = format!("label=paddock.worker={worker}");
    let script = format!(
        "docker ps -aq --filter {label} | xargs -r docker rm -f >/dev/null 2>&1; \
         docker network ls -q --filter {label} | xargs -r docker network rm >/dev/null 2>&1; \
         docker volume ls -q --filter {label} | xargs -r docker volume rm -f >/dev/null 2>&1; true"
    );
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status();
}
