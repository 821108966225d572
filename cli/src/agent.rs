//! `paddock agent`: AI-agent identities: create, list, show, update
//! (description, role) and delete.

use clap::Subcommand;
use paddock_proto::identity::v1::{
    Agent, CreateAgentRequest, DeleteAgentRequest, GetAgentRequest, ListAgentsRequest,
    UpdateAgentRequest,
};

use crate::commands::{Ctx, all_pages, missing, print_deleted, split_for_create, update_mask};
use crate::error::CliError;
use crate::names::{self, AGENTS};
use crate::output::{self, Table, print_fields, print_json, print_list};

/// How the agent commands name the agent's fields.
const AGENT_FLAGS: &[(&str, &str)] = &[("description", "--description")];

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an AI-agent identity.
    Create {
        /// Agent id, e.g. code-reviewer.
        name: String,
        /// What the agent is for.
        #[arg(long)]
        description: Option<String>,
        /// The agent's role: agent (the default), developer, admin or owner,
        /// never above your own.
        #[arg(long)]
        role: Option<String>,
    },
    /// List agents.
    List,
    /// Show one agent.
    Get {
        /// The agent's id (bot) or full resource name.
        name: String,
    },
    /// Change an agent's description or role (agents.manage); its keys
    /// follow a new role at once.
    Update {
        /// The agent's id (bot) or full resource name.
        name: String,
        /// What the agent is for.
        #[arg(long)]
        description: Option<String>,
        /// The agent's new role: agent, developer, admin or owner, never
        /// above your own.
        #[arg(long)]
        role: Option<String>,
    },
    /// Delete an agent and revoke its keys.
    Delete {
        /// The agent's id (bot) or full resource name.
        name: String,
    },
}

pub async fn run(ctx: &mut Ctx, cmd: AgentCommand) -> Result<(), CliError> {
    match cmd {
        AgentCommand::Create {
            name,
            description,
            role,
        } => {
            let (parent, agent_id) = split_for_create(ctx, AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .create_agent(CreateAgentRequest {
                    parent,
                    agent_id,
                    agent: Some(Agent {
                        description: description.unwrap_or_default(),
                        role: role.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(AGENT_FLAGS))?
                .into_inner();
            show_agent(ctx, &resp.agent.ok_or_else(|| missing("agent"))?);
            Ok(())
        }
        AgentCommand::List => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let agents = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListAgentsRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_agents(req).await?.into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                print_list(agents.iter().map(output::agent_json));
            } else {
                let mut t = Table::new(&["NAME", "ROLE", "DESCRIPTION", "CREATED"]);
                for a in &agents {
                    t.row(vec![
                        names::short(&a.name).to_owned(),
                        a.role.clone(),
                        a.description.clone(),
                        output::ts_cell(a.create_time.as_ref()),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        AgentCommand::Get { name } => {
            let name = ctx.expand(AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_agent(GetAgentRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_agent(ctx, &resp.agent.ok_or_else(|| missing("agent"))?);
            Ok(())
        }
        AgentCommand::Update {
            name,
            description,
            role,
        } => {
            let mask = update_mask(&[
                ("description", "--description", description.is_some()),
                ("role", "--role", role.is_some()),
            ])?;
            let name = ctx.expand(AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .update_agent(UpdateAgentRequest {
                    agent: Some(Agent {
                        name,
                        description: description.unwrap_or_default(),
                        role: role.unwrap_or_default(),
                        ..Default::default()
                    }),
                    update_mask: Some(mask),
                })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(AGENT_FLAGS))?
                .into_inner();
            show_agent(ctx, &resp.agent.ok_or_else(|| missing("agent"))?);
            Ok(())
        }
        AgentCommand::Delete { name } => {
            let name = ctx.expand(AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            client
                .delete_agent(DeleteAgentRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

fn show_agent(ctx: &Ctx, a: &Agent) {
    if ctx.json() {
        print_json(&output::agent_json(a));
    } else {
        print_fields(&output::agent_fields(a));
    }
}
