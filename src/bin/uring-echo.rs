//! `uring-echo`: parse the flags, run the server, print the summary.

use std::process::ExitCode;

use clap::Parser;
use uring_echo::cli::server::ServerArgs;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    if let Some(note) = args.addr.resolution_note("--addr")
        && !args.quiet
    {
        eprintln!("uring-echo: {note}");
    }
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let quiet = config.quiet;
    match uring_echo::server::run(config) {
        Ok(summary) => {
            if !quiet {
                println!("{}", summary.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uring-echo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
