//! The images sandbox tests run (busybox images made by
//! `paddock-test-image` and loaded through the Docker API: there is no
//! registry to pull from), and cleanup of what a test's worker labelled.

use std::sync::OnceLock;

use paddock_test_image::Busybox;

/// The test image's tag.
pub const IMAGE: &str = "paddock-test-busybox:1";

/// Loads `image` unless the engine has it; a test cannot go on without it.
fn ensure(image: Busybox<'_>) {
    if let Err(e) = image.ensure_blocking() {
        panic!(
            "the test image {}: {e} (scripts/test installs busybox-static)",
            image.tag
        );
    }
}

/// Builds the image once per test binary and returns its tag.
pub fn busybox_image() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| ensure(Busybox::new(IMAGE)));
    IMAGE
}

/// The test image with a root-owned 0755 /tmp, as many real images have.
pub const IMAGE_TMP_0755: &str = "paddock-test-busybox-tmp0755:1";

/// Builds (once per test binary) and returns [`IMAGE_TMP_0755`].
pub fn busybox_image_tmp_0755() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        ensure(Busybox {
            tmp_mode: 0o755,
            ..Busybox::new(IMAGE_TMP_0755)
        })
    });
    IMAGE_TMP_0755
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

/// Unmounts every file system mounted under `dir` (sandbox workspaces and
/// credential tmpfs a runner left mounted), deepest first, so a test's
/// data dir can be removed and no loop device stays attached.
pub fn unmount_under(dir: &std::path::Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<std::path::PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal; test dirs have none.
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let unmounted = std::process::Command::new("umount")
            .arg(&point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&point)
                .status();
        }
    }
}

/// Test images whose config says `USER <user>`, with an /etc/passwd that
/// also names `toor` (uid 0) and `node` (uid 1000): `(user, tag)` pairs,
/// built once per test binary.
pub fn user_images() -> &'static [(String, String)] {
    static IMAGES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
            toor:x:0:0:root by another name:/root:/bin/sh\n\
            node:x:1000:1000:node:/home/node:/bin/sh\n\
            nobody:x:65534:65534:nobody:/home/sandbox:/bin/sh\n";
        ["root", "0", "00", "0:0", "toor", "1000", "node", "ghost"]
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let tag = format!("paddock-test-user{i}:1");
                ensure(Busybox {
                    passwd,
                    user: Some(user),
                    ..Busybox::new(&tag)
                });
                ((*user).to_owned(), tag)
            })
            .collect()
    })
}
