//! The only place that touches the host: runs commands and reads files.
//!
//! `Host` is a trait so that `apply`'s decisions can be unit-tested with a
//! scripted fake; `System` is the real implementation. This module knows
//! nothing about iptables beyond turning a failed command into an error that
//! carries its stderr.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

/// A command that did not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{program}` was not found on PATH; install the package that provides it")]
    NotFound { program: String },
    #[error("`{program}` could not be run: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

impl ExecError {
    /// Whether the program itself is missing (as opposed to failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// What `apply` needs from the machine.
pub trait Host {
    /// Runs `program` with `args`, feeding `stdin` if given, and returns its
    /// stdout. A non-zero exit is an error carrying stderr.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ExecError>;

    /// Reads a file; `None` if it does not exist or cannot be read.
    fn read_file(&self, path: &str) -> Option<String>;
}

/// The real host.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Host for System {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ExecError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ExecError::NotFound {
                    program: program.to_owned(),
                },
                _ => ExecError::Spawn {
                    program: program.to_owned(),
                    source,
                },
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (e.g. the program exited early) shows up as the
            // program's own failure below, with its stderr, which says more.
            let _ = pipe.write_all(input.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| ExecError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(ExecError::Failed {
                command: std::iter::once(program)
                    .chain(args.iter().copied())
                    .collect::<Vec<_>>()
                    .join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    fn read_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}
