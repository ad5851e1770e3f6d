//! Renders Remora's iptables capture rules and applies them.
//!
//! The crate is a pure core with one edge: `config` turns flags into a
//! validated `Config`, `render` turns its `CaptureSpec` into an
//! `iptables-restore` payload, and `merge` splices that payload into the nat
//! table read back from the kernel. `apply` sequences the reads and writes,
//! and `host` is the only place that runs commands. See docs/iptables.md for
//! the rule set and the reason for each rule.

pub mod apply;
pub mod config;
pub mod detect;
pub mod host;
pub mod merge;
pub mod render;

pub use apply::{dry_run, run, ApplyError, Backend, Report};
pub use config::{Action, Args, CaptureSpec, Config, ConfigError, InboundPorts};
pub use merge::{merge_nat, MergeError};
pub use render::{render, Family};
