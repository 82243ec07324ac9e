//! repo-tool command line: parses flags and calls the `ota_publish` library; see its crate doc.
//!
//! [`cli`] holds the clap definitions; each command group has a module that runs it and prints
//! what it did: [`keys`], [`release`] (init, add), [`refresh`], [`delegate`], [`staging`] (root and
//! role signed in steps), [`rollout`] (staged rollouts), [`inspect`] (verify, list), [`gc`], [`publish`] (to object storage), [`bundle`] (offline bundles). `main` only maps the outcome to an exit status.

mod bundle;
mod cli;
mod delegate;
mod gc;
mod inspect;
mod keys;
mod progress;
mod publish;
mod refresh;
mod release;
mod rollout;
mod staging;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};

/// How a command that ran to its end went.
pub enum Outcome {
    /// Done (for `verify`: no problem found).
    Done,
    /// `verify` found problems in the repository and printed them.
    ProblemsFound,
}

fn run() -> Result<Outcome> {
    // Usage errors exit inside `parse` with clap's status 2, the same as "could not run".
    match Cli::parse().command {
        Command::Keys { command } => keys::run(command)?,
        Command::Init(args) => release::init(args)?,
        Command::Add(args) => release::add(args)?,
        Command::Refresh(args) => refresh::run(args)?,
        Command::Delegate(args) => delegate::run(args)?,
        Command::Root { command } => staging::root(command)?,
        Command::Role { command } => staging::role(command)?,
        Command::Verify(args) => return inspect::verify(args),
        Command::Gc(args) => gc::run(&args)?,
        Command::Rollout { command } => rollout::run(command)?,
        Command::Publish(args) => publish::run(&args)?,
        Command::List { repo, json } => inspect::list(&repo, json)?,
        Command::Bundle(args) => bundle::run(&args)?,
        command @ (Command::Completions { .. } | Command::Man) => cli::print_docs(&command)?,
    }
    Ok(Outcome::Done)
}

fn main() -> ExitCode {
    match run() {
        Ok(Outcome::Done) => ExitCode::from(cli::EXIT_OK),
        Ok(Outcome::ProblemsFound) => ExitCode::from(cli::EXIT_PROBLEMS_FOUND),
        Err(e) => {
            // Each cause once, in order, down to the OS error: library messages do not repeat their
            // source, and `{:#}` walks the chain.
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_COULD_NOT_RUN)
        }
    }
}
