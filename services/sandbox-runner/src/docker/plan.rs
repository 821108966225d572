//! The hardened container spec: what a sandbox container is made from
//! ([`ContainerPlan`]) and the one function that turns it into Docker's
//! create body, also used by the benchmark's baseline.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use paddock_proto::authz::v1::HardeningRelaxations;

/// The main process when a request names no command: waits for SIGTERM
/// and exits at once, so a stop is cooperative and fast.
pub const IDLE_COMMAND: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
];

/// Everything a sandbox container is made from.
#[derive(Debug, Clone, Default)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub labels: HashMap<String, String>,
    pub cpus: f64,
    pub memory_bytes: i64,
    pub pids: i64,
    /// The disk bound: caps /tmp, and the writable root where relaxed.
    pub disk_bytes: i64,
    /// "none" or the name of the sandbox's own network.
    pub network: String,
    /// Host directory mounted read-write at /workspace.
    pub workspace: String,
    /// (host file, target) pairs, mounted read-only.
    pub credentials: Vec<(String, String)>,
    /// (host cache directory, target) pairs: each a bounded file system.
    pub caches: Vec<(String, String)>,
    pub relax: HardeningRelaxations,
    /// The sandbox user's uid, for the tmpfs home.
    pub uid: u32,
    /// A host tmpfs (mode 1777) mounted at /tmp; unset: Docker's tmpfs,
    /// owned by the sandbox user (Docker gives its tmpfs the mode of the
    /// image's /tmp, often 0755).
    pub tmp: Option<String>,
}

/// The size of a sandbox's /tmp: its disk bound, at most 256 MiB.
pub fn tmp_bytes(disk_bytes: i64) -> i64 {
    if disk_bytes > 0 {
        disk_bytes.min(256 << 20)
    } else {
        256 << 20
    }
}

/// The hardened container: all capabilities dropped, no-new-privileges,
/// Docker's default seccomp profile, read-only root with tmpfs /tmp and
/// home, non-root user, init, pids/memory/CPU limits, no host path but the
/// workspace and read-only credentials. Each item is relaxed only by the
/// organization's security settings.
pub fn container_body(plan: &ContainerPlan) -> ContainerCreateBody {
    let relax = &plan.relax;
    let mut security_opt = Vec::new();
    if !relax.allow_new_privileges {
        security_opt.push("no-new-privileges:true".to_owned());
    }
    if relax.unconfined_seccomp {
        security_opt.push("seccomp=unconfined".to_owned());
    }
    let mut mounts = vec![Mount {
        target: Some("/workspace".into()),
        source: Some(plan.workspace.clone()),
        typ: Some(MountType::BIND),
        read_only: Some(false),
        ..Default::default()
    }];
    for (source, target) in &plan.credentials {
        mounts.push(Mount {
            target: Some(target.clone()),
            source: Some(source.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    for (source, target) in &plan.caches {
        mounts.push(Mount {
            target: Some(target.clone()),
            source: Some(source.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    if let Some(tmp) = &plan.tmp {
        mounts.push(Mount {
            target: Some("/tmp".to_owned()),
            source: Some(tmp.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    let mut tmpfs = HashMap::from([(
        crate::spec::SANDBOX_HOME.to_owned(),
        format!(
            "rw,nosuid,nodev,size=64m,mode=0700,uid={uid},gid={uid}",
            uid = plan.uid
        ),
    )]);
    if plan.tmp.is_none() {
        tmpfs.insert(
            "/tmp".to_owned(),
            format!(
                "rw,nosuid,nodev,size={},mode=1777,uid={uid},gid={uid}",
                tmp_bytes(plan.disk_bytes),
                uid = plan.uid
            ),
        );
    }
    let command = if plan.command.is_empty() {
        IDLE_COMMAND.iter().map(|s| (*s).to_owned()).collect()
    } else {
        plan.command.clone()
    };
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        cmd: Some(command),
        // The command is the argv; an image's entrypoint would wrap it.
        entrypoint: Some(Vec::new()),
        env: Some(plan.env.clone()),
        working_dir: Some(plan.workdir.clone()),
        user: Some(plan.user.clone()),
        labels: Some(plan.labels.clone()),
        network_disabled: Some(plan.network == "none"),
        host_config: Some(HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!relax.allowed_capabilities.is_empty())
                .then(|| relax.allowed_capabilities.clone()),
            security_opt: Some(security_opt),
            readonly_rootfs: Some(!relax.writable_root_filesystem),
            // A writable root is bounded by the disk bound too; storage
            // drivers that cannot (overlay off xfs/pquota, fuse-overlayfs)
            // make Docker refuse, and the sandbox with it.
            storage_opt: (relax.writable_root_filesystem && plan.disk_bytes > 0)
                .then(|| HashMap::from([("size".to_owned(), plan.disk_bytes.to_string())])),
            tmpfs: Some(tmpfs),
            // Docker's own copy of the output, bounded: the runner keeps the
            // sandbox's log (see `logs`), and a sandbox that prints without
            // end must not fill the host's disk.
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "10m".to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            init: Some(true),
            pids_limit: Some(plan.pids),
            memory: Some(plan.memory_bytes),
            // Equal to memory: no swap on top of the limit.
            memory_swap: Some(plan.memory_bytes),
            nano_cpus: Some((plan.cpus * 1e9) as i64),
            network_mode: Some(plan.network.clone()),
            mounts: Some(mounts),
            privileged: Some(false),
            ipc_mode: Some("private".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
