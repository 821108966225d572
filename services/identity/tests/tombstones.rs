//! Deleted organizations leave a tombstone: their id is never reused, and
//! services read the tombstones (ListDeletedOrganizations, internal) to purge
//! what they hold; on SQLite and PostgreSQL.

mod common;

use common::*;
use paddock_proto::identity::v1::*;
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

async fn delete_org(stack: &Stack, owner: &str, id: &str) {
    stack
        .identity(owner)
        .delete_organization(DeleteOrganizationRequest {
            name: format!("organizations/{id}"),
        })
        .await
        .expect("delete organization");
}

async fn deleted_ids_are_never_reused(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    delete_org(&stack, &acme.owner, "acme").await;
    let err = stack
        .identity(stack.bootstrap_token().expose())
        .create_organization(CreateOrganizationRequest {
            organization_id: "acme".into(),
            display_name: "Evil".into(),
            owner_email: "eve@evil.test".into(),
        })
        .await
        .expect_err("a deleted organization's id was reused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("organization id acme was used before and cannot be reused"),
        "{}",
        err.message()
    );
    // Another id is fine.
    stack.create_org("acme2", "a@acme2.test").await;
    stack.shutdown().await;
}

async fn deleted_organizations_are_listed_for_services_only(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    for id in ["gone-c", "gone-a", "gone-b"] {
        let created = stack.create_org(id, &format!("o@{id}.test")).await;
        delete_org(&stack, &created.owner_key_secret, id).await;
    }
    for role in ["owner", "admin", "developer", "agent"] {
        let err = stack
            .identity(acme.token(role))
            .list_deleted_organizations(ListDeletedOrganizationsRequest::default())
            .await
            .expect_err("internal RPC");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
    }
    let mut service = stack.identity(stack.service_token.expose());
    let first = service
        .list_deleted_organizations(ListDeletedOrganizationsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(first.organizations.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = service
        .list_deleted_organizations(ListDeletedOrganizationsRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .expect("second page")
        .into_inner();
    assert!(second.next_page_token.is_empty());
    let names: Vec<String> = first
        .organizations
        .iter()
        .chain(&second.organizations)
        .map(|o| o.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "organizations/gone-a",
            "organizations/gone-b",
            "organizations/gone-c"
        ]
    );
    assert!(first.organizations.iter().all(|o| o.delete_time.is_some()));
    stack.shutdown().await;
}

backend_tests!(
    deleted_ids_are_never_reused,
    deleted_organizations_are_listed_for_services_only,
);
