//! `loadgen`: parse the flags, run the load (or merge results), print the
//! summary and the JSON, exit 0, 1 (failed run) or 2 (bad flags).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use uring_echo::cli::loadgen::{Command, LoadgenArgs};
use uring_echo::loadgen::{self, report::Report};

fn main() -> ExitCode {
    let args = LoadgenArgs::parse();
    match args.command {
        Some(Command::Merge { files }) => merge(&files),
        None => run(args.run),
    }
}

fn run(args: uring_echo::cli::loadgen::RunArgs) -> ExitCode {
    let json_path = args.json.clone();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match loadgen::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_to_stdout = json_path.as_deref() == Some("-");
    if !config.quiet {
        if json_to_stdout {
            eprint!("{}", report.summary());
        } else {
            print!("{}", report.summary());
        }
    }
    if let Some(path) = &json_path
        && let Err(e) = write_json(&report, path)
    {
        eprintln!("loadgen: error: writing --json {path}: {e}");
        return ExitCode::FAILURE;
    }
    let failures = report.failures(config.allow_partial);
    for f in &failures {
        eprintln!("loadgen: FAILED: {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_json(report: &Report, path: &str) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    text.push('\n');
    if path == "-" {
        std::io::stdout().write_all(text.as_bytes())
    } else {
        std::fs::write(path, text)
    }
}

fn merge(files: &[std::path::PathBuf]) -> ExitCode {
    let mut reports = Vec::new();
    for f in files {
        let parsed = std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str::<Report>(&s).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("loadgen: error: merge: {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    match loadgen::merge::merge(&reports) {
        Ok(m) => match write_json(&m, "-") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen: error: merge: writing stdout: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("loadgen: error: merge: {e}");
            ExitCode::FAILURE
        }
    }
}
