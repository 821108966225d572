//! Projects: an organization's projects. Creating, listing, reading,
//! updating (display name and description) and deleting one; a deletion is
//! pushed to the runner, which stops the project's sandboxes.

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, validate_id, validate_text};
use paddock_shared::time::{now_micros, timestamp};
use serde_json::json;

use super::Identity;
use super::request::{MAX_PAGE, caller_org, mask_paths, own_child, parent_org};
use crate::store::projects::{self as store, ProjectRow};
use paddock_shared::page::{Page, Query};

fn project(row: ProjectRow) -> Project {
    Project {
        name: child_name(&row.org_id, "projects", &row.project_id),
        display_name: row.display_name,
        description: row.description,
        created_by: row.created_by,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
    }
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateProjectRequest,
) -> Result<CreateProjectResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    validate_id("project", &req.project_id)?;
    let spec = req.project.unwrap_or_default();
    validate_text("display_name", &spec.display_name, 200)?;
    validate_text("description", &spec.description, 2000)?;
    let now = now_micros();
    let row = ProjectRow {
        org_id: org,
        project_id: req.project_id,
        display_name: spec.display_name,
        description: spec.description,
        created_by: caller.name.clone(),
        create_time: now,
        update_time: now,
    };
    let mut tx = identity.db.begin_write().await?;
    let name = child_name(&row.org_id, "projects", &row.project_id);
    store::insert(&mut *tx, &row)
        .await
        .map_err(|e| Error::exists_or(e, &name))?;
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "project.create", &name, json!({})),
        )
        .await?;
    Ok(CreateProjectResponse {
        project: Some(project(row)),
    })
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListProjectsRequest,
) -> Result<ListProjectsResponse> {
    let org = parent_org(caller, &req.parent)?;
    let query = Query::new("ListProjects", org);
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let mut rows = store::list(&identity.db.pool, org, page.start_after(), page.limit()).await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.project_id.clone());
    Ok(ListProjectsResponse {
        projects: rows.into_iter().map(project).collect(),
        next_page_token,
    })
}

pub(super) async fn get(
    identity: &Identity,
    caller: &Principal,
    req: GetProjectRequest,
) -> Result<GetProjectResponse> {
    let id = own_child(caller, &req.name, "projects")?;
    let row = store::get(&identity.db.pool, caller_org(caller)?, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    Ok(GetProjectResponse {
        project: Some(project(row)),
    })
}

pub(super) async fn update(
    identity: &Identity,
    caller: &Principal,
    req: UpdateProjectRequest,
) -> Result<UpdateProjectResponse> {
    let update = req
        .project
        .ok_or_else(|| Error::invalid("project is required"))?;
    let paths = mask_paths(req.update_mask.as_ref(), &["display_name", "description"])?;
    let org = caller_org(caller)?;
    let id = own_child(caller, &update.name, "projects")?;
    validate_text("display_name", &update.display_name, 200)?;
    validate_text("description", &update.description, 2000)?;
    let mut row = store::get(&identity.db.pool, org, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
    for p in &paths {
        match p.as_str() {
            "display_name" => row.display_name = update.display_name.clone(),
            _ => row.description = update.description.clone(),
        }
    }
    row.update_time = now_micros();
    let mut tx = identity.db.begin_write().await?;
    store::update(&mut *tx, &row).await?;
    let details = json!({"update_mask": paths});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "project.update", &update.name, details),
        )
        .await?;
    Ok(UpdateProjectResponse {
        project: Some(project(row)),
    })
}

pub(super) async fn delete(
    identity: &Identity,
    caller: &Principal,
    req: DeleteProjectRequest,
) -> Result<DeleteProjectResponse> {
    let id = own_child(caller, &req.name, "projects")?;
    let mut tx = identity.db.begin_write().await?;
    if !store::delete(&mut *tx, caller_org(caller)?, id).await? {
        return Err(Error::not_found(names::truncate(&req.name)));
    }
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "project.delete", &req.name, json!({})),
        )
        .await?;
    // The runner stops the project's sandboxes.
    identity.publish(Invalidation::Project(req.name));
    Ok(DeleteProjectResponse {})
}
