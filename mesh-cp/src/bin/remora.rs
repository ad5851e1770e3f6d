//! `remora`, the operator CLI: parse the flags and run the subcommand
//! (the work is in remora_cp::cli). Exit 0 on success, 1 on an error in the
//! input, 2 on a usage error (clap's); `demo` 130 or 143 when interrupted.

use std::process::ExitCode;

use clap::Parser;
use remora_cp::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inject(args) => manifest(&args.input.file, Some(&args.settings())),
        Command::Uninject(args) => manifest(&args.file, None),
        Command::Check(args) => {
            let report = cli::check::check(&args.paths);
            for finding in &report.findings {
                println!("{finding}");
            }
            println!("{}", report.summary());
            if report.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Demo(args) => match runtime() {
            Ok(rt) => rt.block_on(cli::demo::run(&args)),
            Err(code) => code,
        },
        Command::DemoApp(args) => match runtime() {
            Ok(rt) => match rt.block_on(cli::demo::app::serve(args.name, args.listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("remora demo-app: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("remora: starting the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn manifest(file: &std::path::Path, settings: Option<&remora_injector::Settings>) -> ExitCode {
    let result = cli::read_input(file).and_then(|text| {
        cli::run_manifest(
            &text,
            settings,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora: {e}");
            ExitCode::FAILURE
        }
    }
}
