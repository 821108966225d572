//! `paddock-sandbox-runner`: the sandbox runner alone.

paddock_shared::service_main!(
    paddock_sandbox_runner,
    "paddock-sandbox-runner",
    "Paddock sandbox runner"
);
