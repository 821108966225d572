//! The kill switch. A running sandbox ends when what let it run goes away:
//! its agent or its project is deleted, or its creator is removed or may no
//! longer run its agent (a demotion). Identity's invalidations trigger a
//! sweep of this worker's sandboxes; a revoked key does not, since a
//! sandbox does not run on its creator's key. A periodic sweep catches what
//! was missed while identity was unreachable. `StopSandboxes` is the manual
//! switch, for an incident.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use paddock_proto::identity::v1::{LookupResourcesRequest, Principal, PrincipalKind};
use paddock_proto::sandbox::v1::{EndReason, Sandbox, StopSandboxesRequest};
use paddock_shared::auth::{Admission, Invalidation, dependency_status};
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{child_name, parse_child, truncate};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::runner::{Runner, above_runner};
use crate::store::{self, Record};

/// How often every running sandbox is checked even when nothing was heard.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Lookups per identity call.
const BATCH: usize = 200;

/// Sweeps on every change identity reports and every [`SWEEP_INTERVAL`].
pub fn spawn(
    runner: Arc<Runner>,
    admission: Admission,
    mut changes: broadcast::Receiver<Invalidation>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                change = changes.recv() => match change {
                    Ok(Invalidation::Key(_)) => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // One sweep for a burst of changes.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                            changes.try_recv()
                        {}
                    }
                    Err(RecvError::Closed) => return,
                },
            }
            if let Err(e) = sweep(&runner, &admission).await {
                tracing::warn!(error = %e, "the kill-switch sweep failed; retrying at the next change or tick");
            }
        }
    })
}

/// Why a running sandbox must end, if it must.
fn verdict(
    record: &Record,
    found: &HashMap<String, Option<Principal>>,
    by_id: &HashMap<String, Principal>,
) -> Option<(EndReason, String)> {
    let agent = record.agent_name();
    if !found.contains_key(&agent) {
        return Some((
            EndReason::AgentDeleted,
            format!("agent {agent} was deleted"),
        ));
    }
    if !found.contains_key(&record.spec.project) {
        return Some((
            EndReason::ProjectDeleted,
            format!("project {} was deleted", record.spec.project),
        ));
    }
    if !by_id.contains_key(&record.created_by) {
        return Some((
            EndReason::AccessRevoked,
            "its creator was removed from the organization".to_owned(),
        ));
    }
    None
}

/// Checks every running sandbox of this worker and stops those whose
/// agent, project or creator's right to run the agent is gone. Stops run
/// in the background; the sweep does not wait out their grace periods.
pub async fn sweep(runner: &Arc<Runner>, admission: &Admission) -> Result<usize> {
    let live: Vec<Record> = store::live_on_worker(&runner.db.pool, &runner.worker)
        .await?
        .into_iter()
        .filter(|r| r.state != paddock_proto::sandbox::v1::SandboxState::Stopping)
        .collect();
    let mut stopped = 0;
    for batch in live.chunks(BATCH) {
        let names: BTreeSet<String> = batch
            .iter()
            .flat_map(|r| [r.agent_name(), r.spec.project.clone()])
            .collect();
        let ids: BTreeSet<String> = batch.iter().map(|r| r.created_by.clone()).collect();
        let found = runner
            .identity
            .clone()
            .lookup_resources(LookupResourcesRequest {
                names: names.into_iter().collect(),
                principal_ids: ids.into_iter().collect(),
            })
            .await
            .map_err(|s| Error::from_status(dependency_status("identity", s)))?
            .into_inner()
            .found;
        let by_id: HashMap<String, Principal> = found
            .iter()
            .filter_map(|f| f.principal.clone())
            .map(|p| (p.id.clone(), p))
            .collect();
        let found: HashMap<String, Option<Principal>> =
            found.into_iter().map(|f| (f.name, f.principal)).collect();
        // Whether a member may still run an agent, asked once per pair.
        let mut may_run: HashMap<(String, String), bool> = HashMap::new();
        for record in batch {
            let mut why = verdict(record, &found, &by_id);
            if why.is_none()
                && let Some(creator) = by_id.get(&record.created_by)
                && creator.kind == PrincipalKind::Member as i32
            {
                let agent = record.agent_name();
                let key = (creator.id.clone(), agent.clone());
                let allowed = match may_run.get(&key) {
                    Some(a) => *a,
                    None => {
                        let a = admission
                            .allows(creator, "agents.execute", &agent, "")
                            .await
                            .map_err(|s| Error::from_status(dependency_status("authz", s)))?;
                        may_run.insert(key, a);
                        a
                    }
                };
                if !allowed {
                    why = Some((
                        EndReason::AccessRevoked,
                        format!(
                            "its creator {} may no longer run agent {agent}",
                            creator.display_name
                        ),
                    ));
                } else if let Some(above) =
                    above_runner(creator, &agent, found.get(&agent).and_then(Option::as_ref))
                {
                    why = Some((
                        EndReason::AccessRevoked,
                        format!("its creator may no longer run {above}"),
                    ));
                }
            }
            if let Some((reason, message)) = why {
                stopped += 1;
                tracing::info!(sandbox = record.id, %message, "stopping a sandbox: the kill switch");
                let runner = runner.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let id = record.id.clone();
                    let grace = runner.tuning.stop_grace;
                    if let Err(e) = runner
                        .stop_because(None, record, grace, reason, &message)
                        .await
                    {
                        tracing::warn!(sandbox = id, error = %e, "the kill switch could not stop a sandbox");
                    }
                }.in_current_span());
            }
        }
    }
    Ok(stopped)
}

/// `StopSandboxes`: every running sandbox of the caller's organization on
/// this worker, or those of one agent or project, stopped at once.
pub async fn stop_all(
    runner: &Arc<Runner>,
    caller: &Principal,
    req: StopSandboxesRequest,
    grace: Duration,
) -> Result<Vec<Sandbox>> {
    let org = crate::runner::organization_id(caller)?;
    if !req.parent.is_empty() && req.parent != format!("organizations/{org}") {
        return Err(Error::not_found(truncate(&req.parent)));
    }
    let agent = full_name(&org, "agents", "agent", &req.agent)?;
    let project = full_name(&org, "projects", "project", &req.project)?;
    let targets: Vec<Record> = store::live_on_worker(&runner.db.pool, &runner.worker)
        .await?
        .into_iter()
        .filter(|r| r.org == org)
        .filter(|r| agent.as_ref().is_none_or(|a| &r.agent_name() == a))
        .filter(|r| project.as_ref().is_none_or(|p| &r.spec.project == p))
        .collect();
    let message = format!("stopped by {} with StopSandboxes", caller.display_name);
    let stops = targets.into_iter().map(|record| {
        let runner = runner.clone();
        let message = message.clone();
        async move {
            runner
                .stop_because(
                    Some(caller),
                    record,
                    grace,
                    EndReason::StoppedByUser,
                    &message,
                )
                .await
        }
    });
    let ended = futures_util::future::join_all(stops).await;
    ended.into_iter().collect()
}

/// A filter's full name (`id` or `organizations/{org}/{kind}/{id}`); another
/// organization's is NOT_FOUND.
fn full_name(org: &str, kind: &str, flag: &str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.contains('/') {
        let (o, id) = parse_child(value, kind)?;
        if o != org {
            return Err(Error::not_found(truncate(value)));
        }
        return Ok(Some(child_name(org, kind, id)));
    }
    paddock_shared::names::validate_id(flag, value)?;
    Ok(Some(child_name(org, kind, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(agent: &str, project: &str, creator: &str) -> Record {
        let spec = paddock_proto::sandbox::v1::SandboxSpec {
            project: format!("organizations/o/projects/{project}"),
            ..Default::default()
        };
        Record {
            id: "sb1".into(),
            org: "o".into(),
            agent: agent.into(),
            created_by: creator.into(),
            spec,
            state: paddock_proto::sandbox::v1::SandboxState::Running,
            end_reason: EndReason::Unspecified,
            exit_code: None,
            message: String::new(),
            worker: "w".into(),
            container_id: String::new(),
            workspace: String::new(),
            uid: 65534,
            create_time: 0,
            start_time: None,
            end_time: None,
            expire_time: 0,
            cpu_seconds: 0.0,
            memory_peak: 0,
            execs: 0,
        }
    }

    #[test]
    fn verdicts() {
        let member = Principal {
            id: "m1".into(),
            kind: PrincipalKind::Member as i32,
            ..Default::default()
        };
        let found: HashMap<String, Option<Principal>> = [
            ("organizations/o/agents/a".to_owned(), None),
            ("organizations/o/projects/p".to_owned(), None),
        ]
        .into();
        let by_id: HashMap<String, Principal> = [("m1".to_owned(), member)].into();
        assert_eq!(verdict(&record("a", "p", "m1"), &found, &by_id), None);
        assert_eq!(
            verdict(&record("gone", "p", "m1"), &found, &by_id).map(|v| v.0),
            Some(EndReason::AgentDeleted)
        );
        assert_eq!(
            verdict(&record("a", "gone", "m1"), &found, &by_id).map(|v| v.0),
            Some(EndReason::ProjectDeleted)
        );
        assert_eq!(
            verdict(&record("a", "p", "m2"), &found, &by_id).map(|v| v.0),
            Some(EndReason::AccessRevoked)
        );
    }

    #[test]
    fn filters_stay_in_the_callers_organization() {
        assert_eq!(full_name("o", "agents", "agent", "").unwrap(), None);
        assert_eq!(
            full_name("o", "agents", "agent", "bot").unwrap().as_deref(),
            Some("organizations/o/agents/bot")
        );
        assert!(matches!(
            full_name("o", "agents", "agent", "organizations/x/agents/a"),
            Err(Error::NotFound(_))
        ));
        assert!(full_name("o", "agents", "agent", "bad id!").is_err());
    }
}
