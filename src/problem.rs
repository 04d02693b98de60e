//! Where a problem is in a document, and the RFC 9457 problem document that carries it.

use serde::{Deserialize, Serialize};

/// One problem and where it is, at both ends: in the document (a JSON pointer, an XML path
/// or flat-file record:field, a line and column) and in the canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Located {
    /// JSON pointer (RFC 6901) of the offending part, `""` for the whole document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Where in a non-JSON document: `/Decl/Containers/Container[2]/Seal[1]/Number`,
    /// `CONTAINER[3]:2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The canonical field concerned, as a JSON pointer into the canonical form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// The partner's own error code, where its format has them (ICEGATE `ERR100`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub detail: String,
}

/// Longest detail kept: a validator may quote a whole subtree.
const MAX_DETAIL: usize = 300;

fn shorten(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    detail
}

impl Located {
    pub fn pointer(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: Some(pointer.into()),
            path: None,
            line: None,
            column: None,
            canonical: None,
            code: None,
            detail: shorten(detail.into()),
        }
    }

    pub fn line_column(line: usize, column: usize, detail: impl Into<String>) -> Self {
        Self {
            pointer: None,
            path: None,
            line: Some(line),
            column: Some(column),
            canonical: None,
            code: None,
            detail: shorten(detail.into()),
        }
    }
}

impl Located {
    /// A JSON syntax error where it is, said once (serde_json's message repeats the line
    /// and column), and saying "not JSON" when the document is plainly something else.
    pub fn json_syntax(body: &[u8], e: &serde_json::Error) -> Self {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message);
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let detail = match first {
            None => "not JSON: the document is empty".to_owned(),
            Some(b'<') => format!("not JSON: the document looks like XML ({message})"),
            Some(b'{' | b'[') => message.to_owned(),
            Some(_) if e.line() == 1 && e.column() <= 1 => {
                format!("not JSON: a JSON document starts with {{ or [ ({message})")
            }
            Some(_) => message.to_owned(),
        };
        Self::line_column(e.line(), e.column(), detail)
    }
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut wrote = false;
        match (&self.pointer, &self.path) {
            (Some(p), _) if p.is_empty() => {
                f.write_str("(document)")?;
                wrote = true;
            }
            (Some(p), _) | (None, Some(p)) => {
                f.write_str(p)?;
                wrote = true;
            }
            _ => {}
        }
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "{}line {l}, column {c}", if wrote { " at " } else { "" })?;
            wrote = true;
        }
        if let Some(c) = &self.canonical
            && self.pointer.as_deref() != Some(c.as_str())
        {
            write!(f, "{}canonical {c}", if wrote { " → " } else { "" })?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.detail)
    }
}

/// A document that could not be taken in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    /// Not well-formed in its syntax (JSON, XML, flat file).
    #[error("malformed document: {0}")]
    Malformed(Box<Located>),
    /// Well-formed, but not what the format or schema allows.
    #[error("invalid document: {}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Invalid(Vec<Located>),
}

impl DocumentError {
    pub fn malformed(located: Located) -> Self {
        DocumentError::Malformed(Box::new(located))
    }

    /// Every problem, whichever kind.
    pub fn into_problems(self) -> Vec<Located> {
        match self {
            DocumentError::Malformed(l) => vec![*l],
            DocumentError::Invalid(list) => list,
        }
    }
}

/// RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Each problem with where it is in the document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Located>,
}

pub const PROBLEM_BASE: &str = "https://ects-gateway.org/problems/";
