//! `paddock dev` takes the flags the README's configuration table names
//! for it.

use paddock_e2e::{Backend, Dev, e2e_tests};

/// Removes what the runner labelled with a configured worker id (no
/// `worker-id` file tells `Dev` about it), even when the test fails.
struct WorkerResources(String);

impl Drop for WorkerResources {
    fn drop(&mut self) {
        paddock_testkit::image::remove_worker_resources(&self.0);
    }
}

fn worker_id_flag_names_the_worker(backend: Backend) {
    let worker = format!("wflag-{}-{backend:?}", std::process::id()).to_lowercase();
    let _cleanup = WorkerResources(worker.clone());
    let image = paddock_testkit::image::busybox_image();
    let dev = Dev::start_with(backend, &["--worker-id".to_owned(), worker.clone()]);
    let owner = dev.create_org("acme", "alice@acme.test");
    for args in [
        &["agent", "create", "bot"][..],
        &["project", "create", "web"],
        &["security", "set", "--allow-image", "paddock-test-*"],
    ] {
        dev.paddock(Some(&owner), args).json();
    }
    let sandbox = dev
        .paddock(
            Some(&owner),
            &[
                "run",
                "--agent",
                "bot",
                "--project",
                "web",
                "--image",
                image,
                "--detach",
                "--",
                "sleep",
                "60",
            ],
        )
        .json();
    assert_eq!(sandbox["worker"], worker.as_str(), "{sandbox:#}");
    // The id is the one given, not one made and kept in the data dir.
    assert!(
        !dev.data_dir().join("worker-id").exists(),
        "paddock dev made its own worker id"
    );
    let labelled = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=paddock.worker={worker}"))
        .output()
        .expect("run docker ps");
    assert!(
        !String::from_utf8_lossy(&labelled.stdout).trim().is_empty(),
        "no container labelled paddock.worker={worker}"
    );
    let name = sandbox["name"].as_str().expect("sandbox name");
    dev.paddock(Some(&owner), &["sandbox", "stop", name]).json();
}

e2e_tests!(worker_id_flag_names_the_worker);
