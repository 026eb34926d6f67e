//! `blindfold admin …`: operator commands. Migrations talk to the database; tenants and
//! tokens go through the API's admin routes with the operator token.

use anyhow::Context;
use clap::Subcommand;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::hospital::{Output, report};
use crate::service::ApiClient;
use crate::service::commands::Connection;

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Applies the service database's migrations (idempotent; forward-only).
    Migrate {
        /// The service database.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        output: Output,
    },
    /// Tenants (one per hospital).
    #[command(subcommand)]
    Tenant(Tenant),
    /// Tenants' API tokens.
    #[command(subcommand)]
    Token(Token),
}

/// `blindfold admin tenant …`.
#[derive(Debug, Subcommand)]
pub enum Tenant {
    /// Creates a tenant.
    Create {
        /// A unique name, 1–200 characters.
        name: String,
        #[command(flatten)]
        operator: Operator,
        #[command(flatten)]
        output: Output,
    },
    /// Lists the tenants.
    List {
        #[command(flatten)]
        operator: Operator,
        #[command(flatten)]
        output: Output,
    },
}

/// `blindfold admin token …`.
#[derive(Debug, Subcommand)]
pub enum Token {
    /// Issues an API token for a tenant; it is printed this once (the service keeps a hash).
    Create {
        /// The tenant's name or id.
        #[arg(long)]
        tenant: String,
        /// A label to recognise the token by (not secret).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        operator: Operator,
        #[command(flatten)]
        output: Output,
    },
    /// Revokes a token: requests with it are refused from now on.
    Revoke {
        /// The token's id (printed by `token create`).
        id: Uuid,
        #[command(flatten)]
        operator: Operator,
        #[command(flatten)]
        output: Output,
    },
}

/// The API and the operator token.
#[derive(Debug, clap::Args)]
pub struct Operator {
    /// The API's base URL [default: the one `blindfold login` saved].
    #[arg(long, env = "BLINDFOLD_API")]
    api: Option<String>,
    /// The operator token the API was started with. Prefer the environment variable: other
    /// users can see command lines.
    #[arg(long, env = "BLINDFOLD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

impl Operator {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let api = Connection { api: self.api.clone(), token: None }.api()?;
        Ok(ApiClient::admin(&api, SecretString::from(self.admin_token.clone()))?)
    }
}

/// Runs an admin command.
pub fn run(command: Admin) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        Admin::Migrate { database_url, output } => runtime.block_on(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url)
                .await
                .context("connecting to the database (--database-url / DATABASE_URL)")?;
            blindfold_queue::MIGRATOR.run(&pool).await.context("applying the migrations")?;
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .context("reading the applied migrations")?;
            report(output, json!({"command": "admin migrate", "applied": applied}), || {
                format!("database is up to date: {applied} migrations applied")
            })
        }),
        Admin::Tenant(Tenant::Create { name, operator, output }) => {
            let client = operator.client()?;
            let tenant = runtime.block_on(client.create_tenant(&name))?;
            report(output, json!({"command": "admin tenant create", "tenant": tenant}), || {
                format!(
                    "tenant {} created ({}); issue its token with `blindfold admin token create --tenant {}`",
                    tenant.name, tenant.id, tenant.name
                )
            })
        }
        Admin::Tenant(Tenant::List { operator, output }) => {
            let client = operator.client()?;
            let tenants = runtime.block_on(client.tenants())?;
            report(output, json!({"command": "admin tenant list", "tenants": tenants}), || {
                let mut text = format!("{:<36}  {:<20}  CREATED", "TENANT", "NAME");
                for t in &tenants {
                    text.push_str(&format!("\n{}  {:<20}  {}", t.id, t.name, t.created_at.format("%Y-%m-%d %H:%M:%S")));
                }
                text
            })
        }
        Admin::Token(Token::Create { tenant, label, operator, output }) => {
            let client = operator.client()?;
            let tenants = runtime.block_on(client.tenants())?;
            let found = match tenant.parse::<Uuid>() {
                Ok(id) => tenants.iter().find(|t| t.id == id),
                Err(_) => tenants.iter().find(|t| t.name == tenant),
            };
            let Some(found) = found else {
                return Err(crate::service::ServiceError::Api {
                    status: 404,
                    code: "not_found".into(),
                    detail: format!("no tenant {tenant:?} at {}", client.base()),
                    hint: format!("; create it with `blindfold admin tenant create {tenant}`"),
                }
                .into());
            };
            let issued = runtime.block_on(client.issue_token(found.id, label))?;
            report(
                output,
                json!({
                    "command": "admin token create", "tenant": found, "token_id": issued.id,
                    "token": issued.token, "api": client.base(),
                }),
                || {
                    format!(
                        "token for tenant {} (token id {}, shown only this once):\n{}\nthe hospital logs in with \
                         `blindfold login --api {} --token TOKEN`",
                        found.name,
                        issued.id,
                        issued.token,
                        client.base()
                    )
                },
            )
        }
        Admin::Token(Token::Revoke { id, operator, output }) => {
            let client = operator.client()?;
            runtime.block_on(client.revoke_token(id))?;
            report(output, json!({"command": "admin token revoke", "token_id": id}), || format!("token {id} revoked"))
        }
    }
}
