//! The permission matrix: every RPC × every role × (own org, other org) →
//! expected outcome, from one table. An RPC without a row fails the test.

mod common;

use common::*;
use paddock_proto::audit::v1::*;
use paddock_proto::authz::v1::*;
use paddock_proto::identity::v1::*;
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

const SANDBOX_SERVICE: &str = "/paddock.sandbox.v1.SandboxService/";

const ROLES: [&str; 4] = ["owner", "admin", "developer", "agent"];

/// (method, own org, other org); one letter per role in ROLES order:
/// O = OK, D = PERMISSION_DENIED, N = NOT_FOUND.
const MATRIX: &[(&str, &str, &str)] = &[
    (
        "/paddock.identity.v1.IdentityService/CreateOrganization",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetOrganization",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/UpdateOrganization",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/DeleteOrganization",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListDeletedOrganizations",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListOrganizations",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateInvite",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/AcceptInvite",
        "OOOO",
        "OOOO",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListInvites",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/RevokeInvite",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListMembers",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetMember",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/UpdateMember",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/DeleteMember",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateAgent",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListAgents",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetAgent",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/UpdateAgent",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/DeleteAgent",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateProject",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListProjects",
        "OOOO",
        "NNNN",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetProject",
        "OOOO",
        "NNNN",
    ),
    (
        "/paddock.identity.v1.IdentityService/UpdateProject",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/DeleteProject",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateApiKey",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListApiKeys",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/RevokeApiKey",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/RotateApiKey",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateCredential",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/ListCredentials",
        "OOOO",
        "NNNN",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetCredential",
        "OOOD",
        "NNNN",
    ),
    (
        "/paddock.identity.v1.IdentityService/DeleteCredential",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/RotateCredential",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/RevealCredential",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/CreateSessionToken",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/RevokeSessionToken",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/Authenticate",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/GetPrincipal",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/LookupResources",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/WatchInvalidations",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.identity.v1.IdentityService/WhoAmI",
        "OOOO",
        "OOOO",
    ),
    ("/paddock.authz.v1.AuthzService/Check", "OOOO", "OOOO"),
    ("/paddock.authz.v1.AuthzService/BatchCheck", "OOOO", "OOOO"),
    (
        "/paddock.authz.v1.AuthzService/ListPermissions",
        "OOOO",
        "OOOO",
    ),
    ("/paddock.authz.v1.AuthzService/ListRoles", "OOOO", "OOOO"),
    (
        "/paddock.authz.v1.PolicyService/GetAgentPolicy",
        "OOOD",
        "NNND",
    ),
    (
        "/paddock.authz.v1.PolicyService/UpdateAgentPolicy",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.authz.v1.PolicyService/GetSecuritySettings",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.authz.v1.PolicyService/UpdateSecuritySettings",
        "ODDD",
        "NDDD",
    ),
    (
        "/paddock.authz.v1.PolicyService/GetEffectivePolicy",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.audit.v1.AuditService/AppendEvents",
        "DDDD",
        "DDDD",
    ),
    ("/paddock.audit.v1.AuditService/QueryEvents", "OODD", "NNDD"),
    ("/paddock.audit.v1.AuditService/TailEvents", "OODD", "NNDD"),
    ("/paddock.audit.v1.AuditService/VerifyChain", "OODD", "NNDD"),
    (
        "/paddock.audit.v1.AuditService/QueryPlatformEvents",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.audit.v1.AuditService/VerifyPlatformChain",
        "DDDD",
        "DDDD",
    ),
    (
        "/paddock.audit.v1.AuditService/ExportEvents",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.audit.v1.AuditService/GetAuditSettings",
        "OODD",
        "NNDD",
    ),
    (
        "/paddock.audit.v1.AuditService/UpdateAuditSettings",
        "ODDD",
        "NDDD",
    ),
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
fn every_rpc_has_a_row() {
    // The sandbox runner's RPCs need a Docker Engine; their rows live in
    // services/sandbox-runner/tests/matrix.rs, which checks them the same way.
    let here = |path: &&str| !path.starts_with(SANDBOX_SERVICE);
    for (path, _) in paddock_proto::ACCESS.iter().filter(|(p, _)| here(p)) {
        assert!(
            MATRIX.iter().any(|(p, _, _)| p == path),
            "{path} has no row in the permission matrix"
        );
    }
    assert_eq!(
        MATRIX.len(),
        paddock_proto::ACCESS
            .iter()
            .filter(|(p, _)| here(p))
            .count(),
        "the matrix names an RPC that does not exist"
    );
}

/// Makes one call of `method` as `role` of `me` against `target`'s
/// resources, creating fresh resources as needed.
async fn call(stack: &Stack, method: &str, role: &str, me: &Org, target: &Org) -> Code {
    let token = me.token(role);
    let own = me.id == target.id;
    let org = target.name.clone();
    let mut c = stack.identity(token);
    let mut a = stack.authz(token);
    let mut pol = stack.policy(token);
    let mut au = stack.audit(token);
    let owner = stack.identity(&target.owner);
    match method {
        "CreateOrganization" => code(
            c.create_organization(CreateOrganizationRequest {
                organization_id: fresh_id("org"),
                display_name: String::new(),
                owner_email: "x@y.test".into(),
            })
            .await,
        ),
        "GetOrganization" => code(
            c.get_organization(GetOrganizationRequest { name: org })
                .await,
        ),
        "UpdateOrganization" => code(
            c.update_organization(UpdateOrganizationRequest {
                organization: Some(Organization {
                    name: org,
                    display_name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await,
        ),
        "DeleteOrganization" => {
            if own && role == "owner" {
                // Delete a throwaway organization as its own owner.
                let id = fresh_id("gone");
                let created = stack.create_org(&id, "o@gone.test").await;
                code(
                    stack
                        .identity(&created.owner_key_secret)
                        .delete_organization(DeleteOrganizationRequest {
                            name: format!("organizations/{id}"),
                        })
                        .await,
                )
            } else {
                code(
                    c.delete_organization(DeleteOrganizationRequest { name: org })
                        .await,
                )
            }
        }
        "ListDeletedOrganizations" => code(
            c.list_deleted_organizations(ListDeletedOrganizationsRequest::default())
                .await,
        ),
        "ListOrganizations" => code(
            c.list_organizations(ListOrganizationsRequest::default())
                .await,
        ),
        "CreateInvite" => code(
            c.create_invite(CreateInviteRequest {
                parent: org,
                email: format!("{}@x.test", fresh_id("i")),
                role: "developer".into(),
                ttl: None,
            })
            .await,
        ),
        "AcceptInvite" => {
            let invite = owner
                .clone()
                .create_invite(CreateInviteRequest {
                    parent: org,
                    email: format!("{}@x.test", fresh_id("a")),
                    role: "developer".into(),
                    ttl: None,
                })
                .await
                .expect("invite")
                .into_inner();
            code(
                c.accept_invite(AcceptInviteRequest {
                    code: invite.code,
                    key_display_name: String::new(),
                })
                .await,
            )
        }
        "ListInvites" => code(
            c.list_invites(ListInvitesRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "RevokeInvite" => {
            let invite = owner
                .clone()
                .create_invite(CreateInviteRequest {
                    parent: org,
                    email: format!("{}@x.test", fresh_id("r")),
                    role: "developer".into(),
                    ttl: None,
                })
                .await
                .expect("invite")
                .into_inner();
            code(
                c.revoke_invite(RevokeInviteRequest { name: invite.name })
                    .await,
            )
        }
        "ListMembers" => code(
            c.list_members(ListMembersRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "GetMember" => code(
            c.get_member(GetMemberRequest {
                name: target.owner_member.clone(),
            })
            .await,
        ),
        "UpdateMember" => {
            let (m, _) = add_member(
                stack,
                &target.owner,
                &target.id,
                &format!("{}@x.test", fresh_id("u")),
                "developer",
            )
            .await;
            code(
                c.update_member(UpdateMemberRequest {
                    member: Some(Member {
                        name: m.name,
                        role: "developer".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["role".into()],
                    }),
                })
                .await,
            )
        }
        "DeleteMember" => {
            let (m, _) = add_member(
                stack,
                &target.owner,
                &target.id,
                &format!("{}@x.test", fresh_id("d")),
                "developer",
            )
            .await;
            code(c.delete_member(DeleteMemberRequest { name: m.name }).await)
        }
        "CreateAgent" => code(
            c.create_agent(CreateAgentRequest {
                parent: org,
                agent_id: fresh_id("agent"),
                agent: None,
            })
            .await,
        ),
        "ListAgents" => code(
            c.list_agents(ListAgentsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "GetAgent" => code(
            c.get_agent(GetAgentRequest {
                name: format!("{org}/agents/bot"),
            })
            .await,
        ),
        "UpdateAgent" => code(
            c.update_agent(UpdateAgentRequest {
                agent: Some(Agent {
                    name: format!("{org}/agents/bot"),
                    description: "matrix".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            })
            .await,
        ),
        "DeleteAgent" => {
            let id = fresh_id("agent");
            owner
                .clone()
                .create_agent(CreateAgentRequest {
                    parent: org.clone(),
                    agent_id: id.clone(),
                    agent: None,
                })
                .await
                .expect("agent");
            code(
                c.delete_agent(DeleteAgentRequest {
                    name: format!("{org}/agents/{id}"),
                })
                .await,
            )
        }
        "CreateProject" => code(
            c.create_project(CreateProjectRequest {
                parent: org,
                project_id: fresh_id("p"),
                project: None,
            })
            .await,
        ),
        "ListProjects" => code(
            c.list_projects(ListProjectsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "GetProject" => code(
            c.get_project(GetProjectRequest {
                name: format!("{org}/projects/web"),
            })
            .await,
        ),
        "UpdateProject" => code(
            c.update_project(UpdateProjectRequest {
                project: Some(Project {
                    name: format!("{org}/projects/web"),
                    display_name: "Web".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await,
        ),
        "DeleteProject" => {
            let id = fresh_id("p");
            owner
                .clone()
                .create_project(CreateProjectRequest {
                    parent: org.clone(),
                    project_id: id.clone(),
                    project: None,
                })
                .await
                .expect("project");
            code(
                c.delete_project(DeleteProjectRequest {
                    name: format!("{org}/projects/{id}"),
                })
                .await,
            )
        }
        "CreateApiKey" => code(mint_key(stack, token, &target.id, "", "", &[]).await),
        "ListApiKeys" => code(
            c.list_api_keys(ListApiKeysRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "RevokeApiKey" => {
            let key = if !own {
                mint_key(stack, &target.owner, &target.id, "", "", &[])
                    .await
                    .expect("key")
            } else if role == "agent" {
                mint_key(
                    stack,
                    &target.owner,
                    &target.id,
                    &format!("{org}/agents/bot"),
                    "",
                    &[],
                )
                .await
                .expect("key")
            } else {
                mint_key(stack, token, &target.id, "", "", &[])
                    .await
                    .expect("own key")
            };
            code(
                c.revoke_api_key(RevokeApiKeyRequest {
                    name: key.api_key.expect("key").name,
                })
                .await,
            )
        }
        "RotateApiKey" => {
            let key = if !own {
                mint_key(stack, &target.owner, &target.id, "", "", &[])
                    .await
                    .expect("key")
            } else if role == "agent" {
                mint_key(
                    stack,
                    &target.owner,
                    &target.id,
                    &format!("{org}/agents/bot"),
                    "",
                    &[],
                )
                .await
                .expect("key")
            } else {
                mint_key(stack, token, &target.id, "", "", &[])
                    .await
                    .expect("own key")
            };
            code(
                c.rotate_api_key(RotateApiKeyRequest {
                    name: key.api_key.expect("key").name,
                    grace_period: None,
                })
                .await,
            )
        }
        "CreateCredential" => code(
            c.create_credential(CreateCredentialRequest {
                parent: org,
                credential_id: fresh_id("cred"),
                credential: None,
                value: b"matrix value".to_vec(),
            })
            .await,
        ),
        "ListCredentials" => code(
            c.list_credentials(ListCredentialsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "GetCredential" => code(
            c.get_credential(GetCredentialRequest {
                name: format!("{org}/credentials/deploy-key"),
            })
            .await,
        ),
        "DeleteCredential" => {
            let id = fresh_id("cred");
            owner
                .clone()
                .create_credential(CreateCredentialRequest {
                    parent: org.clone(),
                    credential_id: id.clone(),
                    credential: None,
                    value: b"to delete".to_vec(),
                })
                .await
                .expect("credential");
            code(
                c.delete_credential(DeleteCredentialRequest {
                    name: format!("{org}/credentials/{id}"),
                })
                .await,
            )
        }
        "RotateCredential" => {
            let id = fresh_id("cred");
            owner
                .clone()
                .create_credential(CreateCredentialRequest {
                    parent: org.clone(),
                    credential_id: id.clone(),
                    credential: None,
                    value: b"to rotate".to_vec(),
                })
                .await
                .expect("credential");
            code(
                c.rotate_credential(RotateCredentialRequest {
                    name: format!("{org}/credentials/{id}"),
                    value: b"rotated".to_vec(),
                })
                .await,
            )
        }
        "RevealCredential" => code(
            c.reveal_credential(RevealCredentialRequest {
                name: format!("{org}/credentials/deploy-key"),
                sandbox: format!("{org}/sandboxes/sb1"),
            })
            .await,
        ),
        "CreateSessionToken" => code(
            c.create_session_token(CreateSessionTokenRequest {
                agent: format!("{org}/agents/bot"),
                sandbox: format!("{org}/sandboxes/sb1"),
                ttl: None,
            })
            .await,
        ),
        "RevokeSessionToken" => code(
            c.revoke_session_token(RevokeSessionTokenRequest {
                sandbox: format!("{org}/sandboxes/sb1"),
            })
            .await,
        ),
        "Authenticate" => code(
            c.authenticate(AuthenticateRequest {
                token: token.to_owned(),
            })
            .await,
        ),
        "GetPrincipal" => code(
            c.get_principal(GetPrincipalRequest {
                name: format!("{org}/agents/bot"),
            })
            .await,
        ),
        "LookupResources" => code(
            c.lookup_resources(LookupResourcesRequest {
                names: vec![format!("{org}/agents/bot")],
                principal_ids: Vec::new(),
            })
            .await,
        ),
        "WatchInvalidations" => code(c.watch_invalidations(WatchInvalidationsRequest {}).await),
        "WhoAmI" => code(c.who_am_i(WhoAmIRequest {}).await),
        "Check" => code(
            a.check(CheckRequest {
                permission: "projects.read".into(),
                resource: format!("{org}/projects/web"),
                ..Default::default()
            })
            .await,
        ),
        "BatchCheck" => code(
            a.batch_check(BatchCheckRequest {
                principal: None,
                items: vec![BatchCheckItem {
                    permission: "projects.read".into(),
                    resource: format!("{org}/projects/web"),
                    resource_owner: String::new(),
                }],
            })
            .await,
        ),
        "ListPermissions" => code(
            a.list_permissions(ListPermissionsRequest { principal: None })
                .await,
        ),
        "ListRoles" => code(a.list_roles(ListRolesRequest {}).await),
        "GetAgentPolicy" => code(
            pol.get_agent_policy(GetAgentPolicyRequest {
                name: format!("{org}/agents/bot/policy"),
            })
            .await,
        ),
        "UpdateAgentPolicy" => code(
            pol.update_agent_policy(UpdateAgentPolicyRequest {
                policy: Some(AgentPolicy {
                    name: format!("{org}/agents/bot/policy"),
                    max_sandboxes: 2,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_sandboxes".into()],
                }),
            })
            .await,
        ),
        "GetSecuritySettings" => code(
            pol.get_security_settings(GetSecuritySettingsRequest {
                name: format!("{org}/securitySettings"),
            })
            .await,
        ),
        "UpdateSecuritySettings" => code(
            pol.update_security_settings(UpdateSecuritySettingsRequest {
                settings: Some(SecuritySettings {
                    name: format!("{org}/securitySettings"),
                    max_sandboxes: 10,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_sandboxes".into()],
                }),
            })
            .await,
        ),
        "GetEffectivePolicy" => code(
            pol.get_effective_policy(GetEffectivePolicyRequest {
                agent: format!("{org}/agents/bot"),
            })
            .await,
        ),
        "AppendEvents" => code(
            au.append_events(AppendEventsRequest {
                events: vec![AuditEvent {
                    id: "0190f7a0-0000-7000-8000-000000000001".into(),
                    organization: org,
                    action: "test.event".into(),
                    ..Default::default()
                }],
            })
            .await,
        ),
        "QueryEvents" => code(
            au.query_events(QueryEventsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "TailEvents" => code(
            au.tail_events(TailEventsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "QueryPlatformEvents" => code(
            au.clone()
                .query_platform_events(QueryPlatformEventsRequest::default())
                .await,
        ),
        "VerifyPlatformChain" => code(
            au.clone()
                .verify_platform_chain(VerifyPlatformChainRequest::default())
                .await,
        ),
        "VerifyChain" => code(
            au.verify_chain(VerifyChainRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "ExportEvents" => code(
            au.export_events(ExportEventsRequest {
                parent: org,
                ..Default::default()
            })
            .await,
        ),
        "GetAuditSettings" => code(
            au.get_audit_settings(GetAuditSettingsRequest { name: org })
                .await,
        ),
        "UpdateAuditSettings" => code(
            au.update_audit_settings(UpdateAuditSettingsRequest {
                settings: Some(AuditSettings {
                    name: format!("{org}/auditSettings"),
                    retention_days: 0,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
        ),
        other => panic!("the matrix has no call for {other}"),
    }
}

async fn permission_matrix(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    for org in [&acme, &globex] {
        stack
            .identity(&org.owner)
            .create_credential(CreateCredentialRequest {
                parent: org.name.clone(),
                credential_id: "deploy-key".into(),
                credential: None,
                value: b"matrix deploy key".to_vec(),
            })
            .await
            .expect("credential");
    }
    let mut failures = Vec::new();
    for (path, own_row, other_row) in MATRIX {
        let method = path.rsplit('/').next().expect("method");
        for (i, role) in ROLES.iter().enumerate() {
            for (target, row, which) in [(&acme, own_row, "own"), (&globex, other_row, "other")] {
                let want = expected(row.as_bytes()[i]);
                eprintln!("matrix: {method} as {role} on {which}");
                let got = call(&stack, method, role, &acme, target).await;
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
        "permission matrix mismatches:\n{}",
        failures.join("\n")
    );
    stack.shutdown().await;
}

backend_tests!(permission_matrix);
