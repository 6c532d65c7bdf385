//! State names and the keys backends see.

use crate::error::{Error, Result};

/// Checks a state name and returns the full key: `prefix + name`.
///
/// # Errors
///
/// [`Error::InvalidKey`] for an empty name, a name over `max_name_len` bytes, or a full key over
/// `max_key_len` bytes (the backend's limit).
pub(crate) fn full_key(
    prefix: &str,
    name: &str,
    max_name_len: usize,
    max_key_len: usize,
) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid_key(name, "a state name must not be empty"));
    }
    if name.len() > max_name_len {
        return Err(Error::invalid_key(
            name,
            format!("longer than the limit of {max_name_len} bytes"),
        ));
    }
    let full_len = prefix.len() + name.len();
    if full_len > max_key_len {
        return Err(Error::invalid_key(
            name,
            format!(
                "with the prefix the key is {full_len} bytes, over the backend limit of {max_key_len}"
            ),
        ));
    }
    let mut key = String::with_capacity(full_len);
    key.push_str(prefix);
    key.push_str(name);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_prepended() {
        assert_eq!(full_key("svc:", "a", 10, 20).ok().as_deref(), Some("svc:a"));
    }

    #[test]
    fn empty_and_long_names_are_refused() {
        assert!(matches!(
            full_key("", "", 10, 20),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            full_key("", "abcdefghijk", 10, 20),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            full_key("0123456789", "abcdefghijk", 20, 20),
            Err(Error::InvalidKey { .. })
        ));
        assert!(full_key("", "abcdefghij", 10, 10).is_ok());
    }
}
