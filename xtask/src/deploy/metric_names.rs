//! The metric names the agent exposes, from the agent itself: `routeskew metrics-list`
//! prints every sample name its `/metrics` can contain, one per line.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::prereqs::workspace_root;

/// Names any list the agent prints must hold: a list without them comes from a broken
/// `metrics-list`, not from an agent that stopped exposing them.
const MUST_LIST: [&str; 2] = ["routeskew_http_responses_total", "routeskew_targets"];

const COMMAND: &str = "cargo run --quiet -p routeskew --bin routeskew -- metrics-list";

/// Builds (when needed) and runs the agent's `metrics-list`.
pub(super) fn from_agent() -> Result<BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "-p",
            "routeskew",
            "--bin",
            "routeskew",
            "--",
            "metrics-list",
        ])
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("starting `{COMMAND}`"))?;
    if !out.status.success() {
        bail!(
            "`{COMMAND}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)
        .with_context(|| format!("the output of `{COMMAND}` is not UTF-8"))?;
    parse(&text).with_context(|| format!("the output of `{COMMAND}`"))
}

/// One name per line; blank lines are ignored.
fn parse(text: &str) -> Result<BTreeSet<String>> {
    let names: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    for must in MUST_LIST {
        ensure!(
            names.contains(must),
            "the agent's metric list lacks {must} ({} names listed)",
            names.len()
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_list_and_requires_the_contract_names() {
        let list = "routeskew_build_info\nrouteskew_http_responses_total\n\n\
                    routeskew_probe_duration_seconds_bucket\nrouteskew_targets\n";
        let names = parse(list).unwrap();
        assert_eq!(names.len(), 4);
        assert!(names.contains("routeskew_probe_duration_seconds_bucket"));
        let without_targets = "routeskew_http_responses_total\nrouteskew_build_info\n";
        let err = parse(without_targets).unwrap_err();
        assert!(
            format!("{err:#}").contains("lacks routeskew_targets"),
            "{err:#}"
        );
        assert!(parse("").is_err());
    }
}
