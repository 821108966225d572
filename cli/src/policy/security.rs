//! `paddock security`: show and change the organization's security
//! settings, which bound every agent policy (owners only for `set`).

use clap::{Args, Subcommand};
use paddock_policy as builtin;
use paddock_proto::authz::v1::{
    GetSecuritySettingsRequest, HardeningRelaxations, ResourceLimits, SecuritySettings,
    UpdateSecuritySettingsRequest,
};

use super::{
    AMOUNT_FLAGS, MaxArgs, NetworkArg, amount, client, label, list_cell, missing, mode_word,
    time_json, update_err, updated_cell,
};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::{print_fields, print_json};

/// How `security set` names the settings' fields.
const SECURITY_FLAGS: &[(&str, &str)] = &[
    ("max_sandboxes_per_agent", "--max-sandboxes-per-agent"),
    ("max_sandboxes", "--max-sandboxes"),
    ("max_network_mode", "--max-network"),
];

#[derive(Debug, Subcommand)]
pub enum SecurityCommand {
    /// Show the organization's security settings.
    Get,
    /// Change the organization's security settings (owners only): only the
    /// fields the flags name.
    Set(Box<SecuritySetArgs>),
}

#[derive(Debug, Args)]
pub struct SecuritySetArgs {
    #[command(flatten)]
    max: MaxArgs,
    /// Most concurrent sandboxes in the organization (0: built-in 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    max_sandboxes: Option<i32>,
    /// Most concurrent sandboxes of one agent (0: built-in 5).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    max_sandboxes_per_agent: Option<i32>,
    /// The widest network mode an agent policy may have.
    #[arg(long, value_enum)]
    max_network: Option<NetworkArg>,
    /// A Linux capability sandboxes may keep (e.g. NET_BIND_SERVICE; repeat). Replaces the list.
    #[arg(long = "allow-capability", value_name = "CAP")]
    capabilities: Vec<String>,
    /// Drop every capability again.
    #[arg(long, conflicts_with = "capabilities")]
    clear_capabilities: bool,
    /// Allow gaining privileges (setuid binaries).
    #[arg(long, value_name = "BOOL")]
    allow_new_privileges: Option<bool>,
    /// Run sandboxes without Docker's default seccomp profile.
    #[arg(long, value_name = "BOOL")]
    unconfined_seccomp: Option<bool>,
    /// Give sandboxes a writable root filesystem.
    #[arg(long, value_name = "BOOL")]
    writable_root_filesystem: Option<bool>,
    /// Let sandboxes run as root (uid 0).
    #[arg(long, value_name = "BOOL")]
    allow_root_user: Option<bool>,
    /// An image sandboxes may run: a reference or a glob (node:22, node:*,
    /// ghcr.io/acme/*; * for any); repeat. Replaces the list. None is
    /// approved until an owner approves some.
    #[arg(long = "allow-image", value_name = "IMAGE")]
    images: Vec<String>,
    /// Approve no image again.
    #[arg(long, conflicts_with = "images")]
    clear_images: bool,
}

impl SecuritySetArgs {
    fn request(&self) -> Result<UpdateSecuritySettingsRequest, CliError> {
        let mut s = SecuritySettings::default();
        let mut paths = Vec::new();
        let mut max = ResourceLimits::default();
        self.max.apply(&mut max, &mut paths);
        s.max = Some(max);
        if let Some(n) = self.max_sandboxes {
            s.max_sandboxes = n;
            paths.push("max_sandboxes".into());
        }
        if let Some(n) = self.max_sandboxes_per_agent {
            s.max_sandboxes_per_agent = n;
            paths.push("max_sandboxes_per_agent".into());
        }
        if let Some(mode) = self.max_network {
            s.max_network_mode = mode.mode() as i32;
            paths.push("max_network_mode".into());
        }
        let mut h = HardeningRelaxations::default();
        if self.clear_capabilities || !self.capabilities.is_empty() {
            h.allowed_capabilities = self.capabilities.clone();
            paths.push("hardening.allowed_capabilities".into());
        }
        for (value, slot, path) in [
            (
                self.allow_new_privileges,
                &mut h.allow_new_privileges,
                "allow_new_privileges",
            ),
            (
                self.unconfined_seccomp,
                &mut h.unconfined_seccomp,
                "unconfined_seccomp",
            ),
            (
                self.writable_root_filesystem,
                &mut h.writable_root_filesystem,
                "writable_root_filesystem",
            ),
            (
                self.allow_root_user,
                &mut h.allow_root_user,
                "allow_root_user",
            ),
        ] {
            if let Some(v) = value {
                *slot = v;
                paths.push(format!("hardening.{path}"));
            }
        }
        s.hardening = Some(h);
        if self.clear_images || !self.images.is_empty() {
            s.allowed_images = self.images.clone();
            paths.push("allowed_images".into());
        }
        if paths.is_empty() {
            return Err(CliError::usage(
                "nothing to set: pass at least one flag, e.g. --max-memory 8g or --max-network allowlist (see paddock security set --help)",
            ));
        }
        Ok(UpdateSecuritySettingsRequest {
            settings: Some(s),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
    }
}

pub async fn security(ctx: &mut Ctx, cmd: SecurityCommand) -> Result<(), CliError> {
    // An empty name is the caller's organization: no WhoAmI needed.
    let settings = match cmd {
        SecurityCommand::Get => {
            client(ctx)?
                .get_security_settings(GetSecuritySettingsRequest::default())
                .await
                .map_err(ctx.authz_err())?
                .into_inner()
                .settings
        }
        SecurityCommand::Set(args) => {
            client(ctx)?
                .update_security_settings(args.request()?)
                .await
                .map_err(update_err(ctx, &[SECURITY_FLAGS, AMOUNT_FLAGS]))?
                .into_inner()
                .settings
        }
    }
    .ok_or_else(|| missing("settings"))?;
    if ctx.json() {
        let mut v = paddock_policy::json::security_settings(&settings);
        v["update_time"] = time_json(settings.update_time.as_ref());
        print_json(&v);
    } else {
        print_fields(&settings_fields(&settings));
    }
    Ok(())
}

pub fn settings_fields(s: &SecuritySettings) -> Vec<(&'static str, String)> {
    let mut fields = vec![("name", s.name.clone())];
    let max = s.max.unwrap_or_default();
    for a in builtin::Amount::ALL {
        fields.push((label("max", a), amount(a, &max).unwrap_or_default()));
    }
    fields.push(("max sandboxes", s.max_sandboxes.to_string()));
    fields.push((
        "max sandboxes per agent",
        s.max_sandboxes_per_agent.to_string(),
    ));
    fields.push(("max network", mode_word(s.max_network_mode)));
    let h = s.hardening.clone().unwrap_or_default();
    fields.push((
        "capabilities kept",
        list_cell(h.allowed_capabilities.clone()),
    ));
    let relaxed = |on: bool| if on { "yes" } else { "no" }.to_owned();
    fields.push(("new privileges", relaxed(h.allow_new_privileges)));
    fields.push(("unconfined seccomp", relaxed(h.unconfined_seccomp)));
    fields.push(("writable root fs", relaxed(h.writable_root_filesystem)));
    fields.push(("root user", relaxed(h.allow_root_user)));
    fields.push(("allowed images", list_cell(s.allowed_images.clone())));
    fields.push((
        "updated",
        updated_cell(s.update_time.as_ref(), &s.updated_by),
    ));
    fields
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn security_flags_become_a_masked_update() {
        let cli = Cli::try_parse_from([
            "paddock",
            "security",
            "set",
            "--max-memory",
            "8g",
            "--max-network",
            "allowlist",
            "--allow-capability",
            "NET_BIND_SERVICE",
            "--allow-root-user",
            "false",
        ])
        .expect("parses");
        let Command::Security(SecurityCommand::Set(args)) = cli.command else {
            panic!("parsed as something else");
        };
        let req = args.request().expect("request");
        assert_eq!(
            req.update_mask.expect("mask").paths,
            vec![
                "max.memory_bytes",
                "max_network_mode",
                "hardening.allowed_capabilities",
                "hardening.allow_root_user"
            ]
        );
    }
}
