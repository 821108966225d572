//! How a sandbox prints: its state and end-reason words, the JSON object,
//! the `get` fields, and the line that says why a sandbox ended.

use paddock_proto::sandbox::v1::*;
use serde_json::{Value, json};

use crate::commands::Ctx;
use crate::names;
use crate::output::{self, print_fields, print_json};

pub(super) fn state_name(state: i32) -> &'static str {
    match SandboxState::try_from(state) {
        Ok(SandboxState::Pending) => "pending",
        Ok(SandboxState::Starting) => "starting",
        Ok(SandboxState::Running) => "running",
        Ok(SandboxState::Stopping) => "stopping",
        Ok(SandboxState::Stopped) => "stopped",
        Ok(SandboxState::Failed) => "failed",
        _ => "unknown",
    }
}

pub(super) fn reason_name(reason: i32) -> &'static str {
    match EndReason::try_from(reason) {
        Ok(EndReason::Exited) => "exited",
        Ok(EndReason::OomKilled) => "oom_killed",
        Ok(EndReason::TtlExpired) => "ttl_expired",
        Ok(EndReason::StoppedByUser) => "stopped_by_user",
        Ok(EndReason::RunnerLost) => "runner_lost",
        Ok(EndReason::StartFailed) => "start_failed",
        Ok(EndReason::OrganizationDeleted) => "organization_deleted",
        Ok(EndReason::AgentDeleted) => "agent_deleted",
        Ok(EndReason::ProjectDeleted) => "project_deleted",
        Ok(EndReason::AccessRevoked) => "access_revoked",
        _ => "",
    }
}

pub fn sandbox_json(s: &Sandbox) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    json!({
        "name": s.name,
        "id": names::short(&s.name),
        "state": state_name(s.state),
        "end_reason": reason_name(s.end_reason),
        "exit_code": s.exit_code,
        "message": s.message,
        "agent": spec.agent,
        "project": spec.project,
        "image": spec.image,
        "command": spec.command,
        "cpus": res.cpus,
        "memory_bytes": res.memory_bytes,
        "pids": res.pids,
        "ttl_seconds": res.ttl.map(|d| d.seconds),
        "network": paddock_policy::network::name(paddock_policy::network::of(spec.network_mode)),
        "created_by": s.created_by,
        "worker": s.worker,
        "create_time": s.create_time.as_ref().map(output::rfc3339),
        "start_time": s.start_time.as_ref().map(output::rfc3339),
        "end_time": s.end_time.as_ref().map(output::rfc3339),
        "expire_time": s.expire_time.as_ref().map(output::rfc3339),
    })
}

pub(super) fn print_sandbox(ctx: &Ctx, s: &Sandbox) {
    if ctx.json() {
        print_json(&sandbox_json(s));
        return;
    }
    let spec = s.spec.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    print_fields(&[
        ("name", s.name.clone()),
        ("state", state_name(s.state).to_owned()),
        ("end reason", reason_name(s.end_reason).to_owned()),
        (
            "exit code",
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ),
        ("agent", names::short(&spec.agent).to_owned()),
        ("project", names::short(&spec.project).to_owned()),
        ("image", spec.image),
        (
            "resources",
            format!(
                "cpus {} memory {} pids {}",
                res.cpus,
                output::human_bytes(res.memory_bytes),
                res.pids
            ),
        ),
        ("created", output::ts_cell(s.create_time.as_ref())),
        ("expires", output::ts_cell(s.expire_time.as_ref())),
        ("message", s.message.clone()),
    ]);
}

/// Why a sandbox ended, for stderr, when it was not simply its command
/// exiting or the user stopping it: `sandbox sb… ended: oom_killed
/// (memory limit 32 MiB)`.
pub fn end_line(s: &Sandbox) -> Option<String> {
    let reason = EndReason::try_from(s.end_reason).unwrap_or(EndReason::Unspecified);
    let detail = match reason {
        EndReason::Unspecified | EndReason::StoppedByUser => return None,
        EndReason::Exited if s.message.is_empty() => return None,
        EndReason::OomKilled => {
            let memory = s
                .spec
                .as_ref()
                .and_then(|spec| spec.resources.as_ref())
                .map(|r| r.memory_bytes)
                .unwrap_or(0);
            format!("memory limit {}", crate::policy::human_bytes(memory))
        }
        EndReason::TtlExpired => {
            let ttl = s
                .spec
                .as_ref()
                .and_then(|spec| spec.resources.as_ref())
                .and_then(|r| r.ttl.as_ref())
                .map(|d| d.seconds)
                .unwrap_or(0);
            format!("ttl {}", output::human_seconds(ttl))
        }
        _ => s.message.clone(),
    };
    let code = s
        .exit_code
        .map(|c| format!(", exit code {c}"))
        .unwrap_or_default();
    Some(format!(
        "sandbox {} ended: {} ({detail}){code}",
        names::short(&s.name),
        reason_name(s.end_reason)
    ))
}
