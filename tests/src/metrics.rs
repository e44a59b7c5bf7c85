//! A small parser for the OpenMetrics / Prometheus text exposition format, enough to
//! query the agent's `/metrics` by name and labels.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name as exposed (counters carry the `_total` suffix).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations by metric family name.
    pub types: BTreeMap<String, String>,
    /// Whether the exposition ended with `# EOF` (OpenMetrics requires it).
    pub saw_eof: bool,
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let mut m = Metrics::default();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("EOF"), _, _) => m.saw_eof = true,
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        m.types.insert(name.to_string(), kind.trim().to_string());
                    }
                    _ => {}
                }
                continue;
            }
            let sample =
                parse_sample(line).with_context(|| format!("line {}: {line:?}", lineno + 1))?;
            m.samples.push(sample);
        }
        Ok(m)
    }

    /// Samples with this name whose labels include all of `labels`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, labels))
    }

    /// Sum of the matching samples (0 when none match, as for a counter never incremented).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).map(|s| s.value).sum()
    }

    /// The single matching sample's value, `None` when there is none; an error when the
    /// selector is ambiguous.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let found: Vec<&Sample> = self.select(name, labels).collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => bail!(
                "{} samples match {name}{labels:?}: {}",
                many.len(),
                many.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
        n.dedup();
        n
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).context("sample without value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        bail!("empty metric name");
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .context("sample without value")?;
    let value = parse_value(value_text)?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and what follows the `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            bail!("unterminated label set");
        }
        if bytes[i] == b'}' {
            return Ok((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=').context("label without '='")? + i;
        let key = s[i..eq].trim().to_string();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            bail!("label value of {key} is not quoted");
        }
        i += 1;
        let mut value = String::new();
        let mut chars = s[i..].char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("unterminated value of label {key}"),
                Some((off, '"')) => break i + off + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("dangling escape in label {key}"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key, value);
        i = end;
    }
}

fn parse_value(s: &str) -> Result<f64> {
    Ok(match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .with_context(|| format!("bad sample value {s:?}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let text = "# HELP routeskew_http_responses HTTP responses.\n\
# TYPE routeskew_http_responses counter\n\
routeskew_http_responses_total{replica=\"traefik-2\",namespace=\"local\",host=\"missing.test\",class=\"router_miss\",source=\"passive\"} 7\n\
routeskew_http_responses_total{replica=\"traefik-1\",namespace=\"local\",host=\"missing.test\",class=\"ok\",source=\"passive\"} 2\n\
routeskew_http_responses_created{replica=\"traefik-1\"} 1.7e9\n\
# TYPE routeskew_targets gauge\n\
routeskew_targets{state=\"attached\"} 3\n\
routeskew_build_info{version=\"0.1.0\",kernel=\"a \\\"quoted\\\" \\\\ k\\nx\"} 1\n\
routeskew_probe_duration_seconds_bucket{le=\"+Inf\",replica=\"r\"} 4 # {trace_id=\"x\"} 0.1\n\
# EOF\n";
        let m = Metrics::parse(text).unwrap();
        assert!(m.saw_eof);
        assert_eq!(
            m.types.get("routeskew_targets").map(String::as_str),
            Some("gauge")
        );
        assert_eq!(
            m.get(
                "routeskew_http_responses_total",
                &[("replica", "traefik-2"), ("class", "router_miss")]
            )
            .unwrap(),
            Some(7.0)
        );
        assert_eq!(
            m.sum(
                "routeskew_http_responses_total",
                &[("host", "missing.test")]
            ),
            9.0
        );
        assert_eq!(
            m.sum("routeskew_http_responses_total", &[("host", "nope")]),
            0.0
        );
        assert!(m.get("routeskew_http_responses_total", &[]).is_err());
        assert_eq!(
            m.get("routeskew_targets", &[("state", "attached")])
                .unwrap(),
            Some(3.0)
        );
        let info = m.select("routeskew_build_info", &[]).next().unwrap();
        assert_eq!(info.labels["kernel"], "a \"quoted\" \\ k\nx");
        assert_eq!(
            m.get("routeskew_probe_duration_seconds_bucket", &[("le", "+Inf")])
                .unwrap(),
            Some(4.0)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("metric{a=\"b\" 1\n").is_err());
        assert!(Metrics::parse("metric{a=b} 1\n").is_err());
        assert!(Metrics::parse("metric notanumber\n").is_err());
    }
}
