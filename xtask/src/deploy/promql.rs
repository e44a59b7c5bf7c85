//! The names a PromQL expression selects, for holding the rules and the dashboard to the
//! agent's metric list.

use std::collections::BTreeSet;

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The metric and recorded-series names a PromQL expression selects: identifiers that
/// start with `routeskew_` or hold a colon, outside string literals.
pub(super) fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            for (_, d) in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if is_ident(d) || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("routeskew_") || word.contains(':') {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (5m, 1e3): not a name.
            while chars.peek().is_some_and(|&(_, d)| is_ident(d) || d == '.') {
                chars.next();
            }
        }
    }
    names
}

pub(super) fn unknown_names(
    expr: &str,
    declared: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    promql_names(expr)
        .into_iter()
        .filter(|n| !declared.contains(n) && !recorded.contains(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_names_skip_strings_numbers_and_functions() {
        let names = promql_names(
            r#"sum by (replica) (rate(routeskew_http_responses_total{class="router_miss",host="routeskew_x:y"}[5m])) / ns:routeskew_a:rate5m > 1e3"#,
        );
        let want: BTreeSet<String> = ["routeskew_http_responses_total", "ns:routeskew_a:rate5m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, want);
    }
}
