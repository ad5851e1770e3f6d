//! Golden-file tests: the `--dry-run` text for a set of flag combinations,
//! compared with `tests/golden/<case>.txt`. Run with `UPDATE_GOLDEN=1` to
//! rewrite the files after an intended change, then review the diff.

use std::path::PathBuf;

use clap::Parser;
use remora_iptables::{dry_run, Args, Config};

const CASES: &[(&str, &[&str])] = &[
    // No flags: the mesh defaults; `--ipv6 auto` prints both families.
    ("defaults", &[]),
    (
        "include-list",
        &["--include-inbound-ports", "80,8080", "--ipv6", "false"],
    ),
    (
        "no-inbound",
        &["--include-inbound-ports", "", "--ipv6", "false"],
    ),
    (
        "exclusions",
        &[
            "--exclude-inbound-ports",
            "22,9090",
            "--exclude-outbound-ports",
            "3306,5432",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,169.254.169.254,fd00::/8,2001:db8::1",
            "--exclude-interfaces",
            "eth1,veth+",
            "--ipv6",
            "true",
        ],
    ),
    (
        "custom-ids-and-ports",
        &[
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--inbound-capture-port",
            "16006",
            "--outbound-capture-port",
            "16001",
            "--proxy-admin-port",
            "16020",
            "--ipv6",
            "false",
        ],
    ),
    (
        "ipv6",
        &["--ipv6", "true", "--include-inbound-ports", "443"],
    ),
];

fn render_case(args: &[&str]) -> String {
    let args = Args::try_parse_from(std::iter::once("remora-init").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("flags {args:?} must parse: {e}"));
    dry_run(&Config::from_args(args).expect("flags must validate"))
}

#[test]
fn rendered_payloads_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut mismatches = Vec::new();
    for (name, args) in CASES {
        let path = dir.join(format!("{name}.txt"));
        let rendered = render_case(args);
        if update {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                path.display()
            )
        });
        if rendered != expected {
            mismatches.push(format!(
                "{name} (flags {args:?}) differs from {}:\n--- rendered\n{rendered}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\nIf the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff.",
        mismatches.join("\n")
    );
}

#[test]
fn every_golden_file_has_a_case() {
    // A stale file would otherwise look covered while nothing checks it.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.trim_end_matches(".txt");
        assert!(
            CASES.iter().any(|(case, _)| *case == stem),
            "no case for golden file {name}"
        );
    }
}
