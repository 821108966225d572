//! The sandbox runner's permission matrix: every SandboxService RPC × every
//! role × (own org, other org) → expected outcome, from one table, against
//! the real Docker Engine. An RPC without a row fails the test.
//!
//! The target sandbox is created by the organization's owner and runs as
//! its agent `bot`, whose key is the "agent" role: so it is the agent's own
//! and not the developer's.

mod common;

use common::*;
use paddock_proto::sandbox::v1::*;
use paddock_testkit::{Backend, backend_tests};
use tonic::Code;

const ROLES: [&str; 4] = ["owner", "admin", "developer", "agent"];
const SERVICE: &str = "/paddock.sandbox.v1.SandboxService/";

/// (method, own org, other org); one letter per role in ROLES order:
/// O = OK, D = PERMISSION_DENIED, N = NOT_FOUND.
const MATRIX: &[(&str, &str, &str)] = &[
    ("CreateSandbox", "OOOO", "NNNN"),
    ("GetSandbox", "OOOO", "NNNN"),
    ("ListSandboxes", "OOOO", "NNNN"),
    ("StopSandbox", "OODO", "NNNN"),
    ("DeleteSandbox", "OODO", "NNNN"),
    ("WatchSandbox", "OOOO", "NNNN"),
    ("Exec", "OODO", "NNNN"),
    ("UploadFiles", "OODO", "NNNN"),
    ("DownloadFiles", "OODO", "NNNN"),
    ("GetUsage", "OOOO", "NNNN"),
    ("GetSandboxLogs", "OODO", "NNNN"),
    // Without sessions.manage the answer is the same for any organization,
    // one that does not exist included: nothing is learned.
    ("StopSandboxes", "OODD", "NNDD"),
];

fn expected(letter: u8) -> Code {
    match letter {
        b'O' => Code::Ok,
        b'D' => Code::PermissionDenied,
        b'N' => Code::NotFound,
        other => panic!("bad matrix letter {}", other as char),
    }
}

#[test]
fn every_sandbox_rpc_has_a_row() {
    let rpcs: Vec<&str> = paddock_proto::ACCESS
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(SERVICE))
        .collect();
    for rpc in &rpcs {
        assert!(
            MATRIX.iter().any(|(m, _, _)| m == rpc),
            "{rpc} has no row in the sandbox permission matrix"
        );
    }
    assert_eq!(
        MATRIX.len(),
        rpcs.len(),
        "the matrix names an RPC that does not exist"
    );
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

/// One call of `method` as `role` of `me` against a fresh sandbox of
/// `target` (created by its owner, running as its agent).
async fn call(env: &Env, method: &str, role: &str, me: &Org, target: &Org) -> Code {
    let mut c = env.sandboxes(me.token(role));
    let mut owner = env.sandboxes(&target.owner);
    if method == "CreateSandbox" {
        let got = c
            .create_sandbox(CreateSandboxRequest {
                parent: target.name.clone(),
                spec: Some(spec("web")),
            })
            .await;
        if let Ok(r) = &got
            && let Some(s) = &r.get_ref().sandbox
        {
            let _ = owner
                .stop_sandbox(StopSandboxRequest {
                    name: s.name.clone(),
                    grace_period: None,
                })
                .await;
        }
        return code(got);
    }
    if method == "ListSandboxes" {
        return code(
            c.list_sandboxes(ListSandboxesRequest {
                parent: target.name.clone(),
                ..Default::default()
            })
            .await,
        );
    }
    let sandbox = create(&mut owner, spec("web"))
        .await
        .expect("target sandbox");
    let name = sandbox.name.clone();
    let got = match method {
        "GetSandbox" => code(
            c.get_sandbox(GetSandboxRequest { name: name.clone() })
                .await,
        ),
        "StopSandbox" => code(
            c.stop_sandbox(StopSandboxRequest {
                name: name.clone(),
                grace_period: None,
            })
            .await,
        ),
        "DeleteSandbox" => code(
            c.delete_sandbox(DeleteSandboxRequest { name: name.clone() })
                .await,
        ),
        "WatchSandbox" => code(
            c.watch_sandbox(WatchSandboxRequest { name: name.clone() })
                .await,
        ),
        "Exec" => code(exec(&mut c, &name, &["true"], None).await),
        "UploadFiles" => {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_path("m.txt").expect("path");
            h.set_cksum();
            b.append(&h, &b"m"[..]).expect("append");
            let msgs = vec![
                UploadFilesRequest {
                    message: Some(upload_files_request::Message::Start(UploadStart {
                        sandbox: name.clone(),
                        path: String::new(),
                        ..Default::default()
                    })),
                },
                UploadFilesRequest {
                    message: Some(upload_files_request::Message::Chunk(
                        b.into_inner().expect("tar"),
                    )),
                },
            ];
            code(c.upload_files(tokio_stream::iter(msgs)).await)
        }
        "DownloadFiles" => code(
            c.download_files(DownloadFilesRequest {
                sandbox: name.clone(),
                path: String::new(),
            })
            .await,
        ),
        "GetUsage" => code(c.get_usage(GetUsageRequest { name: name.clone() }).await),
        "GetSandboxLogs" => code(
            c.get_sandbox_logs(GetSandboxLogsRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await,
        ),
        "StopSandboxes" => code(
            c.stop_sandboxes(StopSandboxesRequest {
                parent: target.name.clone(),
                ..Default::default()
            })
            .await,
        ),
        other => panic!("no call for {other}"),
    };
    // Stop it, so the agent's concurrency quota never fills up.
    let _ = owner
        .stop_sandbox(StopSandboxRequest {
            name,
            grace_period: None,
        })
        .await;
    got
}

async fn sandbox_permission_matrix(backend: Backend) {
    let env = Env::start(backend).await;
    let acme = setup_org(&env.stack, &fresh_id("acme")).await;
    let globex = setup_org(&env.stack, &fresh_id("globex")).await;
    let mut failures = Vec::new();
    for (method, own_row, other_row) in MATRIX {
        for (i, role) in ROLES.iter().enumerate() {
            for (target, row, which) in [(&acme, own_row, "own"), (&globex, other_row, "other")] {
                let want = expected(row.as_bytes()[i]);
                let got = call(&env, method, role, &acme, target).await;
                if got != want {
                    failures.push(format!(
                        "{method} as {role} on {which} org: want {want:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "sandbox permission matrix mismatches:\n{}",
        failures.join("\n")
    );
    env.shutdown().await;
}

backend_tests!(sandbox_permission_matrix);
