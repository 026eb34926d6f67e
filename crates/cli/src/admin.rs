//! `blindfold admin …`: operator commands. Migrations talk to the database; tenants and
//! tokens go through the API's admin routes with the operator token.

use anyhow::Context;
use clap::Subcommand;
use secrecy::SecretString;
use serde_json::json;
use tokio::runtime::Runtime;
use uuid::Uuid;

use crate::service::{ApiClient, Connection};
use crate::terminal::{Output, Table, format_bytes, report};

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Applies the service database's migrations (idempotent; forward-only), then registers the
    /// built-in models the registry lacks (their files go to the bucket; the API does the same
    /// at start).
    Migrate {
        /// The service database.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Only migrate: leave the built-in models unregistered (and the bucket untouched).
        #[arg(long)]
        no_seed: bool,
        /// Object storage, for the built-in models' files.
        #[command(flatten)]
        store: blindfold_store::StoreConfig,
    },
    /// The model registry: register, list and retire model versions.
    #[command(subcommand)]
    Model(ModelAdmin),
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
    },
    /// Lists the tenants.
    List {
        #[command(flatten)]
        operator: Operator,
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
    },
    /// Revokes a token: requests with it are refused from now on.
    Revoke {
        /// The token's id (printed by `token create`).
        id: Uuid,
        #[command(flatten)]
        operator: Operator,
    },
}

/// `blindfold admin model …`.
#[derive(Debug, Subcommand)]
pub enum ModelAdmin {
    /// Registers the model in DIR (`model.onnx` + `manifest.json`) as NAME@VERSION from its
    /// manifest: checks it here, uploads both files, and has the service verify and compile it.
    /// Versions are immutable: bump the manifest's version to register a new one.
    Add {
        /// The model directory.
        dir: std::path::PathBuf,
        #[command(flatten)]
        operator: Operator,
    },
    /// Lists every registered version (uploading, active and retired).
    List {
        #[command(flatten)]
        operator: Operator,
    },
    /// Retires NAME@VERSION: no new key sets or jobs; queued and running jobs still finish.
    Retire {
        /// `NAME@VERSION`.
        model: String,
        #[command(flatten)]
        operator: Operator,
    },
}

/// The operator token. The API and `--allow-http` (which then also covers this token) are the
/// global connection flags.
#[derive(Debug, clap::Args)]
pub struct Operator {
    /// The operator token the API was started with. Prefer the environment variable: other
    /// users can see command lines.
    #[arg(long, env = "BLINDFOLD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

impl Operator {
    /// A client of the API `connection` names (its tenant token is not used).
    fn client(&self, connection: &Connection) -> anyhow::Result<ApiClient> {
        let api = connection.api()?;
        Ok(ApiClient::admin(&api, SecretString::from(self.admin_token.clone()), connection.allow_http)?)
    }
}

/// Runs an admin command.
pub fn run(command: Admin, output: Output, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    match command {
        Admin::Migrate { database_url, no_seed, store } => runtime.block_on(async {
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
            let seeded = if no_seed {
                Vec::new()
            } else {
                let store = blindfold_store::Store::connect(&store)
                    .await
                    .context("connecting to object storage for the built-in models (--no-seed skips them)")?;
                store.ensure_bucket().await.context("creating the bucket")?;
                blindfold_api::seed_builtin_models(&pool, &store).await?
            };
            report(output, json!({"command": "admin migrate", "applied": applied, "registered": seeded}), || {
                let mut text = format!("database is up to date: {applied} migrations applied");
                if !seeded.is_empty() {
                    text.push_str(&format!("\nbuilt-in models registered: {}", seeded.join(", ")));
                }
                text
            })
        }),
        Admin::Model(command) => model_admin(command, output, connection, runtime),
        Admin::Tenant(Tenant::Create { name, operator }) => {
            let client = operator.client(connection)?;
            let tenant = runtime.block_on(client.create_tenant(&name))?;
            report(output, json!({"command": "admin tenant create", "tenant": tenant}), || {
                format!(
                    "tenant {} created ({}); issue its token with `blindfold admin token create --tenant {}`",
                    tenant.name, tenant.id, tenant.name
                )
            })
        }
        Admin::Tenant(Tenant::List { operator }) => {
            let client = operator.client(connection)?;
            let tenants = runtime.block_on(client.tenants())?;
            report(output, json!({"command": "admin tenant list", "tenants": tenants}), || {
                let rows = tenants.iter().map(|t| {
                    vec![t.id.to_string(), t.name.clone(), t.created_at.format("%Y-%m-%d %H:%M:%S").to_string()]
                });
                Table::new(&["TENANT", "NAME", "CREATED"]).rows(rows).to_string()
            })
        }
        Admin::Token(Token::Create { tenant, label, operator }) => {
            let client = operator.client(connection)?;
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
        Admin::Token(Token::Revoke { id, operator }) => {
            let client = operator.client(connection)?;
            runtime.block_on(client.revoke_token(id))?;
            report(output, json!({"command": "admin token revoke", "token_id": id}), || format!("token {id} revoked"))
        }
    }
}

fn model_admin(command: ModelAdmin, output: Output, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    match command {
        ModelAdmin::Add { dir, operator } => {
            let client = operator.client(connection)?;
            let quiet = output.quiet;
            let registered = runtime.block_on(crate::service::flows::register_model(&client, &dir, &|reference| {
                if !quiet {
                    eprintln!("{reference}: files uploaded; the service is verifying and compiling it …");
                }
            }))?;
            let reference = format!("{}@{}", registered.model.name, registered.model.version);
            report(output, json!({"command": "admin model add", "registered": registered}), || {
                let mut text = format!(
                    "{reference} registered and active (model.onnx sha256 {})",
                    &registered.model.onnx_sha256[..16]
                );
                for p in &registered.model.packings {
                    text.push_str(&format!(
                        "\n  {:<10} N = 2^{}, {} levels, {}-bit, {} image(s) per batch, keys {}, peak memory {}",
                        p.packing.name(),
                        p.log_n,
                        p.depth,
                        p.security_bits,
                        p.images_per_batch,
                        format_bytes(p.key_bytes),
                        format_bytes(p.peak_memory_bytes),
                    ));
                }
                for refused in &registered.refused_packings {
                    text.push_str(&format!("\n  not available: {refused}"));
                }
                text
            })
        }
        ModelAdmin::List { operator } => {
            let records = runtime.block_on(operator.client(connection)?.model_records())?;
            report(output, json!({"command": "admin model list", "models": records}), || {
                let rows = records.iter().map(|m| {
                    let packings: Vec<&str> =
                        m.params_fingerprints.iter().filter_map(|p| p.split(':').next()).collect();
                    vec![
                        m.name.clone(),
                        m.version.to_string(),
                        m.state.clone(),
                        m.onnx_sha256.chars().take(16).collect(),
                        m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        packings.join(", "),
                    ]
                });
                Table::new(&["NAME", "VERSION", "STATE", "SHA256", "CREATED", "PACKINGS"])
                    .right(&[1])
                    .rows(rows)
                    .to_string()
            })
        }
        ModelAdmin::Retire { model, operator } => {
            let retired = runtime.block_on(operator.client(connection)?.retire_model(&model))?;
            report(output, json!({"command": "admin model retire", "model": retired}), || {
                format!(
                    "{}@{} retired: it takes no new key sets or jobs; queued and running jobs finish",
                    retired.name, retired.version
                )
            })
        }
    }
}
