//! A standalone supervisor entry point: `skiff-supervisor --task-dir DIR`.
//!
//! The `skiff` binary's hidden `supervise` subcommand does the same; this one lets the
//! driver's tests (and hosts that prefer a separate binary) run a supervisor without it.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--task-dir" => {
            supervisor::run(&PathBuf::from(dir))
        }
        _ => {
            eprintln!("usage: skiff-supervisor --task-dir DIR");
            ExitCode::from(2)
        }
    }
}
