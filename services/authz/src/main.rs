//! `paddock-authz`: the authz service alone.

use clap::Parser;

#[derive(Parser)]
#[command(name = "paddock-authz", about = "Paddock authz service")]
struct Cli {
    #[command(flatten)]
    config: paddock_authz::Config,
    /// File holding the service token shared by the services (mode 0600);
    /// default {data-dir}/service-token.
    #[arg(long, env = "PADDOCK_SERVICE_TOKEN_FILE")]
    service_token_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), paddock_authz::StartError> {
    paddock_shared::telemetry::init();
    let mut cli = Cli::parse();
    if cli.config.database_url.is_none() {
        cli.config.database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    }
    let token_file = cli
        .service_token_file
        .unwrap_or_else(|| cli.config.data_dir.join("service-token"));
    let token = paddock_shared::server::load_or_create_token(
        &token_file,
        paddock_shared::token::TokenKind::Service,
    )?;
    let server = paddock_authz::start(&cli.config, &token).await?;
    paddock_shared::server::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
