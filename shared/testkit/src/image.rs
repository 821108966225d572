//! The image sandbox tests run (the runner's busybox image, made with
//! `docker import`: there is no registry to pull from), and cleanup of what
//! a test's worker labelled.

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
    if let Err(e) = paddock_sandbox_runner::image::import_busybox(IMAGE) {
        panic!("the test image: {e} (scripts/test installs busybox-static)");
    }
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
