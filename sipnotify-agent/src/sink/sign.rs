//! Request signatures the bridge can verify (`--bridge-signing-key-file`,
//! `SIPNOTIFY_BRIDGE_SIGNING_KEY`): Stripe's webhook scheme.
//!
//! Every request carries `X-Sipnotify-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is
//! the lowercase hex HMAC-SHA256, under the shared key, of `"<t>.<body>"` with the body's
//! exact bytes. The bridge recomputes it over the raw body it received, compares in constant
//! time, and refuses a timestamp too far from its own clock, so neither a forged request nor
//! a replayed one passes. Each attempt is signed when it is sent, so a retry carries a fresh
//! timestamp. HMAC comes from `ring`, which is already the TLS provider.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use reqwest::header::{HeaderName, HeaderValue};

/// The header a signed request carries.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-sipnotify-signature");

/// The fewest bytes a signing key may have: shorter secrets can be guessed offline from one
/// captured request.
pub const MIN_KEY_BYTES: usize = 16;

/// The shared secret; its `Debug` form never shows it.
#[derive(Clone)]
pub struct SigningKey {
    secret: Vec<u8>,
    key: ring::hmac::Key,
}

impl SigningKey {
    /// The key from the text of the key file or variable (surrounding whitespace, such as a
    /// final newline, is not part of it); refused when shorter than [`MIN_KEY_BYTES`].
    pub fn new(text: &str) -> Result<Self, String> {
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the signing key has {} bytes; use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        Ok(Self { secret, key })
    }

    /// The header value for `body` sent at `unix_seconds`.
    pub fn signature(&self, unix_seconds: u64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.key);
        context.update(unix_seconds.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        let mut out = format!("t={unix_seconds},v1=");
        for byte in tag.as_ref() {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// The header for `body` signed now.
    pub(crate) fn header(&self, body: &[u8]) -> Option<HeaderValue> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        HeaderValue::from_str(&self.signature(now, body)).ok()
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

impl Eq for SigningKey {}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
        // From `printf '%s' '1700000000.{"dn":"1002"}' | openssl dgst -sha256 -hmac
        // 0123456789abcdef0123`.
        let key = SigningKey::new("0123456789abcdef0123\n").unwrap();
        let header = key.signature(1_700_000_000, br#"{"dn":"1002"}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=00f29a6473efc471e55f789cefeb49322b907c5e9dd410fc189cd2908f3d153c"
        );
        // Another second or another byte is another signature.
        assert_ne!(key.signature(1_700_000_001, br#"{"dn":"1002"}"#), header);
        assert_ne!(key.signature(1_700_000_000, br#"{"dn":"1003"}"#), header);
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        let err = SigningKey::new(" short \n").unwrap_err();
        assert!(err.contains("5 bytes"), "{err}");
        let key = SigningKey::new("a-long-enough-secret").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }
}
