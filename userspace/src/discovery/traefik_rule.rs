//! Host names from a Traefik router rule (`match` of an IngressRoute), e.g.
//! ``Host(`a.test`) && (PathPrefix(`/api`) || !Header(`X`, `y`))``.
//!
//! Only hosts a request can actually be routed on count: arguments of `Host`,
//! `HostHeader` (Traefik v2) and `HostSNI` outside any negation. Regexp matchers are
//! counted, never turned into guessed names. A rule that does not parse yields an error,
//! never a partial list: the caller counts and logs it.

/// Rules longer than this are refused (a Kubernetes object can be 1.5 MiB).
const MAX_RULE_LEN: usize = 16 * 1024;
/// Nesting limit, so that a hostile rule cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleHosts {
    /// Lowercased host names, in rule order, deduplicated.
    pub hosts: Vec<String>,
    /// `HostRegexp`/`HostSNIRegexp` matchers (not expanded into names).
    pub regexps: usize,
    /// `HostSNI(`*`)` catch-alls.
    pub wildcards: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparsable rule at byte {at}: {reason}")]
pub struct RuleError {
    pub at: usize,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    And,
    Or,
    Not,
    Open,
    Close,
    Comma,
    Ident(&'a str),
    Str(String),
}

fn tokenize(rule: &str) -> Result<Vec<(usize, Token<'_>)>, RuleError> {
    let bytes = rule.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at, reason| RuleError { at, reason };
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let tok = match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'&' if bytes.get(i + 1) == Some(&b'&') => {
                i += 2;
                Token::And
            }
            b'|' if bytes.get(i + 1) == Some(&b'|') => {
                i += 2;
                Token::Or
            }
            b'!' => {
                i += 1;
                Token::Not
            }
            b'(' => {
                i += 1;
                Token::Open
            }
            b')' => {
                i += 1;
                Token::Close
            }
            b',' => {
                i += 1;
                Token::Comma
            }
            b'`' => {
                let end = rule[i + 1..]
                    .find('`')
                    .ok_or(err(i, "unterminated backquoted string"))?;
                let s = rule[i + 1..i + 1 + end].to_string();
                i += end + 2;
                Token::Str(s)
            }
            b'"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => return Err(err(i, "unterminated quoted string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let Some(&next) = bytes.get(j + 1) else {
                                return Err(err(j, "dangling escape"));
                            };
                            if !next.is_ascii() {
                                return Err(err(j, "unsupported escape"));
                            }
                            s.push(char::from(next));
                            j += 2;
                        }
                        Some(_) => {
                            // Copy one whole UTF-8 character.
                            let ch = rule[j..].chars().next().ok_or(err(j, "bad character"))?;
                            s.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                i = j + 1;
                Token::Str(s)
            }
            b if b.is_ascii_alphabetic() => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
                i += len;
                Token::Ident(&rule[start..i])
            }
            _ => return Err(err(i, "unexpected character")),
        };
        out.push((start, tok));
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token<'a>)>,
    pos: usize,
    end: usize,
    out: RuleHosts,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(p, _)| *p)
    }

    fn fail<T>(&self, reason: &'static str) -> Result<T, RuleError> {
        Err(RuleError {
            at: self.at(),
            reason,
        })
    }

    fn expect(&mut self, want: &Token<'_>, reason: &'static str) -> Result<(), RuleError> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(reason)
        }
    }

    fn or_expr(&mut self, negated: bool, depth: usize) -> Result<(), RuleError> {
        self.and_expr(negated, depth)?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            self.and_expr(negated, depth)?;
        }
        Ok(())
    }

    fn and_expr(&mut self, negated: bool, depth: usize) -> Result<(), RuleError> {
        self.unary(negated, depth)?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            self.unary(negated, depth)?;
        }
        Ok(())
    }

    fn unary(&mut self, negated: bool, depth: usize) -> Result<(), RuleError> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deeply");
        }
        match self.peek() {
            Some(Token::Not) => {
                self.pos += 1;
                self.unary(!negated, depth + 1)
            }
            Some(Token::Open) => {
                self.pos += 1;
                self.or_expr(negated, depth + 1)?;
                self.expect(&Token::Close, "missing ')'")
            }
            Some(Token::Ident(name)) => {
                let name = *name;
                self.pos += 1;
                self.expect(&Token::Open, "matcher without '('")?;
                let mut args = Vec::new();
                if self.peek() != Some(&Token::Close) {
                    loop {
                        match self.tokens.get(self.pos) {
                            Some((_, Token::Str(s))) => args.push(s.clone()),
                            _ => return self.fail("matcher argument is not a string"),
                        }
                        self.pos += 1;
                        if self.peek() == Some(&Token::Comma) {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(&Token::Close, "missing ')' after matcher arguments")?;
                if !negated {
                    self.matcher(name, args);
                }
                Ok(())
            }
            _ => self.fail("expected a matcher, '!' or '('"),
        }
    }

    fn matcher(&mut self, name: &str, args: Vec<String>) {
        match name {
            "Host" | "HostHeader" | "HostSNI" => {
                for a in args {
                    let h = a.trim().to_ascii_lowercase();
                    if h == "*" {
                        self.out.wildcards += 1;
                    } else if !h.is_empty() && !self.out.hosts.contains(&h) {
                        self.out.hosts.push(h);
                    }
                }
            }
            "HostRegexp" | "HostSNIRegexp" => self.out.regexps += 1,
            _ => {}
        }
    }
}

/// The hosts a rule routes on.
pub fn hosts(rule: &str) -> Result<RuleHosts, RuleError> {
    if rule.len() > MAX_RULE_LEN {
        return Err(RuleError {
            at: MAX_RULE_LEN,
            reason: "rule too long",
        });
    }
    let tokens = tokenize(rule)?;
    if tokens.is_empty() {
        return Err(RuleError {
            at: 0,
            reason: "empty rule",
        });
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        end: rule.len(),
        out: RuleHosts::default(),
    };
    p.or_expr(false, 0)?;
    if p.pos != p.tokens.len() {
        return p.fail("trailing input");
    }
    Ok(p.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rule: &str) -> Vec<String> {
        match hosts(rule) {
            Ok(h) => h.hosts,
            Err(e) => panic!("{rule}: {e}"),
        }
    }

    #[test]
    fn simple_and_combined_rules() {
        assert_eq!(ok("Host(`a.test`)"), vec!["a.test"]);
        assert_eq!(
            ok("Host(`App.Test`) && PathPrefix(`/api`)"),
            vec!["app.test"]
        );
        assert_eq!(
            ok("(Host(`a.test`) || Host(\"b.test\")) && (Path(`/x`) || Method(`GET`))"),
            vec!["a.test", "b.test"]
        );
        // Traefik v2 allowed several hosts in one matcher.
        assert_eq!(
            ok("Host(`a.test`, `b.test`,`a.test`)"),
            vec!["a.test", "b.test"]
        );
        assert_eq!(ok("HostSNI(`tls.test`)"), vec!["tls.test"]);
        assert_eq!(ok("HostHeader(`old.test`)"), vec!["old.test"]);
        assert_eq!(ok("PathPrefix(`/`)"), Vec::<String>::new());
        assert_eq!(ok("Header(`X-A`, `b`) && Host(`c.test`)"), vec!["c.test"]);
    }

    #[test]
    fn negated_regexp_and_wildcards_are_not_hosts() {
        assert_eq!(ok("!Host(`a.test`) && Host(`b.test`)"), vec!["b.test"]);
        assert_eq!(ok("!(Host(`a.test`) || !Host(`b.test`))"), vec!["b.test"]);
        let r = hosts("HostRegexp(`^.+\\.test$`) || HostSNI(`*`)").expect("parses");
        assert!(r.hosts.is_empty());
        assert_eq!((r.regexps, r.wildcards), (1, 1));
    }

    #[test]
    fn quoted_strings_with_escapes_and_commas() {
        assert_eq!(
            ok("Host(\"a.test\") && Header(\"X\", \"a\\\"b,)\")"),
            vec!["a.test"]
        );
        assert_eq!(ok("Path(`/a,b)`) && Host(`x.test`)"), vec!["x.test"]);
    }

    #[test]
    fn malformed_rules_are_errors_not_guesses() {
        for bad in [
            "",
            "   ",
            "Host(`a.test`",
            "Host(a.test)",
            "Host(`a.test`) &&",
            "Host(`a.test`) & Path(`/`)",
            "Host(`a.test`) Host(`b.test`)",
            "Host(`a.test)",
            "Host(\"a.test)",
            "(Host(`a.test`)",
            "Host(`a.test`))",
            "Host",
            "Host(`a`,)",
            "🙂",
        ] {
            assert!(hosts(bad).is_err(), "{bad:?} should not parse");
        }
        let deep = format!("{}Host(`a.test`){}", "(".repeat(500), ")".repeat(500));
        assert_eq!(hosts(&deep).map_err(|e| e.reason), Err("nested too deeply"));
        let long = format!("Host(`{}`)", "a".repeat(MAX_RULE_LEN));
        assert!(hosts(&long).is_err());
        let e = hosts("Host(`a.test`) || %").expect_err("bad char");
        assert_eq!(e.at, 18);
    }
}
