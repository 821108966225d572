//! A wrapper for secrets so that `Debug` cannot leak them, and their memory
//! is zeroed when dropped: `secrecy`'s `SecretBox` under the name and calls
//! (`Secret::new`, `expose`) the services already use.

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

/// A secret value; prints as `[redacted]`, zeroed on drop.
pub struct Secret<T: Zeroize>(SecretBox<T>);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(SecretBox::new(Box::new(value)))
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &T {
        self.0.expose_secret()
    }
}

impl<T: Zeroize> ExposeSecret<T> for Secret<T> {
    fn expose_secret(&self) -> &T {
        self.0.expose_secret()
    }
}

/// A copy is a second secret, zeroed on its own drop.
impl<T: Zeroize + Clone> Clone for Secret<T> {
    fn clone(&self) -> Self {
        Self::new(self.expose().clone())
    }
}

impl<T: Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_does_not_print_the_secret() {
        let s = Secret::new("pdk_hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "pdk_hunter2");
    }
}
