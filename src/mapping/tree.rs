//! One document tree for every syntax, so bindings are read and written by one algorithm.
//! XML elements are named in Clark notation (`{namespace}local`); JSON object keys and
//! array items become children (an array's items share the key's name); a flat file's
//! records become children named by their tag, and their fields children named 1, 2, 3.

use std::cell::Cell;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::Value;

use crate::problem::{DocumentError, Located};

/// Hard limits on what a document may make us build.
pub const MAX_DEPTH: usize = 64;
pub const MAX_NODES: usize = 500_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Text,
    Number,
    Bool,
}

#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub text: Option<String>,
    /// For JSON output: how to write the text.
    pub scalar: Option<Scalar>,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
    /// Written as a JSON array (its siblings of the same name are items).
    pub repeated: bool,
    pub line: usize,
    pub column: usize,
    pub visited: Cell<bool>,
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub name: String,
    pub value: String,
    pub visited: Cell<bool>,
}

impl Node {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// Line and column of increasing byte offsets, counted once through the text.
struct Lines<'t> {
    text: &'t str,
    offset: usize,
    line: usize,
    line_start: usize,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            offset: 0,
            line: 1,
            line_start: 0,
        }
    }

    fn at(&mut self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        if offset < self.offset {
            return line_column(self.text, offset);
        }
        for (i, b) in self.text.as_bytes()[self.offset..offset].iter().enumerate() {
            if *b == b'\n' {
                self.line += 1;
                self.line_start = self.offset + i + 1;
            }
        }
        self.offset = offset;
        (self.line, offset - self.line_start + 1)
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

fn clark(ns: &ResolveResult<'_>, local: &str) -> Result<String, String> {
    match ns {
        ResolveResult::Bound(ns) => Ok(format!("{{{}}}{local}", ns.into_inner())),
        ResolveResult::Unbound => Ok(local.to_owned()),
        ResolveResult::Unknown(prefix) => {
            Err(format!("namespace prefix {prefix:?} is not declared"))
        }
    }
}

fn malformed(text: &str, offset: usize, detail: impl Into<String>) -> DocumentError {
    let (line, column) = line_column(text, offset);
    DocumentError::malformed(Located::line_column(line, column, detail))
}

/// Parses XML into a tree: namespace-aware, no DTD, no entity but the five predefined and
/// character references, within the depth and node limits.
pub fn parse_xml(bytes: &[u8]) -> Result<Node, DocumentError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(&String::from_utf8_lossy(bytes), e.valid_up_to());
        DocumentError::malformed(Located::line_column(
            line,
            column,
            "the document is not UTF-8",
        ))
    })?;
    let mut reader = NsReader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut lines = Lines::new(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let offset = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => {
                let at = reader.error_position() as usize;
                return Err(malformed(text, at, format!("not well-formed XML: {e}")));
            }
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let (ns, _) = reader.resolver().resolve_element(e.name());
                let is_empty = matches!(event, Event::Empty(_));
                nodes += 1;
                if nodes > MAX_NODES || stack.len() >= MAX_DEPTH {
                    return Err(malformed(
                        text,
                        offset,
                        format!("the document exceeds {MAX_DEPTH} levels or {MAX_NODES} elements"),
                    ));
                }
                let local = e.local_name().into_inner().to_owned();
                let name = clark(&ns, &local).map_err(|d| malformed(text, offset, d))?;
                let (line, column) = lines.at(offset);
                let mut node = Node {
                    name,
                    line,
                    column,
                    ..Node::default()
                };
                for attr in e.attributes() {
                    let attr = attr
                        .map_err(|err| malformed(text, offset, format!("bad attribute: {err}")))?;
                    let key = attr.key.into_inner();
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        continue;
                    }
                    let (ans, alocal) = reader.resolver().resolve_attribute(attr.key);
                    let aname =
                        clark(&ans, alocal.into_inner()).map_err(|d| malformed(text, offset, d))?;
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| malformed(text, offset, format!("attribute {key}: {err}")))?
                        .into_owned();
                    node.attrs.push(Attr {
                        name: aname,
                        value,
                        visited: Cell::new(false),
                    });
                }
                if is_empty {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| malformed(text, offset, "an end tag without its start"))?;
                attach(&mut stack, &mut root, node);
            }
            Event::Text(t) => push_text(
                &mut stack,
                &t.xml_content(quick_xml::XmlVersion::Implicit1_0),
            ),
            Event::CData(c) => push_text(&mut stack, &c.into_inner()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r.into_inner();
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                malformed(
                                    text,
                                    offset,
                                    format!(
                                        "entity &{name}; is not accepted (only the five XML ones)"
                                    ),
                                )
                            })?
                    }
                    Err(e) => {
                        return Err(malformed(
                            text,
                            offset,
                            format!("bad character reference: {e}"),
                        ));
                    }
                };
                push_text(&mut stack, &resolved);
            }
            Event::DocType(_) => {
                return Err(malformed(
                    text,
                    offset,
                    "a DTD is not accepted (no DOCTYPE)",
                ));
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(malformed(
            text,
            text.len(),
            "the document ends inside an element",
        ));
    }
    let mut root = root.ok_or_else(|| malformed(text, 0, "the document has no root element"))?;
    trim_texts(&mut root);
    Ok(root)
}

fn push_text(stack: &mut [Node], s: &str) {
    if let Some(top) = stack.last_mut() {
        top.text.get_or_insert_with(String::new).push_str(s);
    }
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

/// Whitespace around element text is layout, not content.
fn trim_texts(node: &mut Node) {
    if let Some(t) = &mut node.text {
        let trimmed = t.trim();
        if trimmed.is_empty() {
            node.text = None;
        } else if trimmed.len() != t.len() {
            *t = trimmed.to_owned();
        }
    }
    node.children.iter_mut().for_each(trim_texts);
}

/// The root element's Clark name, found without parsing the whole document.
pub fn xml_root_name(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(64 * 1024))?).ok()?;
    let mut reader = NsReader::from_str(text);
    loop {
        match reader.read_resolved_event().ok()? {
            (ns, Event::Start(e) | Event::Empty(e)) => {
                return clark(&ns, e.local_name().into_inner()).ok();
            }
            (_, Event::Eof) => return None,
            _ => {}
        }
    }
}

/// A JSON value as a tree.
pub fn from_json(value: &Value, name: &str) -> Node {
    let mut node = Node::new(name);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Array(items) => {
                        for item in items {
                            let mut child = from_json(item, k);
                            child.repeated = true;
                            node.children.push(child);
                        }
                    }
                    other => node.children.push(from_json(other, k)),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let mut child = from_json(item, "item");
                child.repeated = true;
                node.children.push(child);
            }
        }
        Value::Null => {}
        Value::String(s) => node.text = Some(s.clone()),
        Value::Number(n) => {
            node.text = Some(n.to_string());
            node.scalar = Some(Scalar::Number);
        }
        Value::Bool(b) => {
            node.text = Some(b.to_string());
            node.scalar = Some(Scalar::Bool);
        }
    }
    node
}

pub fn parse_json(bytes: &[u8]) -> Result<Node, DocumentError> {
    Ok(from_json(&json_value(bytes)?, ""))
}

/// The JSON value of a document, or where it is not well-formed.
pub fn json_value(bytes: &[u8]) -> Result<Value, DocumentError> {
    serde_json::from_slice(bytes)
        .map_err(|e| DocumentError::malformed(Located::json_syntax(bytes, &e)))
}

/// Marks a whole subtree as read (kept as it is, not reported unmapped).
pub fn mark_read(node: &Node) {
    node.visited.set(true);
    for a in &node.attrs {
        a.visited.set(true);
    }
    for c in &node.children {
        mark_read(c);
    }
}

/// A tree as JSON: repeated children become arrays, scalars keep their type.
pub fn to_json(node: &Node) -> Value {
    if node.children.is_empty() {
        return match (&node.text, node.scalar) {
            (None, _) => Value::Null,
            (Some(t), Some(Scalar::Number)) => t
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(t.clone())),
            (Some(t), Some(Scalar::Bool)) => Value::Bool(t == "true"),
            (Some(t), _) => Value::String(t.clone()),
        };
    }
    let mut map = serde_json::Map::new();
    for child in &node.children {
        let value = to_json(child);
        if child.repeated {
            match map
                .entry(child.name.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(value),
                slot => *slot = Value::Array(vec![value]),
            }
        } else {
            map.insert(child.name.clone(), value);
        }
    }
    Value::Object(map)
}

/// Writes a tree as XML, with `prefixes` (namespace → prefix; "" for the default one)
/// declared on the root.
pub fn to_xml(root: &Node, prefixes: &[(String, String)]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_element(root, prefixes, true, 0, &mut out);
    out.push('\n');
    out
}

fn qualified(name: &str, prefixes: &[(String, String)]) -> String {
    match name.strip_prefix('{').and_then(|rest| rest.split_once('}')) {
        Some((ns, local)) => match prefixes.iter().find(|(n, _)| n == ns) {
            Some((_, p)) if p.is_empty() => local.to_owned(),
            Some((_, p)) => format!("{p}:{local}"),
            None => local.to_owned(),
        },
        None => name.to_owned(),
    }
}

fn write_element(
    node: &Node,
    prefixes: &[(String, String)],
    root: bool,
    depth: usize,
    out: &mut String,
) {
    use quick_xml::escape::escape;
    let indent = "  ".repeat(depth);
    let tag = qualified(&node.name, prefixes);
    out.push_str(&indent);
    out.push('<');
    out.push_str(&tag);
    if root {
        for (ns, prefix) in prefixes {
            if prefix.is_empty() {
                out.push_str(&format!(" xmlns=\"{}\"", escape(ns)));
            } else {
                out.push_str(&format!(" xmlns:{prefix}=\"{}\"", escape(ns)));
            }
        }
    }
    for attr in &node.attrs {
        out.push_str(&format!(
            " {}=\"{}\"",
            qualified(&attr.name, prefixes),
            escape(&attr.value)
        ));
    }
    match (&node.text, node.children.is_empty()) {
        (None, true) => out.push_str("/>"),
        (Some(text), true) => {
            out.push('>');
            out.push_str(&escape(text));
            out.push_str(&format!("</{tag}>"));
        }
        (text, false) => {
            out.push('>');
            if let Some(text) = text {
                out.push_str(&escape(text));
            }
            for child in &node.children {
                out.push('\n');
                write_element(child, prefixes, false, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&indent);
            out.push_str(&format!("</{tag}>"));
        }
    }
}
