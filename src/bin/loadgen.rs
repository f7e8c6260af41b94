//! `loadgen`: parse the flags, run the load (or merge results), print the
//! summary and the JSON, exit 0, 1 (failed run), 2 (bad flags), or 128 + the
//! signal's number for a run interrupted by SIGINT (130) or SIGTERM (143).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
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
    // Opened before the run: a path that cannot be written must not cost the
    // results of a whole run (with --quiet, the JSON is all there is).
    let mut json = match json_path.as_deref().map(JsonOut::open).transpose() {
        Ok(j) => j,
        Err(e) => {
            eprintln!(
                "loadgen: error: --json {}: {e}",
                json_path.unwrap_or_default()
            );
            return ExitCode::from(2);
        }
    };
    let report = match loadgen::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            if let Some(j) = json {
                j.discard();
            }
            return ExitCode::FAILURE;
        }
    };
    if !config.quiet {
        if matches!(json, Some(JsonOut::Stdout)) {
            eprint!("{}", report.summary());
        } else {
            print!("{}", report.summary());
        }
    }
    if let Some(j) = &mut json
        && let Err(e) = j.write(&report)
    {
        eprintln!(
            "loadgen: error: writing --json {}: {e}",
            json_path.unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    let failures = report.failures(config.allow_partial);
    for f in &failures {
        eprintln!("loadgen: FAILED: {f}");
    }
    if let Some(code) = report.interrupted_exit_code() {
        let signal = report.interrupted.as_deref().unwrap_or("a signal");
        eprintln!("loadgen: interrupted by {signal}: exit status {code}");
        return ExitCode::from(code);
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Where `--json` goes: standard output, or a file opened (created if need
/// be, not yet truncated) before the run.
enum JsonOut {
    Stdout,
    File {
        file: File,
        path: PathBuf,
        /// Created by this run: removed again if the run produces no result.
        created: bool,
    },
}

impl JsonOut {
    fn open(path: &str) -> std::io::Result<JsonOut> {
        if path == "-" {
            return Ok(JsonOut::Stdout);
        }
        let created = !Path::new(path).exists();
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(JsonOut::File {
            file,
            path: path.into(),
            created,
        })
    }

    fn write(&mut self, report: &Report) -> std::io::Result<()> {
        let text = to_json(report)?;
        match self {
            JsonOut::Stdout => std::io::stdout().write_all(text.as_bytes()),
            JsonOut::File { file, .. } => {
                file.set_len(0)?;
                file.rewind()?;
                file.write_all(text.as_bytes())
            }
        }
    }

    /// The run produced nothing: leave no empty file behind.
    fn discard(self) {
        if let JsonOut::File {
            file,
            path,
            created: true,
        } = self
        {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn to_json(report: &Report) -> std::io::Result<String> {
    let mut text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// `loadgen merge FILE...`: `-` reads standard input (once).
fn merge(files: &[PathBuf]) -> ExitCode {
    let stdin_count = files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_count > 1 {
        eprintln!(
            "loadgen: error: merge: `-` (standard input) given {stdin_count} times; it can be read once"
        );
        return ExitCode::from(2);
    }
    let mut reports = Vec::new();
    let mut names = Vec::new();
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut text = String::new();
            let read = std::io::stdin().read_to_string(&mut text).map(|_| text);
            ("standard input".to_string(), read)
        } else {
            (f.display().to_string(), std::fs::read_to_string(f))
        };
        let parsed = text
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|text| loadgen::merge::parse_input(&name, &text).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("loadgen: error: merge: {e}");
                return ExitCode::FAILURE;
            }
        }
        names.push(name);
    }
    for warning in loadgen::merge::differences(&reports, &names) {
        eprintln!("loadgen: warning: merge: {warning}");
    }
    let written = loadgen::merge::merge_named(&reports, &names)
        .map_err(|e| e.to_string())
        .and_then(|m| to_json(&m).map_err(|e| e.to_string()))
        .and_then(|text| {
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| format!("writing stdout: {e}"))
        });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: merge: {e}");
            ExitCode::FAILURE
        }
    }
}
