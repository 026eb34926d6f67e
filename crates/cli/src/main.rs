//! `blindfold`: private medical-image inference under CKKS homomorphic encryption.
//!
//! The binary stays thin: it parses the command line and hands each subcommand to the crate
//! that does the work. Subcommands arrive with the capabilities behind them.

use clap::Parser;

mod dev;

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
    /// Local stand-ins for production infrastructure (an S3 endpoint, …).
    #[command(subcommand)]
    Dev(dev::Dev),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(command) => dev::run(command),
    }
}
