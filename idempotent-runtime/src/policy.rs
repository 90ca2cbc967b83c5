//! Which handler responses are stored (and replayed) and which release the key.
//!
//! By default only `2xx` responses are stored: anything else releases the claim so that
//! a retry runs the handler again. An endpoint can widen that with `store = "2xx,4xx"`
//! to keep its deterministic client errors too. `408` and `429` mean "try again later"
//! and `5xx` means the server failed, so none of them is stored by a class; name them
//! one by one (`store = "2xx,503"`) or as `5xx` to store them anyway.

/// The set of statuses an endpoint stores.
///
/// ```
/// use idempotent_runtime::policy::StatusPolicy;
///
/// let policy = StatusPolicy::DEFAULT;
/// assert!(policy.stores(201));
/// assert!(!policy.stores(400));
///
/// let policy = StatusPolicy::classes(&[2, 4]);
/// assert!(policy.stores(404));
/// assert!(!policy.stores(429), "429 is never stored by a class");
///
/// // Said explicitly: every server error, and 429 by its code.
/// let policy = StatusPolicy::classes(&[2, 5]).with_codes(&[429]);
/// assert!(policy.stores(503));
/// assert!(policy.stores(429));
/// assert!(!policy.stores(408));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPolicy {
    classes: u8,
    codes: &'static [u16],
}

impl StatusPolicy {
    /// `2xx` only.
    pub const DEFAULT: Self = Self {
        classes: 1 << 2,
        codes: &[],
    };

    /// Statuses whose first digit is in `classes` (`2` for `2xx`).
    pub const fn classes(classes: &[u8]) -> Self {
        let mut bits = 0u8;
        let mut i = 0;
        while i < classes.len() {
            if classes[i] >= 1 && classes[i] <= 5 {
                bits |= 1 << classes[i];
            }
            i += 1;
        }
        Self {
            classes: bits,
            codes: &[],
        }
    }

    /// Also store these exact statuses.
    pub const fn with_codes(self, codes: &'static [u16]) -> Self {
        Self {
            classes: self.classes,
            codes,
        }
    }

    /// Whether a response with `status` is stored.
    pub fn stores(&self, status: u16) -> bool {
        if self.codes.contains(&status) {
            return true;
        }
        let class = status / 100;
        let in_class = (1..=5).contains(&class) && self.classes & (1 << class) != 0;
        // Retry-later answers are only stored when named one by one.
        in_class && status != 408 && status != 429
    }
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}
