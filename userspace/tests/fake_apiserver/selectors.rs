//! Label and field selectors as the API server parses them (the subset the discovery
//! sends), and query-string decoding.

use super::Kind;

#[derive(Debug, Clone)]
pub(super) enum LabelOp {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

#[derive(Debug, Clone)]
pub(super) struct LabelReq {
    pub(super) key: String,
    pub(super) op: LabelOp,
}

/// A selector this fake API server rejects, as the real one would (400 BadRequest).
#[derive(Debug, thiserror::Error)]
pub(super) enum SelectorError {
    #[error("unsupported label selector {part:?}")]
    Label { part: String },
    #[error("invalid field selector {part:?}")]
    Field { part: String },
    #[error("field label not supported: {key}")]
    FieldKey { key: String },
}

pub(super) fn parse_labels(s: &str) -> Result<Vec<LabelReq>, SelectorError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Ne(v.trim().into()),
            }
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Eq(v.trim().into()),
            }
        } else if let Some(k) = part.strip_prefix('!') {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Absent,
            }
        } else if part.contains(' ') {
            return Err(SelectorError::Label { part: part.into() });
        } else {
            LabelReq {
                key: part.into(),
                op: LabelOp::Exists,
            }
        };
        out.push(req);
    }
    Ok(out)
}

pub(super) fn parse_fields(s: &str, kind: Kind) -> Result<Vec<(String, String)>, SelectorError> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| SelectorError::Field { part: part.into() })?;
        let k = k.trim_end_matches('=');
        let supported = matches!(k, "metadata.name" | "metadata.namespace")
            || (kind == Kind::Pod && matches!(k, "spec.nodeName" | "status.phase"));
        if !supported {
            return Err(SelectorError::FieldKey { key: k.into() });
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
