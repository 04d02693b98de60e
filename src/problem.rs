//! Where a problem is in a document, and the RFC 9457 problem document that carries it.

use serde::Serialize;

/// One problem and where it is: a JSON pointer, a line and column, or both.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Located {
    /// JSON pointer (RFC 6901) of the offending part, `""` for the whole document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
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
            line: None,
            column: None,
            detail: shorten(detail.into()),
        }
    }

    pub fn line_column(line: usize, column: usize, detail: impl Into<String>) -> Self {
        Self {
            pointer: None,
            line: Some(line),
            column: Some(column),
            detail: shorten(detail.into()),
        }
    }
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pointer, self.line, self.column) {
            (Some(p), _, _) if p.is_empty() => write!(f, "(document): {}", self.detail),
            (Some(p), _, _) => write!(f, "{p}: {}", self.detail),
            (None, Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.detail),
            _ => f.write_str(&self.detail),
        }
    }
}

/// A document that could not be taken in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    /// Not well-formed in its syntax (JSON, XML, flat file).
    #[error("malformed document: {0}")]
    Malformed(Located),
    /// Well-formed, but not what the format or schema allows.
    #[error("invalid document: {}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Invalid(Vec<Located>),
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
