//! The `events/<category>/<event>/format` files: one `field:` line per record field, with
//! its offset, size and signedness.

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("line {line}: cannot parse tracepoint field `{text}`")]
    BadField { line: usize, text: String },
    #[error("no `name:` line")]
    NoName,
    #[error("{event}: no field `{field}`")]
    MissingField { event: String, field: String },
    #[error("{event}: field `{field}` is {size} bytes, expected {expected:?}")]
    FieldSize {
        event: String,
        field: String,
        size: u32,
        expected: &'static [u32],
    },
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed `events/<category>/<name>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub fields: Vec<Field>,
}

impl EventFormat {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut name = None;
        let mut fields = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if let Some(n) = line.strip_prefix("name:") {
                name = Some(n.trim().to_owned());
            } else if line.starts_with("field:") {
                let field = parse_field(line).ok_or_else(|| FormatError::BadField {
                    line: i + 1,
                    text: line.to_owned(),
                })?;
                fields.push(field);
            }
        }
        Ok(EventFormat {
            name: name.ok_or(FormatError::NoName)?,
            fields,
        })
    }

    /// Offset of `field`, checking its size is one the kernel program can read.
    pub fn offset(&self, field: &str, sizes: &'static [u32]) -> Result<u32, FormatError> {
        let f = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| FormatError::MissingField {
                event: self.name.clone(),
                field: field.to_owned(),
            })?;
        if !sizes.contains(&f.size) {
            return Err(FormatError::FieldSize {
                event: self.name.clone(),
                field: field.to_owned(),
                size: f.size,
                expected: sizes,
            });
        }
        Ok(f.offset)
    }
}

/// `field:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut parts = line.split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let last = decl.split_whitespace().next_back()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    if name.is_empty() {
        return None;
    }
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts {
        if let Some((key, value)) = part.split_once(':') {
            let value = value.trim();
            match key.trim() {
                "offset" => offset = value.parse().ok(),
                "size" => size = value.parse().ok(),
                "signed" => signed = value == "1",
                _ => {}
            }
        }
    }
    Some(Field {
        name: name.to_owned(),
        offset: offset?,
        size: size?,
        signed,
    })
}
