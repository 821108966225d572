//! `ListOrganizations`: the platform operator's view across tenants (the
//! admission layer admits only the bootstrap token).

use paddock_proto::identity::v1::*;
use paddock_shared::error::Result;

use super::{Identity, OrgRow, next_page, organization, page};

pub(super) async fn list(
    identity: &Identity,
    req: ListOrganizationsRequest,
) -> Result<ListOrganizationsResponse> {
    let page = page(req.page_size, &req.page_token)?;
    let mut rows: Vec<OrgRow> = sqlx::query_as(
        "SELECT id, display_name, max_key_lifetime_secs, allow_non_expiring_keys, create_time FROM organizations WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.size + 1)
    .fetch_all(&identity.db.pool)
    .await?;
    let next_page_token = next_page(&mut rows, &page, |r| r.0.clone());
    Ok(ListOrganizationsResponse {
        organizations: rows.into_iter().map(organization).collect(),
        next_page_token,
    })
}
