//! `paddock project`: create, list, show, update (display name,
//! description) and delete projects.

use clap::Subcommand;
use paddock_proto::identity::v1::{
    CreateProjectRequest, DeleteProjectRequest, GetProjectRequest, ListProjectsRequest, Project,
    UpdateProjectRequest,
};

use crate::commands::{Ctx, all_pages, missing, print_deleted, split_for_create, update_mask};
use crate::error::CliError;
use crate::names::{self, PROJECTS};
use crate::output::{self, Table, print_fields, print_json, print_list};

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// Project id, e.g. web.
        name: String,
        /// A name for people, e.g. "Web app".
        #[arg(long)]
        display_name: Option<String>,
        /// What the project is.
        #[arg(long)]
        description: Option<String>,
    },
    /// List projects.
    List,
    /// Show one project.
    Get {
        /// The project's id (web) or full resource name.
        name: String,
    },
    /// Change a project's display name or description.
    Update {
        /// The project's id (web) or full resource name.
        name: String,
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
        /// What the project is.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a project.
    Delete {
        /// The project's id (web) or full resource name.
        name: String,
    },
}

pub async fn run(ctx: &mut Ctx, cmd: ProjectCommand) -> Result<(), CliError> {
    match cmd {
        ProjectCommand::Create {
            name,
            display_name,
            description,
        } => {
            let (parent, project_id) = split_for_create(ctx, PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .create_project(CreateProjectRequest {
                    parent,
                    project_id,
                    project: Some(Project {
                        display_name: display_name.unwrap_or_default(),
                        description: description.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::List => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let projects = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListProjectsRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_projects(req).await?.into_inner();
                    Ok((r.projects, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                print_list(projects.iter().map(output::project_json));
            } else {
                let mut t = Table::new(&["NAME", "DISPLAY NAME", "DESCRIPTION", "UPDATED"]);
                for p in &projects {
                    t.row(vec![
                        names::short(&p.name).to_owned(),
                        p.display_name.clone(),
                        p.description.clone(),
                        output::ts_cell(p.update_time.as_ref().or(p.create_time.as_ref())),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        ProjectCommand::Get { name } => {
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_project(GetProjectRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::Update {
            name,
            display_name,
            description,
        } => {
            let mask = update_mask(&[
                ("display_name", "--display-name", display_name.is_some()),
                ("description", "--description", description.is_some()),
            ])?;
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .update_project(UpdateProjectRequest {
                    project: Some(Project {
                        name,
                        display_name: display_name.unwrap_or_default(),
                        description: description.unwrap_or_default(),
                        ..Default::default()
                    }),
                    update_mask: Some(mask),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::Delete { name } => {
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            client
                .delete_project(DeleteProjectRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

fn show_project(ctx: &Ctx, p: &Project) {
    if ctx.json() {
        print_json(&output::project_json(p));
    } else {
        print_fields(&output::project_fields(p));
    }
}
