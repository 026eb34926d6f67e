//! `blindfold`: private medical-image inference under CKKS homomorphic encryption.
//!
//! The binary stays thin: it parses the command line and hands each subcommand to the crate
//! that does the work. Subcommands arrive with the capabilities behind them.

use clap::Parser;

/// Private medical-image diagnosis: images are encrypted on the hospital's machine and the
/// neural network runs on the ciphertexts.
#[derive(Debug, Parser)]
#[command(name = "blindfold", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
