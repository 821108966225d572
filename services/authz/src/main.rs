//! `paddock-authz`: the authz service alone.

use clap::Parser;

#[derive(Parser)]
#[command(name = "paddock-authz", about = "Paddock authz service")]
struct Cli {
    #[command(flatten)]
    config: paddock_authz::Config,
    /// File holding the service token shared by the services (mode 0600).
    #[arg(
        long,
        env = "PADDOCK_SERVICE_TOKEN_FILE",
        default_value = "paddock-data/service-token"
    )]
    service_token_file: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), paddock_authz::StartError> {
    paddock_shared::telemetry::init();
    let cli = Cli::parse();
    let token = paddock_shared::server::load_or_create_token(
        &cli.service_token_file,
        paddock_shared::token::TokenKind::Service,
    )?;
    let server = paddock_authz::start(&cli.config, &token).await?;
    paddock_shared::server::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
