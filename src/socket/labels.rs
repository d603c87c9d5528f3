//! Labels: business metadata (user id, device kind) that upstreams and admins set on a socket,
//! and the bounds that keep what an upstream can make the node hold per socket small.

use std::collections::HashMap;

/// A socket's labels: business metadata (user id, device kind) set by upstreams or admins.
pub type Labels = HashMap<String, String>;

/// Most labels one socket may carry; a `set_labels` beyond it fails. Bounds the memory an
/// upstream can make the node spend per socket.
pub const MAX_LABELS: usize = 64;
/// Longest label name or value, in bytes.
pub const MAX_LABEL_LEN: usize = 1024;

/// Checks labels against [`MAX_LABELS`] and [`MAX_LABEL_LEN`], and that no name is empty.
///
/// # Errors
/// [`LabelError`] naming what is wrong.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if let Some(k) = labels.iter().find(|(k, v)| k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN).map(|(k, _)| k) {
        return Err(LabelError::TooLong(k.chars().take(64).collect()));
    }
    if labels.keys().any(String::is_empty) {
        return Err(LabelError::EmptyName);
    }
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    Ok(())
}

/// Why labels were refused (an upstream's or an admin's input: told to them, nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A name or value over [`MAX_LABEL_LEN`] (the name, cut to 64 characters).
    #[error("label `{0}` (name or value) is longer than {MAX_LABEL_LEN} bytes")]
    TooLong(String),
    /// An empty label name.
    #[error("label names must not be empty")]
    EmptyName,
    /// More than [`MAX_LABELS`] labels on one socket.
    #[error("a socket carries at most {MAX_LABELS} labels")]
    TooMany,
}
