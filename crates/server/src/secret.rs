//! Secrets as newtypes: zeroized on drop, not `Copy`, not `Serialize`, redacted in `Debug`.

use zeroize::Zeroizing;

/// A secret string (LiveKit API secret, Matrix password, API-key pepper, an API key).
///
/// Its `Debug` prints `Secret(..)`; it has no `Display` and no `Serialize`, so it cannot end up
/// in a log line or a response by accident. Read it with [`Secret::dangerous_expose`].
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret. Surrounding whitespace (a trailing newline in a secret file) is removed.
    pub fn new(value: impl Into<String>) -> Self {
        let mut s: String = value.into();
        let trimmed = s.trim();
        if trimmed.len() != s.len() {
            let t = trimmed.to_owned();
            zeroize::Zeroize::zeroize(&mut s);
            s = t;
        }
        Self(Zeroizing::new(s))
    }

    /// The secret's text. Named `dangerous_*` because whatever the caller does with it is no
    /// longer protected by this type.
    pub fn dangerous_expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty (which never authenticates anything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_whitespace_trimmed() {
        let s = Secret::new("hunter2\n");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.dangerous_expose(), "hunter2");
        assert!(Secret::new("  \n").is_empty());
    }
}
