//! `kubectl kustomize`: a version recent enough for the manifests, and the rendered
//! documents.

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::path;

/// Oldest kustomize that knows `components` and the `labels` field.
const MIN_KUSTOMIZE: (u32, u32) = (4, 1);

pub(super) fn version() -> Result<()> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .context("running kubectl version --client")?;
    recent_enough(&String::from_utf8_lossy(&out.stdout))
}

/// Judges `kubectl version --client` output. kubectl before 1.24 does not print its
/// kustomize version: then its own version decides (Debian 12's kubectl 1.20 prints
/// `GitVersion:"v1.20.2"` and embeds kustomize 2.0.3).
fn recent_enough(text: &str) -> Result<()> {
    let (what, version, minimum) = match text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version:"))
    {
        Some(v) => ("kustomize", v.trim().to_owned(), MIN_KUSTOMIZE),
        None => {
            let v = text
                .split(|c: char| c == '"' || c.is_whitespace())
                .find(|w| w.starts_with("v1."))
                .with_context(|| format!("no version in `kubectl version --client`: {text}"))?;
            ("kubectl", v.to_owned(), (1, 22))
        }
    };
    let have = parse_version(&version).with_context(|| format!("{what} version {version:?}"))?;
    ensure!(
        have >= minimum,
        "{what} {version} is too old: the manifests need kustomize >= v{}.{} (kubectl >= 1.22)",
        MIN_KUSTOMIZE.0,
        MIN_KUSTOMIZE.1
    );
    Ok(())
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
}

/// `kubectl kustomize <dir>`, parsed into one value per document.
pub(super) fn render(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(path(dir))
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {dir} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("kubectl kustomize output is not UTF-8")?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing the output of kubectl kustomize {dir}"))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    ensure!(!docs.is_empty(), "kubectl kustomize {dir} rendered nothing");
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomize_versions() {
        assert_eq!(parse_version("v5.5.0"), Some((5, 5)));
        assert_eq!(parse_version("v4.1.3-dirty"), Some((4, 1)));
        assert!(parse_version("v2.0.3").unwrap() < MIN_KUSTOMIZE);
        recent_enough("Client Version: v1.32.4\nKustomize Version: v5.5.0\n").unwrap();
        assert!(recent_enough("Client Version: v1.23.0\nKustomize Version: v4.0.5\n").is_err());
        let debian12 = r#"Client Version: version.Info{Major:"1", Minor:"20", GitVersion:"v1.20.2", GitCommit:"x"}"#;
        assert!(recent_enough(debian12).is_err());
        let kubectl_1_22 =
            r#"Client Version: version.Info{Major:"1", Minor:"22", GitVersion:"v1.22.0"}"#;
        recent_enough(kubectl_1_22).unwrap();
    }
}
