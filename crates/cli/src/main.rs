//! `blindfold`: private medical-image inference under CKKS homomorphic encryption.
//!
//! The binary stays thin: it parses the command line and hands each subcommand to the crate
//! that does the work. Subcommands arrive with the capabilities behind them.

use clap::Parser;

mod model;

/// Private medical-image diagnosis: images are encrypted on the hospital's machine and the
/// neural network runs on the ciphertexts.
#[derive(Debug, Parser)]
#[command(name = "blindfold", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// HE-friendly models: list, show, evaluate in plaintext, import ONNX.
    #[command(subcommand)]
    Model(model::Model),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Model(command) => model::run(command),
    }
}
