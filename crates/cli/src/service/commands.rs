//! The hospital's commands against a running service: `login`, `keys`, `submit`, `status`,
//! `jobs`, `wait`, `cancel`, `fetch`, `run`. Parsing and what to print here (drawn with
//! [`crate::terminal`]); the work is in [`super::flows`] and [`super::client`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blindfold_api::{JobView, KeySetView};
use blindfold_client::{
    EncryptedBatch, IntakeOptions, KeySet, PackingChoice, Predictions, ReportContext, Split, Timing,
};
use indicatif::ProgressBar;
use secrecy::SecretString;
use serde_json::json;
use tokio::runtime::Runtime;
use uuid::Uuid;

use super::client::{ApiClient, OnBytes, ServiceError};
use super::config::{ServiceConfig, config_path};
use super::flows;
use crate::hospital::{PackingArg, ReportArg, parse_split, write_report};
use crate::terminal::{Output, bar, bytes_bar, format_bytes, report, spinner, table, visible};

/// Which API and which token: flags, then environment, then the `blindfold login` config.
/// Global, so they are accepted before or after any subcommand; `login` saves them, the
/// hospital's service commands and `model … --service`/`model pull` use them, and the operator
/// commands take the API (and `--allow-http`) from here with their own `--admin-token`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Connection {
    /// The API's base URL, e.g. http://127.0.0.1:8080 [default: the one `blindfold login` saved].
    #[arg(long, env = "BLINDFOLD_API", global = true)]
    pub api: Option<String>,
    /// The tenant's API token [default: the one `blindfold login` saved for this API]. Prefer the
    /// environment variable: other users can see command lines.
    #[arg(long, env = "BLINDFOLD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Send the token over plain http:// to another machine (anyone on the way can read it).
    /// Without it, only https:// or this machine's loopback address are used; `login` needs it
    /// for such an API, and so does every command after it.
    #[arg(long, global = true)]
    pub allow_http: bool,
}

impl Connection {
    /// The client these settings name. The saved token is used only with the saved API, so a
    /// token is never sent to another server by accident.
    pub fn client(&self) -> Result<ApiClient, ServiceError> {
        if let (Some(api), Some(token)) = (&self.api, &self.token) {
            return ApiClient::new(api, Some(SecretString::from(token.clone())), self.allow_http);
        }
        let path = config_path()?;
        let saved = ServiceConfig::load(&path)?;
        let api = match (&self.api, &saved) {
            (Some(api), _) => api.clone(),
            (None, Some(saved)) => saved.api.clone(),
            (None, None) => {
                return Err(ServiceError::NotConfigured(format!(
                    "no API configured: run `blindfold login --api URL --token TOKEN` (saved in {}), or set \
                     BLINDFOLD_API and BLINDFOLD_TOKEN",
                    path.display()
                )));
            }
        };
        let token = match (&self.token, &saved) {
            (Some(token), _) => SecretString::from(token.clone()),
            (None, Some(saved)) if same_api(&saved.api, &api) => saved.token.clone(),
            (None, _) => {
                return Err(ServiceError::NotConfigured(format!(
                    "no token for {api}: run `blindfold login --api {api} --token TOKEN`, or set BLINDFOLD_TOKEN"
                )));
            }
        };
        ApiClient::new(&api, Some(token), self.allow_http)
    }

    /// The API URL alone (operator commands bring their own token).
    pub fn api(&self) -> Result<String, ServiceError> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        let path = config_path()?;
        match ServiceConfig::load(&path)? {
            Some(saved) => Ok(saved.api),
            None => Err(ServiceError::NotConfigured(
                "no API configured: pass --api URL (or BLINDFOLD_API), or run `blindfold login`".to_owned(),
            )),
        }
    }
}

fn same_api(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// How often to ask the service about a job.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Poll {
    /// Seconds between two status requests while waiting.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0.05 and 3600")),
    }
}

/// Images to encrypt and how.
#[derive(Debug, clap::Args)]
pub struct Inputs {
    /// PNG/JPEG files of any size, directories of them, an MNIST IDX images file
    /// (`*-ubyte.gz`) or a DermaMNIST `.npz`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The model to run; the service must serve it and the key set must be for it [default: the
    /// key set's model].
    #[arg(long)]
    pub model: Option<String>,
    /// The keys directory from `blindfold keygen` (registered with the service on first use).
    #[arg(long)]
    pub keys: PathBuf,
    #[command(flatten)]
    pub packing: PackingArg,
    /// Split read from a `.npz` dataset: train, val or test.
    #[arg(long, default_value = "test", value_parser = parse_split)]
    pub split: Split,
    /// Encrypt at most N images (in input order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use image files far from the model's input (a colour image for a grayscale model, a
    /// grayscale one for a colour model, an aspect ratio more than twice off), which are
    /// otherwise refused: the model would answer them confidently and wrongly.
    #[arg(long)]
    pub force: bool,
    /// Priority among this hospital's own jobs, 0 (default) to 100.
    #[arg(long)]
    pub priority: Option<i64>,
}

/// The commands that talk to a service, flattened into the top level.
#[derive(Debug, clap::Subcommand)]
pub enum Service {
    /// Save the API address (--api) and a tenant token (--token, as the operator issued it with
    /// `blindfold admin token create`), checked against the API first, in the config file
    /// ($BLINDFOLD_CONFIG, else $XDG_CONFIG_HOME/blindfold/config.toml or
    /// ~/.config/blindfold/config.toml; mode 0600).
    Login,
    /// Evaluation keys on the service: register a keys directory, list what is registered.
    #[command(subcommand)]
    Keys(Keys),
    /// Encrypt images, upload them as one job per batch and submit it; prints the job id (with
    /// --quiet, only the job id).
    Submit {
        #[command(flatten)]
        inputs: Inputs,
        /// Wait for the job to end (as `blindfold wait`).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        poll: Poll,
    },
    /// A job's state, progress, timings and history; without JOB, the service's health and the
    /// latest jobs.
    Status {
        /// The job id.
        job: Option<Uuid>,
    },
    /// Jobs of this hospital.
    #[command(subcommand)]
    Jobs(Jobs),
    /// Wait until a job ends, showing its progress and stage; exit code 4 if it failed or was
    /// cancelled.
    Wait {
        /// The job id.
        job: Uuid,
        #[command(flatten)]
        poll: Poll,
    },
    /// Cancel a job (a running one stops at the worker's next heartbeat).
    Cancel {
        /// The job id.
        job: Uuid,
    },
    /// Download a job's encrypted result and decrypt it here into predictions.
    Fetch {
        /// The job id.
        job: Uuid,
        /// The keys directory the job was encrypted with.
        #[arg(long)]
        keys: PathBuf,
        /// predictions.csv or predictions.json.
        #[arg(long, default_value = "predictions.csv")]
        out: PathBuf,
        /// Also keep the encrypted result batch in this file.
        #[arg(long)]
        raw: Option<PathBuf>,
        /// Segmentation: ground-truth masks (`NAME.png`, `NAME_segmentation.png` or
        /// `NAME_mask.png` for the image `NAME.ext`); adds each mask's Dice and the mean.
        #[arg(long)]
        masks: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArg,
    },
    /// Submit, wait and fetch in one go: images in, predictions out.
    Run {
        #[command(flatten)]
        inputs: Inputs,
        /// predictions.csv or predictions.json (segmentation: mask PNGs in OUT_STEM-masks/).
        #[arg(long, default_value = "predictions.csv")]
        out: PathBuf,
        /// Segmentation: ground-truth masks (`NAME.png`, `NAME_segmentation.png` or
        /// `NAME_mask.png` for the image `NAME.ext`); adds each mask's Dice and the mean.
        #[arg(long)]
        masks: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArg,
        #[command(flatten)]
        poll: Poll,
    },
}

/// `blindfold keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum Keys {
    /// Upload a keys directory's evaluation keys (never the secret key) and record the
    /// registration in it (registration.json). Does nothing if the service already has them.
    Register {
        /// The keys directory from `blindfold keygen`.
        #[arg(long)]
        keys: PathBuf,
    },
    /// The key sets registered (or being registered) with the service.
    List,
}

/// `blindfold jobs …`.
#[derive(Debug, clap::Subcommand)]
pub enum Jobs {
    /// Submitted jobs, newest first.
    List {
        /// Only jobs in this state: queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Runs a service command against the API `connection` names.
pub fn run(command: Service, output: Output, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    match command {
        Service::Login => login(connection, output, runtime),
        Service::Keys(Keys::Register { keys }) => keys_register(&keys, connection, output, runtime),
        Service::Keys(Keys::List) => keys_list(connection, output, runtime),
        Service::Submit { inputs, wait, poll } => {
            let client = connection.client()?;
            let mut submitted = submit(runtime, &client, &inputs, output)?;
            if !wait {
                return print_submitted(&submitted, output);
            }
            if !output.json {
                print_submitted(&submitted, output)?;
            }
            for job in &mut submitted.jobs {
                *job = runtime.block_on(wait_with_bar(&client, job.id, poll, output))?;
                if !output.json {
                    print_job_done(job, output)?;
                }
            }
            if output.json {
                print_submitted(&submitted, output)?;
            }
            Ok(())
        }
        Service::Status { job } => status(job, connection, output, runtime),
        Service::Jobs(Jobs::List { state, limit }) => jobs_list(state.as_deref(), limit, connection, output, runtime),
        Service::Wait { job, poll } => {
            let client = connection.client()?;
            let done = runtime.block_on(wait_with_bar(&client, job, poll, output))?;
            print_job_done(&done, output)
        }
        Service::Cancel { job } => {
            let client = connection.client()?;
            let view = runtime.block_on(client.cancel_job(job))?;
            report(output, json!({"command": "cancel", "job": view}), || {
                if view.state == "cancelled" {
                    format!("job {job} cancelled")
                } else {
                    format!("job {job} is {}: cancel requested, it stops at the worker's next heartbeat", view.state)
                }
            })
        }
        Service::Fetch { job, keys, out, raw, masks, report: report_arg } => {
            let client = connection.client()?;
            let keys = KeySet::open(&keys)?;
            let mut fetched = fetch(runtime, &client, &keys, job, raw.as_deref(), output)?;
            let saved = save_predictions(&mut fetched.predictions, &out, masks.as_deref())?;
            let written = match &report_arg.report {
                Some(dir) => {
                    let view = runtime.block_on(client.job(job))?;
                    let mut timings = service_timings(std::slice::from_ref(&view));
                    timings.extend(fetched.timings.clone());
                    let context = ReportContext { jobs: vec![job], timings };
                    write_report(&fetched.predictions, &context, Some(dir), output)?
                }
                None => None,
            };
            report(
                output,
                json!({
                    "command": "fetch", "job": job, "images": fetched.predictions.images.len(),
                    "predictions": out, "raw": raw, "bytes": fetched.bytes, "saved": saved,
                    "report": written, "overflowed": fetched.predictions.overflowed(),
                }),
                || {
                    format!(
                        "job {job}: {}",
                        crate::hospital::saved_text(&fetched.predictions, &saved, written.as_ref())
                    )
                },
            )
        }
        Service::Run { inputs, out, masks, report, poll } => {
            let destinations =
                Destinations { predictions: &out, truth: masks.as_deref(), report: report.report.as_deref() };
            run_all(&inputs, &destinations, poll, connection, output, runtime)
        }
    }
}

fn login(connection: &Connection, output: Output, runtime: &Runtime) -> anyhow::Result<()> {
    // Not `required` in clap: the flags are global, and optional for every other command.
    let (Some(api), Some(token)) = (&connection.api, &connection.token) else {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::MissingRequiredArgument,
            "login needs --api URL and --token TOKEN (or BLINDFOLD_API and BLINDFOLD_TOKEN)\n",
        )
        .into());
    };
    let token = SecretString::from(token.clone());
    let client = ApiClient::new(api, Some(token.clone()), connection.allow_http)?;
    runtime.block_on(client.check_token())?;
    let path = config_path()?;
    ServiceConfig { api: client.base().to_owned(), token }.save(&path)?;
    report(output, json!({"command": "login", "api": client.base(), "config": path}), || {
        format!("logged in to {}; saved in {} (mode 0600)", client.base(), path.display())
    })
}

fn keys_register(dir: &Path, connection: &Connection, output: Output, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    let keys = KeySet::open(dir)?;
    let size = std::fs::metadata(dir.join(blindfold_client::EVALUATION_KEYS_FILE)).map(|m| m.len()).unwrap_or(0);
    let bar = bytes_bar(output, size, "uploading evaluation keys");
    let registered = runtime.block_on(flows::register_keys(&client, &keys, bar_progress(&bar)));
    bar.finish_and_clear();
    let registered = registered?;
    let view = &registered.key_set;
    report(
        output,
        json!({
            "command": "keys register", "api": client.base(), "key_set": view,
            "uploaded": registered.uploaded, "bytes": registered.bytes,
        }),
        || {
            if registered.uploaded {
                format!(
                    "key set {} ({} {}) registered with {}: {} of evaluation keys uploaded and verified",
                    view.id,
                    view.model.as_deref().unwrap_or("?"),
                    view.packing.as_deref().unwrap_or("?"),
                    client.base(),
                    format_bytes(registered.bytes)
                )
            } else {
                format!("key set {} is already registered with {}", view.id, client.base())
            }
        },
    )
}

fn keys_list(connection: &Connection, output: Output, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    let key_sets = runtime.block_on(client.key_sets())?;
    report(output, json!({"command": "keys list", "key_sets": key_sets}), || key_set_table(&key_sets))
}

fn key_set_table(key_sets: &[KeySetView]) -> String {
    if key_sets.is_empty() {
        return "no key sets: register one with `blindfold keys register --keys DIR`".to_owned();
    }
    table(
        &["KEY SET", "STATUS", "MODEL", "PACKING", "SIZE", "CREATED"],
        key_sets
            .iter()
            .map(|k| {
                vec![
                    k.id.to_string(),
                    k.status.clone(),
                    k.model.clone().unwrap_or_default(),
                    k.packing.clone().unwrap_or_default(),
                    format_bytes(u64::try_from(k.size_bytes).unwrap_or(0)),
                    k.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]
            })
            .collect(),
    )
}

/// What `submit` did.
#[derive(Debug)]
struct Submitted {
    key_set: Uuid,
    registered: bool,
    jobs: Vec<JobView>,
    images: usize,
    bytes: u64,
}

/// Checks the model with the service, registers the keys if needed, encrypts and submits one
/// job per batch.
fn submit(runtime: &Runtime, client: &ApiClient, inputs: &Inputs, output: Output) -> anyhow::Result<Submitted> {
    let keys = KeySet::open(&inputs.keys)?;
    let model = inputs.model.clone().unwrap_or_else(|| keys.descriptor().model.clone());
    // `--model NAME@VERSION` names one version; the key set pins the version either way.
    let (model, version) = match model.split_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned())),
        None => (model, None),
    };
    if let Some(version) = &version
        && *version != keys.descriptor().model_version
    {
        anyhow::bail!(
            "the key set in {} is for {}@{}, not {model}@{version}; make one with `blindfold keygen --model              {model}@{version} --out DIR` (after `blindfold model pull {model}@{version}`)",
            inputs.keys.display(),
            keys.descriptor().model,
            keys.descriptor().model_version
        );
    }
    let served = runtime.block_on(client.model_names())?;
    if !served.contains(&model) {
        return Err(ServiceError::Api {
            status: 422,
            code: "unknown_model".into(),
            detail: format!(
                "the service at {} has no model {model:?}; it serves: {}",
                client.base(),
                served.join(", ")
            ),
            hint: "; see `blindfold model list` for what each is".into(),
        }
        .into());
    }
    if model != keys.descriptor().model {
        anyhow::bail!(
            "the key set in {} is for {}, not {model}; make one with `blindfold keygen --model {model} --out DIR`",
            inputs.keys.display(),
            keys.descriptor().model
        );
    }
    // The packing can depend on the image count, so it is resolved after reading the images;
    // a key set that cannot serve a forced packing is refused before registering its keys.
    if inputs.packing.packing != PackingChoice::Auto {
        inputs.packing.packing.resolve(&keys, 1)?;
    }

    let key_size =
        std::fs::metadata(keys.dir().join(blindfold_client::EVALUATION_KEYS_FILE)).map(|m| m.len()).unwrap_or(0);
    let registering = bytes_bar(output, key_size, "registering evaluation keys");
    let registered = runtime.block_on(flows::ensure_registered(client, &keys, bar_progress(&registering)));
    registering.finish_and_clear();
    let registered = registered?.is_some();

    let spinner = spinner(output, "reading and preprocessing images".into());
    let intake = keys.compiled_model().and_then(|m| {
        blindfold_client::read_inputs(
            m.manifest(),
            &inputs.inputs,
            IntakeOptions { split: inputs.split, limit: inputs.limit, force: inputs.force },
        )
    });
    spinner.finish_and_clear();
    let intake = intake?;
    let compiled = inputs.packing.packing.compile(&keys, intake.len())?;
    let work = flows::work_dir(&keys)?;
    let encrypting = bar(output, 0, "encrypting");
    let batches =
        blindfold_client::encrypt(&keys, &compiled, &intake, &work.path().join("job.bfib"), &|done, total| {
            encrypting.set_length(total);
            encrypting.set_position(done);
        });
    encrypting.finish_and_clear();
    let batches: Vec<EncryptedBatch> = batches?;

    let total: u64 = batches.iter().map(|b| b.bytes).sum();
    let uploading = bytes_bar(output, total, "uploading");
    let progress = bar_progress(&uploading);
    let mut jobs = Vec::with_capacity(batches.len());
    let mut before = 0u64;
    for batch in &batches {
        let offset = before;
        let inner = progress.clone();
        let shifted: OnBytes = Arc::new(move |sent| inner(offset + sent));
        jobs.push(runtime.block_on(flows::submit_batch(client, &keys, batch, inputs.priority, shifted))?);
        before += batch.bytes;
    }
    uploading.finish_and_clear();
    drop(work);
    Ok(Submitted { key_set: keys.id(), registered, jobs, images: intake.len(), bytes: total })
}

fn print_submitted(submitted: &Submitted, output: Output) -> anyhow::Result<()> {
    if output.quiet && !output.json {
        // `JOB=$(blindfold submit -q …)`.
        for job in &submitted.jobs {
            println!("{}", job.id);
        }
        return Ok(());
    }
    report(
        output,
        json!({
            "command": "submit", "key_set": submitted.key_set, "registered_keys": submitted.registered,
            "images": submitted.images, "bytes": submitted.bytes, "jobs": submitted.jobs,
        }),
        || {
            let mut text = String::new();
            for job in &submitted.jobs {
                text.push_str(&format!(
                    "job {} {}: {} images of {} ({} packing)\n",
                    job.id, job.state, job.image_count, job.model, job.packing
                ));
            }
            text.push_str(&format!(
                "{} uploaded; follow with `blindfold wait {}`",
                format_bytes(submitted.bytes),
                submitted.jobs.first().map(|j| j.id.to_string()).unwrap_or_default()
            ));
            text
        },
    )
}

async fn wait_with_bar(client: &ApiClient, job: Uuid, poll: Poll, output: Output) -> anyhow::Result<JobView> {
    let waiting = bar(output, 1000, "waiting");
    let mut on_update = |view: &JobView| {
        waiting.set_position((f64::from(view.progress.fraction.clamp(0.0, 1.0)) * 1000.0) as u64);
        let stage = view.progress.stage.as_deref().unwrap_or("");
        waiting.set_message(format!("{} {stage}", view.state));
    };
    let done = flows::wait_job(client, job, Duration::from_secs_f64(poll.interval), &mut on_update).await;
    waiting.finish_and_clear();
    done
}

fn print_job_done(job: &JobView, output: Output) -> anyhow::Result<()> {
    report(output, json!({"command": "wait", "job": job}), || {
        format!(
            "job {} succeeded: {} images, queued {}, ran {}; fetch it with `blindfold fetch {} --keys DIR`",
            job.id,
            job.image_count,
            seconds(job.durations.queued_seconds),
            seconds(job.durations.running_seconds),
            job.id
        )
    })
}

fn status(job: Option<Uuid>, connection: &Connection, output: Output, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    match job {
        Some(id) => {
            let view = runtime.block_on(client.job(id))?;
            report(output, json!({"command": "status", "job": view}), || job_details(&view))
        }
        None => {
            let health = runtime.block_on(client.ready())?;
            let page = runtime.block_on(client.jobs(None, 10, None))?;
            report(
                output,
                json!({"command": "status", "api": client.base(), "health": health, "jobs": page.jobs}),
                || {
                    let checks: Vec<String> =
                        health.checks.iter().map(|c| format!("{} {}", c.name, c.status)).collect();
                    let mut text = format!("API {}: {}", client.base(), health.status);
                    if !checks.is_empty() {
                        text.push_str(&format!(" ({})", checks.join(", ")));
                    }
                    text.push('\n');
                    text.push_str(&jobs_table(&page.jobs));
                    text
                },
            )
        }
    }
}

fn job_details(job: &JobView) -> String {
    let mut rows = vec![
        ("job", job.id.to_string()),
        (
            "state",
            match job.max_attempts {
                Some(max) if job.attempt > 0 => format!("{} (attempt {} of {max})", job.state, job.attempt),
                _ => job.state.clone(),
            },
        ),
        ("model", format!("{} ({} packing), {} images", job.model, job.packing, job.image_count)),
        ("progress", progress_cell(job)),
        ("created", job.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        (
            "time",
            format!(
                "queued {}, running {}",
                seconds(job.durations.queued_seconds),
                seconds(job.durations.running_seconds)
            ),
        ),
    ];
    if job.cancel_requested {
        rows.push(("cancel", "requested".to_owned()));
    }
    if let Some(error) = &job.error {
        rows.push(("error", format!("{} {}", error.code, error.message.as_deref().unwrap_or(""))));
    }
    let mut text: String = rows.iter().map(|(k, v)| format!("{k:<10} {v}\n")).collect();
    if !job.history.is_empty() {
        text.push_str("history\n");
        text.push_str(&table(
            &["  AT", "STATE", "ATTEMPT", "REASON", "AFTER"],
            job.history
                .iter()
                .map(|t| {
                    vec![
                        format!("  {}", t.at.format("%H:%M:%S%.3f")),
                        t.to_state.clone(),
                        t.attempt.to_string(),
                        t.reason.clone(),
                        seconds(t.seconds_since_previous),
                    ]
                })
                .collect(),
        ));
    }
    text.trim_end().to_owned()
}

fn jobs_list(
    state: Option<&str>,
    limit: u32,
    connection: &Connection,
    output: Output,
    runtime: &Runtime,
) -> anyhow::Result<()> {
    let client = connection.client()?;
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    while jobs.len() < limit as usize {
        let want = (limit as usize - jobs.len()).min(100) as u32;
        let page = runtime.block_on(client.jobs(state, want, cursor.as_deref()))?;
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    report(output, json!({"command": "jobs list", "jobs": jobs}), || jobs_table(&jobs))
}

fn jobs_table(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no jobs".to_owned();
    }
    table(
        &["JOB", "STATE", "MODEL", "PACKING", "IMAGES", "PROGRESS", "CREATED"],
        jobs.iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.state.clone(),
                    j.model.clone(),
                    j.packing.clone(),
                    j.image_count.to_string(),
                    progress_cell(j),
                    j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]
            })
            .collect(),
    )
}

fn progress_cell(job: &JobView) -> String {
    let mut cell = format!("{:.0}%", f64::from(job.progress.fraction) * 100.0);
    if let Some(stage) = &job.progress.stage {
        cell.push(' ');
        cell.push_str(stage);
    }
    cell
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"))
}

/// What `fetch` brought back.
struct Fetched {
    predictions: Predictions,
    bytes: u64,
    /// Downloading and decrypting, measured here.
    timings: Vec<Timing>,
}

/// The service's side of `jobs`' timings: queued and running, summed over the jobs.
fn service_timings(jobs: &[JobView]) -> Vec<Timing> {
    let sum = |seconds: fn(&JobView) -> Option<f64>| jobs.iter().filter_map(seconds).sum::<f64>();
    vec![
        Timing { stage: "queued at the service".into(), seconds: sum(|j| j.durations.queued_seconds) },
        Timing { stage: "encrypted inference at the service".into(), seconds: sum(|j| j.durations.running_seconds) },
    ]
}

fn fetch(
    runtime: &Runtime,
    client: &ApiClient,
    keys: &KeySet,
    job: Uuid,
    raw: Option<&Path>,
    output: Output,
) -> anyhow::Result<Fetched> {
    let work;
    let raw_path = match raw {
        Some(path) => path.to_path_buf(),
        None => {
            work = flows::work_dir(keys)?;
            work.path().join("result.bfrb")
        }
    };
    let bar = bytes_bar(output, 0, "downloading");
    let progress = {
        let bar = bar.clone();
        Arc::new(move |n: u64| {
            if bar.length().unwrap_or(0) < n {
                bar.set_length(n);
            }
            bar.set_position(n);
        }) as OnBytes
    };
    let started = Instant::now();
    let bytes = runtime.block_on(flows::download_result(client, job, &raw_path, progress));
    bar.finish_and_clear();
    let bytes = bytes?;
    let downloaded = started.elapsed().as_secs_f64();
    let spinner = spinner(output, "decrypting".into());
    let predictions = flows::decrypt_result(keys, job, &raw_path);
    spinner.finish_and_clear();
    let timings = vec![
        Timing { stage: "download".into(), seconds: downloaded },
        Timing { stage: "decrypt".into(), seconds: started.elapsed().as_secs_f64() - downloaded },
    ];
    Ok(Fetched { predictions: predictions?, bytes, timings })
}

fn save_predictions(
    predictions: &mut Predictions,
    out: &Path,
    truth: Option<&Path>,
) -> anyhow::Result<blindfold_client::Saved> {
    predictions.save(out, truth).with_context(|| format!("writing {}", out.display()))
}

/// Where `run` writes what it decrypted.
struct Destinations<'a> {
    /// The predictions file (CSV or JSON).
    predictions: &'a Path,
    /// Ground-truth masks to score segmentation masks against (`--masks`).
    truth: Option<&'a Path>,
    /// The report's directory (`--report`).
    report: Option<&'a Path>,
}

fn run_all(
    inputs: &Inputs,
    destinations: &Destinations<'_>,
    poll: Poll,
    connection: &Connection,
    output: Output,
    runtime: &Runtime,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = connection.client()?;
    let keys = KeySet::open(&inputs.keys)?;
    let submitted = submit(runtime, &client, inputs, output)?;
    let submitted_after = started.elapsed().as_secs_f64();
    let mut fetch_timings: Vec<Timing> = Vec::new();
    if !output.quiet && !output.json && !visible(output) {
        eprintln!("submitted {} job(s); waiting", submitted.jobs.len());
    }
    let mut merged: Option<Predictions> = None;
    let mut finished = Vec::new();
    let mut downloaded = 0;
    for job in &submitted.jobs {
        let done = runtime.block_on(wait_with_bar(&client, job.id, poll, output))?;
        let fetched = fetch(runtime, &client, &keys, job.id, None, output)?;
        downloaded += fetched.bytes;
        // One line per stage over all jobs: the report shows where the time went, not each job.
        for timing in fetched.timings {
            match fetch_timings.iter_mut().find(|t| t.stage == timing.stage) {
                Some(known) => known.seconds += timing.seconds,
                None => fetch_timings.push(timing),
            }
        }
        merged = Some(match merged {
            None => fetched.predictions,
            Some(mut all) => {
                let offset = all.images.len();
                all.images.extend(fetched.predictions.images.into_iter().map(|mut p| {
                    p.position += offset;
                    p
                }));
                all
            }
        });
        finished.push(done);
    }
    let mut predictions = merged.context("no job was submitted")?;
    let saved = save_predictions(&mut predictions, destinations.predictions, destinations.truth)?;
    let mut timings = vec![Timing { stage: "encrypt and upload".into(), seconds: submitted_after }];
    timings.extend(service_timings(&finished));
    timings.extend(fetch_timings);
    let context = ReportContext { jobs: finished.iter().map(|j| j.id).collect(), timings };
    let written = write_report(&predictions, &context, destinations.report, output)?;
    report(
        output,
        json!({
            "command": "run", "key_set": submitted.key_set, "images": predictions.images.len(),
            "uploaded_bytes": submitted.bytes, "downloaded_bytes": downloaded, "jobs": finished,
            "predictions": destinations.predictions, "saved": saved, "report": written,
            "overflowed": predictions.overflowed(),
            "seconds": started.elapsed().as_secs_f64(),
        }),
        || {
            format!(
                "{} in {:.1} s ({} job(s): {})",
                crate::hospital::saved_text(&predictions, &saved, written.as_ref()),
                started.elapsed().as_secs_f64(),
                finished.len(),
                finished.iter().map(|j| j.id.to_string()).collect::<Vec<_>>().join(", ")
            )
        },
    )
}

fn bar_progress(bar: &ProgressBar) -> OnBytes {
    let bar = bar.clone();
    Arc::new(move |n| bar.set_position(n))
}
