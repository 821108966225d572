//! `paddock credential`: store, list, show, rotate and delete credentials (SSH keys,
//! git config, API tokens, files) that sandboxes mount read-only. The CLI
//! sends a value once, from a file or stdin, and never prints one: no RPC
//! open to people returns it.

use std::io::Read;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use paddock_proto::identity::v1::{
    CreateCredentialRequest, Credential, CredentialKind, DeleteCredentialRequest,
    GetCredentialRequest, ListCredentialsRequest, RotateCredentialRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::commands::{Ctx, all_pages, missing, print_deleted};
use crate::error::CliError;
use crate::names::{self, CREDENTIALS};
use crate::output::{self, Table, print_fields, print_json};

/// Largest value identity stores (64 KiB).
const MAX_VALUE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Store a credential; its value is encrypted at rest and never shown again.
    Create {
        /// Credential id, e.g. deploy-key.
        name: String,
        /// File holding the value (at most 64 KiB); `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
        /// What the value is; it only changes how it is shown.
        #[arg(long, value_enum, default_value = "file")]
        kind: Kind,
        /// What the credential is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List credentials (without values).
    List,
    /// Show one credential (without its value).
    Get {
        /// The credential's id (deploy-key) or full resource name.
        name: String,
    },
    /// Replace a credential's value; sandboxes started afterwards mount
    /// the new one. The value is never shown or logged.
    Rotate {
        /// The credential's id (deploy-key) or full resource name.
        name: String,
        /// File holding the new value (at most 64 KiB); `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a credential.
    Delete {
        /// The credential's id (deploy-key) or full resource name.
        name: String,
    },
}

/// `--kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    SshKey,
    GitConfig,
    ApiToken,
    File,
}

impl From<Kind> for CredentialKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::SshKey => CredentialKind::SshKey,
            Kind::GitConfig => CredentialKind::GitConfig,
            Kind::ApiToken => CredentialKind::ApiToken,
            Kind::File => CredentialKind::File,
        }
    }
}

fn kind_name(kind: i32) -> &'static str {
    match CredentialKind::try_from(kind) {
        Ok(CredentialKind::SshKey) => "ssh-key",
        Ok(CredentialKind::GitConfig) => "git-config",
        Ok(CredentialKind::ApiToken) => "api-token",
        Ok(CredentialKind::File) => "file",
        _ => "unspecified",
    }
}

pub fn credential_json(c: &Credential) -> Value {
    json!({
        "name": c.name,
        "kind": kind_name(c.kind),
        "description": c.description,
        "size_bytes": c.size_bytes,
        "created_by": c.created_by,
        "create_time": c.create_time.as_ref().map(output::rfc3339),
        "rotate_time": c.rotate_time.as_ref().map(output::rfc3339),
    })
}

fn credential_fields(c: &Credential) -> Vec<(&'static str, String)> {
    vec![
        ("name", c.name.clone()),
        ("kind", kind_name(c.kind).to_owned()),
        (
            "description",
            if c.description.is_empty() {
                "-".to_owned()
            } else {
                c.description.clone()
            },
        ),
        ("size", output::human_bytes(c.size_bytes)),
        ("created by", c.created_by.clone()),
        ("created", output::ts_cell(c.create_time.as_ref())),
        ("rotated", output::ts_cell(c.rotate_time.as_ref())),
    ]
}

fn show(ctx: &Ctx, c: &Credential) {
    if ctx.json() {
        print_json(&credential_json(c));
    } else {
        print_fields(&credential_fields(c));
    }
}

/// Reads the value, refusing more than identity would store before sending
/// anything. Errors name the file, never its contents.
fn read_value(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let shown = path.display();
    let mut value = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_VALUE_BYTES + 1)
            .read_to_end(&mut value)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_VALUE_BYTES + 1).read_to_end(&mut value))
    };
    read.map_err(|e| CliError::new(Code::InvalidArgument, format!("cannot read {shown}: {e}")))?;
    if value.len() as u64 > MAX_VALUE_BYTES {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!("{shown} is larger than 64 KiB, the most a credential holds"),
        ));
    }
    if value.is_empty() {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!("{shown} is empty"),
        ));
    }
    Ok(value)
}

pub async fn run(ctx: &mut Ctx, cmd: CredentialCommand) -> Result<(), CliError> {
    match cmd {
        CredentialCommand::Create {
            name,
            file,
            kind,
            description,
        } => {
            let full = ctx.expand(CREDENTIALS, &name).await?;
            let value = read_value(&file)?;
            let parent = names::org_name(names::org_of(&full).unwrap_or_default());
            let mut client = ctx.identity()?;
            let resp = client
                .create_credential(CreateCredentialRequest {
                    parent,
                    credential_id: names::short(&full).to_owned(),
                    credential: Some(Credential {
                        kind: CredentialKind::from(kind) as i32,
                        description: description.unwrap_or_default(),
                        ..Default::default()
                    }),
                    value,
                })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(&[("value", "--file")]))?
                .into_inner();
            show(ctx, &resp.credential.ok_or_else(|| missing("credential"))?);
            Ok(())
        }
        CredentialCommand::List => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let credentials = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListCredentialsRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_credentials(req).await?.into_inner();
                    Ok((r.credentials, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                output::print_list(credentials.iter().map(credential_json));
            } else {
                let mut t = Table::new(&["NAME", "KIND", "SIZE", "DESCRIPTION", "CREATED"]);
                for c in &credentials {
                    t.row(vec![
                        names::short(&c.name).to_owned(),
                        kind_name(c.kind).to_owned(),
                        output::human_bytes(c.size_bytes),
                        c.description.clone(),
                        output::ts_cell(c.create_time.as_ref()),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        CredentialCommand::Get { name } => {
            let name = ctx.expand(CREDENTIALS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_credential(GetCredentialRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show(ctx, &resp.credential.ok_or_else(|| missing("credential"))?);
            Ok(())
        }
        CredentialCommand::Rotate { name, file } => {
            let name = ctx.expand(CREDENTIALS, &name).await?;
            let value = read_value(&file)?;
            let mut client = ctx.identity()?;
            let resp = client
                .rotate_credential(RotateCredentialRequest { name, value })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(&[("value", "--file")]))?
                .into_inner();
            show(ctx, &resp.credential.ok_or_else(|| missing("credential"))?);
            Ok(())
        }
        CredentialCommand::Delete { name } => {
            let name = ctx.expand(CREDENTIALS, &name).await?;
            let mut client = ctx.identity()?;
            client
                .delete_credential(DeleteCredentialRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_within_the_limit() {
        let dir = std::env::temp_dir().join(format!("paddock-cli-cred-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ok = dir.join("ok");
        std::fs::write(&ok, vec![b'a'; 64 * 1024]).expect("write");
        assert_eq!(read_value(&ok).expect("64 KiB").len(), 64 * 1024);
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).expect("write");
        let err = read_value(&big).expect_err("too big");
        assert!(
            err.render()
                .unwrap_or_default()
                .starts_with("INVALID_ARGUMENT: ")
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert!(read_value(&empty).is_err());
        assert!(read_value(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
