//! `remora-init`: installs or removes the iptables rules that send a pod's
//! TCP traffic through the Remora proxy. Runs once, as an init container.
//!
//! Exit codes: 0 on success, 2 for invalid flags (nothing was touched),
//! 1 when reading or loading the rules failed.

use std::process::ExitCode;

use clap::Parser;
use remora_iptables::{apply, host::System, Action, ApplyError, Args, Config};

fn main() -> ExitCode {
    // Invalid flags exit here, with clap's message naming the flag, before
    // anything on the host is read or changed.
    let args = Args::parse();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("remora-init: error: {err}");
            return ExitCode::from(2);
        }
    };

    if config.action == Action::DryRun {
        print!("{}", apply::dry_run(&config));
        return ExitCode::SUCCESS;
    }

    match apply::run(&config, &System) {
        Ok(report) => {
            for note in &report.notes {
                eprintln!("remora-init: {note}");
            }
            let families: Vec<&str> = report.families.iter().map(|f| f.name()).collect();
            let done = match config.action {
                Action::Cleanup => "removed Remora's rules",
                Action::Apply | Action::DryRun => "installed Remora's capture rules",
            };
            eprintln!(
                "remora-init: {done} ({}) with the {} backend",
                families.join(", "),
                report.backend.name()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("remora-init: error: {err}");
            if let ApplyError::Restore { input, .. } = &err {
                eprintln!("remora-init: the rejected restore input was:\n{input}");
            }
            ExitCode::FAILURE
        }
    }
}
