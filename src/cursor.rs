//! The opaque cursors of paged lists: a page's `next`, given back as the next request's
//! `after`. A cursor holds the sort key of the last item shown; clients must not read it.

/// Longest cursor accepted, in characters.
pub const MAX_CURSOR_CHARS: usize = 1_024;

pub fn encode(keys: &[String]) -> String {
    hex::encode(serde_json::to_vec(keys).unwrap_or_default())
}

/// The `n` keys of a cursor, or why it is not one of ours.
pub fn decode(text: &str, n: usize) -> Result<Vec<String>, String> {
    if text.len() > MAX_CURSOR_CHARS {
        return Err(format!("longer than {MAX_CURSOR_CHARS} characters"));
    }
    let bytes = hex::decode(text).map_err(|_| "not a cursor this gateway gave".to_owned())?;
    let keys: Vec<String> =
        serde_json::from_slice(&bytes).map_err(|_| "not a cursor this gateway gave".to_owned())?;
    if keys.len() != n {
        return Err("not a cursor of this list".into());
    }
    Ok(keys)
}
