//! A minimal image made on the worker itself, with no registry: a root
//! filesystem holding only the host's static busybox and its applet links,
//! turned into an image with `docker import`. The benchmark and the tests
//! run sandboxes from it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Where Debian's busybox-static installs busybox.
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Imports the busybox image as `tag` unless the engine already has it.
pub fn import_busybox(tag: &str) -> Result<(), String> {
    import_busybox_with(tag, 0o1777)
}

/// [`import_busybox`] with the image's /tmp at `tmp_mode` (many real
/// images ship a 0755 root-owned /tmp).
pub fn import_busybox_with(tag: &str, tmp_mode: u32) -> Result<(), String> {
    let exists = std::process::Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    let busybox = BUSYBOX
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no busybox on this host: install Debian's busybox-static")?;
    let root = tempfile::tempdir().map_err(|e| format!("a rootfs directory: {e}"))?;
    build_rootfs(root.path(), busybox, tmp_mode)
        .map_err(|e| format!("building the rootfs: {e}"))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {tag} >/dev/null",
            root.path().display()
        ))
        .status()
        .map_err(|e| format!("docker import: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("docker import of {tag} failed ({status})"))
    }
}

fn build_rootfs(root: &Path, busybox: &str, tmp_mode: u32) -> std::io::Result<()> {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    for dir in ["etc", "tmp", "workspace", "home"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    // Docker gives a tmpfs mounted at /tmp the mode of the image's /tmp.
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(tmp_mode))?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/sandbox:/bin/sh\n",
    )
}
