//! Applies (or cleans up) the rules on this network namespace.
//!
//! This module owns the sequence: pick the backend, decide whether IPv6 is
//! captured, read every table that will change, compute every merge, and
//! only then change anything: add `::6` to `lo`, load the IPv4 nat table,
//! load the IPv6 nat table. Each load is one `<backend>-restore` of the whole
//! nat table, which the kernel swaps in atomically. All I/O goes through
//! `host::Host`; rendering and merging are pure (`render`, `merge`).

use std::net::Ipv6Addr;

use crate::config::{Action, BackendChoice, Config, Ipv6Mode};
use crate::detect;
use crate::host::{ExecError, Host};
use crate::merge::{merge_nat, MergeError};
use crate::render::{render, Family};

/// Where the kernel lists this namespace's IPv6 addresses.
const IF_INET6: &str = "/proc/net/if_inet6";
/// Set to 1 when IPv6 is disabled on `lo`, which then cannot hold `::6`.
const LO_DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/lo/disable_ipv6";
/// How long to wait for the legacy xtables lock before giving up, so that a
/// stuck lock fails the init container instead of hanging it.
const LOCK_WAIT_SECONDS: &str = "30";
/// The source address the proxy binds for its IPv6 inbound forwards.
const IPV6_INBOUND_FORWARD_SOURCE: &str = "::6/128";

/// An iptables implementation, with its own set of binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        }
    }

    /// E.g. `ip6tables-legacy-save`.
    pub fn program(self, family: Family, verb: &str) -> String {
        format!("{}-{}-{verb}", family.program_prefix(), self.name())
    }
}

/// What a successful run did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub backend: Backend,
    pub families: Vec<Family>,
    /// Decisions worth telling the operator (backend choice, IPv6 skipped).
    pub notes: Vec<String>,
}

/// Why applying or cleaning up failed. Every variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "reading the {family} nat table failed: {source}; is the NET_ADMIN capability granted, \
         and is the {backend} backend available (choose another with --backend)?"
    )]
    Save {
        family: &'static str,
        backend: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("the current {family} nat table cannot be merged, nothing was changed: {source}")]
    Merge {
        family: &'static str,
        #[source]
        source: MergeError,
    },
    #[error(
        "loading the {family} nat table failed: {source}; is the NET_ADMIN capability granted, \
         and does the kernel support the nat table, the REDIRECT target and the owner match? \
         The {family} table was left as it was (the load is atomic); remora-init is safe to rerun"
    )]
    Restore {
        family: &'static str,
        /// The text that was rejected, for the operator to inspect.
        input: String,
        #[source]
        source: ExecError,
    },
    #[error(
        "this namespace has the routable IPv6 address {address}, but IPv6 traffic cannot be \
         captured: {reason}; that traffic would bypass the proxy. Fix it, or pass --ipv6 false \
         to accept that"
    )]
    Ipv6Unusable { address: Ipv6Addr, reason: String },
    #[error(
        "adding {IPV6_INBOUND_FORWARD_SOURCE} to lo failed: {source}; the proxy binds ::6 as the \
         source of its IPv6 inbound forwards. Is IPv6 disabled on lo \
         (net.ipv6.conf.lo.disable_ipv6)? Pass --ipv6 false if the pod has no IPv6"
    )]
    LoopbackAddress {
        #[source]
        source: ExecError,
    },
}

/// The families a dry run prints: IPv6 too unless it is switched off, since
/// `auto` would capture it wherever the namespace can carry it.
pub fn dry_run_families(ipv6: Ipv6Mode) -> Vec<Family> {
    match ipv6 {
        Ipv6Mode::False => vec![Family::V4],
        Ipv6Mode::Auto | Ipv6Mode::True => vec![Family::V4, Family::V6],
    }
}

/// The text `--dry-run` prints: one payload per family, each headed by the
/// command that would load it. Pure; needs no privileges.
pub fn dry_run(config: &Config) -> String {
    dry_run_families(config.ipv6)
        .into_iter()
        .map(|family| {
            format!(
                "# {}-restore (nat table, {})\n{}",
                family.program_prefix(),
                family.name(),
                render(&config.capture, family)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applies `config.action` (`Apply` or `Cleanup`) to this namespace.
/// `DryRun` touches nothing and returns an empty report; use `dry_run` to get
/// its text.
pub fn run(config: &Config, host: &dyn Host) -> Result<Report, ApplyError> {
    let mut notes = Vec::new();
    let payload = |family| match config.action {
        Action::Apply => render(&config.capture, family),
        Action::Cleanup | Action::DryRun => String::new(),
    };
    if config.action == Action::DryRun {
        return Ok(Report {
            backend: Backend::Nft,
            families: Vec::new(),
            notes,
        });
    }

    let backend = resolve_backend(config.backend, host, &mut notes);

    // Read and merge everything before changing anything.
    let v4_save = read_nat(host, backend, Family::V4)?;
    let v4 = merged(Family::V4, &v4_save, &payload(Family::V4))?;
    let v6 = match ipv6_table(config, host, backend, &mut notes)? {
        Some(save) => Some(merged(Family::V6, &save, &payload(Family::V6))?),
        None => None,
    };

    if v6.is_some() && config.action == Action::Apply {
        // Before the rules, so the proxy can bind ::6 as soon as they exist.
        host.run(
            "ip",
            &[
                "-6",
                "addr",
                "replace",
                IPV6_INBOUND_FORWARD_SOURCE,
                "dev",
                "lo",
            ],
            None,
        )
        .map_err(|source| ApplyError::LoopbackAddress { source })?;
    }

    let mut families = Vec::new();
    for (family, text) in [(Family::V4, Some(v4)), (Family::V6, v6)] {
        let Some(text) = text else { continue };
        let program = backend.program(family, "restore");
        host.run(&program, &["-w", LOCK_WAIT_SECONDS, "-c"], Some(&text))
            .map_err(|source| ApplyError::Restore {
                family: family.name(),
                input: text.clone(),
                source,
            })?;
        families.push(family);
    }
    Ok(Report {
        backend,
        families,
        notes,
    })
}

/// `auto` picks legacy when the legacy backend already holds rules in this
/// namespace (mixing backends makes rule order across them undefined), nft
/// otherwise. `*-legacy-save` without `-t` only lists tables that already
/// exist, so the probe creates nothing.
fn resolve_backend(choice: BackendChoice, host: &dyn Host, notes: &mut Vec<String>) -> Backend {
    match choice {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto => {
            for family in [Family::V4, Family::V6] {
                let program = Backend::Legacy.program(family, "save");
                if let Ok(save) = host.run(&program, &[], None) {
                    if detect::legacy_in_use(&save) {
                        notes.push(format!(
                            "backend auto: using legacy, because `{program}` shows existing rules"
                        ));
                        return Backend::Legacy;
                    }
                }
            }
            notes.push("backend auto: using nft, no legacy rules exist in this namespace".into());
            Backend::Nft
        }
    }
}

fn read_nat(host: &dyn Host, backend: Backend, family: Family) -> Result<String, ApplyError> {
    host.run(&backend.program(family, "save"), &["-c", "-t", "nat"], None)
        .map_err(|source| ApplyError::Save {
            family: family.name(),
            backend: backend.name(),
            source,
        })
}

fn merged(family: Family, save: &str, payload: &str) -> Result<String, ApplyError> {
    merge_nat(save, payload).map_err(|source| ApplyError::Merge {
        family: family.name(),
        source,
    })
}

/// Reads the IPv6 nat table if IPv6 is to be handled, `None` if not.
///
/// `auto` handles IPv6 when the namespace has IPv6 (`/proc/net/if_inet6`
/// exists and `lo` may hold addresses) and `ip6tables` can read its nat
/// table. If it cannot, IPv6 is skipped, unless the namespace has a routable
/// IPv6 address: then that traffic would escape the mesh, so applying fails.
fn ipv6_table(
    config: &Config,
    host: &dyn Host,
    backend: Backend,
    notes: &mut Vec<String>,
) -> Result<Option<String>, ApplyError> {
    match config.ipv6 {
        Ipv6Mode::False => Ok(None),
        Ipv6Mode::True => read_nat(host, backend, Family::V6).map(Some),
        Ipv6Mode::Auto => {
            let applying = config.action == Action::Apply;
            let Some(if_inet6) = host.read_file(IF_INET6) else {
                notes.push("ipv6 auto: skipped, the kernel has no IPv6 in this namespace".into());
                return Ok(None);
            };
            let routable = detect::routable_ipv6(&if_inet6);
            let lo_disabled = host
                .read_file(LO_DISABLE_IPV6)
                .is_some_and(|v| v.trim() == "1");
            if lo_disabled && applying {
                if let Some(address) = routable {
                    return Err(ApplyError::Ipv6Unusable {
                        address,
                        reason: "IPv6 is disabled on lo, so the proxy cannot bind ::6".into(),
                    });
                }
                notes.push("ipv6 auto: skipped, IPv6 is disabled on lo".into());
                return Ok(None);
            }
            match read_nat(host, backend, Family::V6) {
                Ok(save) => Ok(Some(save)),
                Err(err) => match routable {
                    Some(address) if applying => Err(ApplyError::Ipv6Unusable {
                        address,
                        reason: err.to_string(),
                    }),
                    _ => {
                        notes.push(format!("ipv6 auto: skipped, {err}"));
                        Ok(None)
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CaptureSpec;
    use std::cell::RefCell;
    use std::collections::HashMap;

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
                             :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    /// A scripted host: programs answer from `outputs` (missing ones are
    /// "not found"), files from `files`; every call is recorded.
    #[derive(Default)]
    struct Fake {
        outputs: HashMap<String, Result<String, String>>,
        files: HashMap<&'static str, String>,
        calls: RefCell<Vec<(String, Option<String>)>>,
    }

    impl Fake {
        fn answer(mut self, command: &str, out: Result<&str, &str>) -> Self {
            self.outputs.insert(
                command.into(),
                out.map(str::to_owned).map_err(str::to_owned),
            );
            self
        }

        fn file(mut self, path: &'static str, content: &str) -> Self {
            self.files.insert(path, content.into());
            self
        }

        fn commands(&self) -> Vec<String> {
            self.calls.borrow().iter().map(|(c, _)| c.clone()).collect()
        }

        fn stdin_of(&self, program: &str) -> Option<String> {
            self.calls
                .borrow()
                .iter()
                .find(|(c, _)| c.starts_with(program))
                .and_then(|(_, s)| s.clone())
        }

        /// A namespace where both backends work and IPv6 exists.
        fn working() -> Self {
            let mut fake = Fake::default()
                .answer("iptables-legacy-save", Ok(""))
                .answer("ip6tables-legacy-save", Ok(""))
                .answer("ip -6 addr replace ::6/128 dev lo", Ok(""))
                .file(
                    IF_INET6,
                    "00000000000000000000000000000001 01 80 10 80 lo\n",
                )
                .file(LO_DISABLE_IPV6, "0\n");
            for p in ["iptables", "ip6tables"] {
                for b in ["nft", "legacy"] {
                    fake = fake
                        .answer(&format!("{p}-{b}-save -c -t nat"), Ok(EMPTY_NAT))
                        .answer(&format!("{p}-{b}-restore -w 30 -c"), Ok(""));
                }
            }
            fake
        }
    }

    impl Host for Fake {
        fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, ExecError> {
            let command = std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            self.calls
                .borrow_mut()
                .push((command.clone(), stdin.map(str::to_owned)));
            match self.outputs.get(&command) {
                Some(Ok(out)) => Ok(out.clone()),
                Some(Err(stderr)) => Err(ExecError::Failed {
                    command,
                    status: "exit status: 1".into(),
                    stderr: stderr.clone(),
                }),
                None => Err(ExecError::NotFound {
                    program: program.into(),
                }),
            }
        }

        fn read_file(&self, path: &str) -> Option<String> {
            self.files.get(path).cloned()
        }
    }

    fn config(action: Action, ipv6: Ipv6Mode, backend: BackendChoice) -> Config {
        Config {
            capture: CaptureSpec::default(),
            ipv6,
            backend,
            action,
        }
    }

    #[test]
    fn dry_run_runs_nothing() {
        let fake = Fake::working();
        run(
            &config(Action::DryRun, Ipv6Mode::True, BackendChoice::Auto),
            &fake,
        )
        .unwrap();
        assert!(fake.commands().is_empty());
        let text = dry_run(&config(Action::DryRun, Ipv6Mode::Auto, BackendChoice::Auto));
        assert!(text.starts_with("# iptables-restore (nat table, IPv4)\n*nat\n"));
        assert!(text.contains("# ip6tables-restore (nat table, IPv6)\n*nat\n"));
        let v4_only = dry_run(&config(
            Action::DryRun,
            Ipv6Mode::False,
            BackendChoice::Auto,
        ));
        assert!(!v4_only.contains("ip6tables"));
    }

    #[test]
    fn apply_reads_everything_before_changing_anything() {
        let fake = Fake::working();
        let report = run(
            &config(Action::Apply, Ipv6Mode::True, BackendChoice::Nft),
            &fake,
        )
        .unwrap();
        assert_eq!(report.backend, Backend::Nft);
        assert_eq!(report.families, [Family::V4, Family::V6]);
        assert_eq!(
            fake.commands(),
            [
                "iptables-nft-save -c -t nat",
                "ip6tables-nft-save -c -t nat",
                "ip -6 addr replace ::6/128 dev lo",
                "iptables-nft-restore -w 30 -c",
                "ip6tables-nft-restore -w 30 -c",
            ]
        );
        let v4 = fake.stdin_of("iptables-nft-restore").unwrap();
        assert!(v4.contains("-A REMORA_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"));
        let v6 = fake.stdin_of("ip6tables-nft-restore").unwrap();
        assert!(v6.contains("-A REMORA_OUTPUT -s ::6/128 -o lo -j RETURN"));
    }

    #[test]
    fn cleanup_loads_tables_without_remora_and_keeps_lo() {
        let applied = merge_nat(EMPTY_NAT, &render(&CaptureSpec::default(), Family::V4)).unwrap();
        let fake = Fake::working().answer("iptables-legacy-save -c -t nat", Ok(&applied));
        run(
            &config(Action::Cleanup, Ipv6Mode::False, BackendChoice::Legacy),
            &fake,
        )
        .unwrap();
        assert_eq!(
            fake.commands(),
            [
                "iptables-legacy-save -c -t nat",
                "iptables-legacy-restore -w 30 -c"
            ]
        );
        assert_eq!(
            fake.stdin_of("iptables-legacy-restore").unwrap(),
            merge_nat(EMPTY_NAT, "").unwrap()
        );
    }

    #[test]
    fn auto_backend_follows_existing_legacy_rules() {
        let fake = Fake::working();
        let report = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Auto),
            &fake,
        )
        .unwrap();
        assert_eq!(report.backend, Backend::Nft);

        let fake = Fake::working().answer(
            "ip6tables-legacy-save",
            Ok("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"),
        );
        let report = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Auto),
            &fake,
        )
        .unwrap();
        assert_eq!(report.backend, Backend::Legacy);

        // No legacy binaries at all: nft.
        let mut fake = Fake::working();
        fake.outputs.remove("iptables-legacy-save");
        fake.outputs.remove("ip6tables-legacy-save");
        let report = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Auto),
            &fake,
        )
        .unwrap();
        assert_eq!(report.backend, Backend::Nft);
    }

    #[test]
    fn ipv6_auto_skips_quietly_without_routable_addresses() {
        let fake = Fake::working().answer(
            "ip6tables-nft-save -c -t nat",
            Err("can't initialize ip6tables table `nat'"),
        );
        let report = run(
            &config(Action::Apply, Ipv6Mode::Auto, BackendChoice::Nft),
            &fake,
        )
        .unwrap();
        assert_eq!(report.families, [Family::V4]);
        assert!(report
            .notes
            .iter()
            .any(|n| n.contains("ipv6 auto: skipped")));
        assert!(!fake.commands().iter().any(|c| c.starts_with("ip -6")));

        let mut no_kernel_v6 = Fake::working();
        no_kernel_v6.files.remove(IF_INET6);
        let report = run(
            &config(Action::Apply, Ipv6Mode::Auto, BackendChoice::Nft),
            &no_kernel_v6,
        )
        .unwrap();
        assert_eq!(report.families, [Family::V4]);
    }

    #[test]
    fn ipv6_auto_refuses_to_leave_a_routable_address_uncaptured() {
        let routable = "fd000000000000000000000000000010 02 40 00 80 eth0\n";
        let fake = Fake::working().file(IF_INET6, routable).answer(
            "ip6tables-nft-save -c -t nat",
            Err("can't initialize ip6tables table `nat'"),
        );
        let err = run(
            &config(Action::Apply, Ipv6Mode::Auto, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Ipv6Unusable { .. }), "{err}");
        assert!(err.to_string().contains("fd00::10") && err.to_string().contains("--ipv6 false"));
        // Nothing was loaded.
        assert!(!fake.commands().iter().any(|c| c.contains("restore")));

        let fake = Fake::working()
            .file(IF_INET6, routable)
            .file(LO_DISABLE_IPV6, "1\n");
        let err = run(
            &config(Action::Apply, Ipv6Mode::Auto, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Ipv6Unusable { .. }), "{err}");

        // With a working ip6tables it is simply captured.
        let fake = Fake::working().file(IF_INET6, routable);
        let report = run(
            &config(Action::Apply, Ipv6Mode::Auto, BackendChoice::Nft),
            &fake,
        )
        .unwrap();
        assert_eq!(report.families, [Family::V4, Family::V6]);
    }

    #[test]
    fn failures_say_what_to_check() {
        let fake = Fake::working().answer(
            "iptables-nft-restore -w 30 -c",
            Err("iptables-restore: line 9 failed"),
        );
        let err = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("line 9 failed") && message.contains("NET_ADMIN"),
            "{message}"
        );
        assert!(
            matches!(err, ApplyError::Restore { ref input, .. } if input.contains("REMORA_OUTPUT"))
        );

        let mut fake = Fake::working();
        fake.outputs.remove("iptables-nft-save -c -t nat");
        let err = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("not found") && message.contains("--backend"),
            "{message}"
        );

        let fake = Fake::working().answer(
            "iptables-nft-save -c -t nat",
            Ok("*nat\n:OUTPUT ACCEPT [0:0]\n"),
        );
        let err = run(
            &config(Action::Apply, Ipv6Mode::False, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Merge { .. }), "{err}");
        assert!(!fake.commands().iter().any(|c| c.contains("restore")));

        let fake = Fake::working().answer(
            "ip -6 addr replace ::6/128 dev lo",
            Err("RTNETLINK answers: Permission denied"),
        );
        let err = run(
            &config(Action::Apply, Ipv6Mode::True, BackendChoice::Nft),
            &fake,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::LoopbackAddress { .. }), "{err}");
        assert!(!fake.commands().iter().any(|c| c.contains("restore")));
    }
}
