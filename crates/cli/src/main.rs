//! `blindfold`: private medical-image inference under CKKS homomorphic encryption.
//!
//! The binary stays thin: it parses the command line and hands each subcommand to the crate
//! that does the work. Subcommands arrive with the capabilities behind them: the global options
//! (`--json`, `--quiet`, the connection flags) and the one async runtime, built here.

mod admin;
mod bench;
mod bench_fleet;
mod bench_infer;
mod convert;
mod demo;
mod dev;
mod hospital;
mod logs;
mod memory;
mod model;
mod service;
mod stack;
mod terminal;
mod worker;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::runtime::Runtime;

// CKKS operations allocate and free megabyte buffers; glibc's allocator returns them to the
// kernel and page-faults them back in on every operation (up to 2× slower key switching).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, shown under `blindfold --help` and in the README.
const EXIT_CODES: &str = "Exit codes:
  0  success
  1  local error: a file, a keys directory, an image, encryption or decryption
  2  usage error: unknown command or option, a missing or malformed argument
  3  service error: the API is unreachable, the token was refused, a request was refused (4xx) or
     failed (5xx), an upload or download failed
  4  the job failed or was cancelled";

/// Exit code of a local error.
const EXIT_LOCAL: u8 = 1;
/// Exit code of a usage error that only a command could see (clap exits with it by itself).
const EXIT_USAGE: u8 = 2;
/// Exit code of a service error.
const EXIT_SERVICE: u8 = 3;
/// Exit code of a failed or cancelled job.
const EXIT_JOB: u8 = 4;

/// Private medical-image diagnosis: images are encrypted on the hospital's machine and the
/// neural network runs on the ciphertexts.
#[derive(Debug, Parser)]
#[command(name = "blindfold", version, about, long_about = None, arg_required_else_help = true,
          after_help = EXIT_CODES)]
struct Cli {
    /// `--json` and `--quiet`, for every command.
    #[command(flatten, next_help_heading = "Global options")]
    output: terminal::Output,
    /// `--api`, `--token`, `--allow-http`, for every command that talks to a service.
    #[command(flatten, next_help_heading = "Global options")]
    connection: service::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole product on this machine with nothing to configure: a local stack (throwaway
    /// PostgreSQL, embedded S3, API, worker) and a hospital playing every model and packing end
    /// to end on embedded sample images; prints accuracy, agreement with the plaintext model,
    /// time per stage, bytes per image and security bits. Exits 1 if agreement < 99.9 %.
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Hospital(hospital::Hospital),
    #[command(flatten)]
    Service(service::commands::Service),
    /// HE-friendly models: list, show, evaluate in plaintext, import ONNX.
    #[command(subcommand)]
    Model(model::Model),
    /// Benchmarks that print what they measured.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Development: the whole stack in the foreground (`dev up`), an S3 endpoint (`dev s3`).
    #[command(subcommand)]
    Dev(dev::Dev),
    /// Operator commands: database migrations, tenants, tokens.
    #[command(subcommand)]
    Admin(admin::Admin),
    /// Run a worker node: claim jobs from the queue and evaluate them (the same as the
    /// `blindfold-worker` binary; every flag also reads its BLINDFOLD_* variable).
    Worker(blindfold_worker::Config),
}

fn main() -> ExitCode {
    blindfold_worker::keep_freed_memory();
    let Cli { output, connection, command } = Cli::parse();
    // One multi-threaded runtime for the whole process: the service commands, the in-process
    // stack of `demo` and `dev up`, and the worker, whose CPU-bound work runs on its own rayon
    // pool through `spawn_blocking`, all share it.
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| dispatch(command, output, &connection, &runtime));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let (code, kind, problem) = classify(&error);
            if output.json {
                let message = match error.downcast_ref::<clap::Error>() {
                    // clap renders for a terminal: "error: " in front, a newline at the end.
                    Some(usage) => usage.to_string().trim_start_matches("error: ").trim_end().to_owned(),
                    None => format!("{error:#}"),
                };
                let object = serde_json::json!({
                    "error": message, "kind": kind, "code": problem, "exit_code": code,
                });
                eprintln!("{object}");
            } else if let Some(usage) = error.downcast_ref::<clap::Error>() {
                // Worded and laid out as clap's own usage errors.
                let _ = usage.print();
            } else {
                eprintln!("Error: {error:?}");
            }
            ExitCode::from(code)
        }
    }
}

/// Runs one command with what it needs.
fn dispatch(
    command: Command,
    output: terminal::Output,
    connection: &service::Connection,
    runtime: &Runtime,
) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args, output, runtime),
        Command::Hospital(command) => hospital::run(command, output),
        Command::Service(command) => service::commands::run(command, output, connection, runtime),
        Command::Model(command) => model::run(command, output, connection, runtime),
        Command::Bench(command) => bench::run(command, output, runtime),
        Command::Dev(command) => dev::run(command, runtime),
        Command::Admin(command) => admin::run(command, output, connection, runtime),
        Command::Worker(config) => worker::run(config, runtime),
    }
}

/// The exit code, its kind and the API's problem code of an error.
fn classify(error: &anyhow::Error) -> (u8, &'static str, Option<String>) {
    if error.downcast_ref::<clap::Error>().is_some() {
        return (EXIT_USAGE, "usage", None);
    }
    for cause in error.chain() {
        if cause.downcast_ref::<service::JobEnded>().is_some() {
            return (EXIT_JOB, "job", None);
        }
        if let Some(service) = cause.downcast_ref::<service::ServiceError>() {
            return (EXIT_SERVICE, "service", service.code().map(str::to_owned));
        }
    }
    (EXIT_LOCAL, "local", None)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        // Duplicate flags (a command's own `--json` beside the global one) panic here.
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_are_accepted_before_and_after_the_subcommand() {
        let job = "00000000-0000-4000-8000-000000000000";
        for argv in [
            vec!["blindfold", "fetch", job, "--keys", "k", "--json", "--api", "http://127.0.0.1:1", "--token", "t"],
            vec!["blindfold", "--json", "--api", "http://127.0.0.1:1", "--token", "t", "fetch", job, "--keys", "k"],
        ] {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert!(cli.output.json && !cli.output.quiet, "{argv:?}");
            assert_eq!(cli.connection.api.as_deref(), Some("http://127.0.0.1:1"), "{argv:?}");
            assert_eq!(cli.connection.token.as_deref(), Some("t"), "{argv:?}");
        }
        let cli = Cli::try_parse_from(["blindfold", "admin", "tenant", "list", "-q", "--admin-token", "x"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.output.quiet);
    }
}
