//! Running the real `loadgen` binary and reading its JSON result.

use std::io::Read;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

pub fn loadgen(args: &[&str]) -> Output {
    Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen")
}

/// Runs a load against `target` with `--json -` and returns the parsed result.
pub fn run_json(target: &str, args: &[&str]) -> (Output, Value) {
    let mut all = vec!["--target", target, "--quiet", "--json", "-"];
    all.extend(args);
    let out = loadgen(&all);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loadgen printed no JSON ({e}); status {:?}; stderr: {}",
            out.status,
            stderr(&out)
        )
    });
    (out, json)
}

/// The integer at a dotted path of a JSON result.
pub fn u(v: &Value, path: &str) -> u64 {
    pointer(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not an integer in {v}"))
}

/// The number at a dotted path of a JSON result.
pub fn f(v: &Value, path: &str) -> f64 {
    pointer(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

pub fn pointer<'v>(v: &'v Value, path: &str) -> &'v Value {
    let p = format!("/{}", path.replace('.', "/"));
    v.pointer(&p)
        .unwrap_or_else(|| panic!("no field {path} in {v}"))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads `from` (a child's stderr) until `needle` appears, and returns what
/// was read; fails if the stream ends first.
pub fn read_until(from: &mut impl Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert_eq!(
            from.read(&mut byte).unwrap(),
            1,
            "stream ended before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}
