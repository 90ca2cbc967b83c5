//! Which handler responses are stored (and replayed) and which release the key.
//!
//! By default only `2xx` responses are stored: anything else releases the claim so that
//! a retry runs the handler again. An endpoint can widen that with `store = "2xx,4xx"`
//! to keep its deterministic client errors too. Some `4xx` answers are about the
//! attempt rather than the operation, and a retry of the same request can fix them:
//! `401` and `407` (credentials refreshed), `403` (permissions granted), `408` and
//! `429` (try again later), `413` (a limit raised). `5xx` means the server failed. None
//! of these is stored by a class; name them one by one (`store = "2xx,403"`), or `5xx`
//! as a class, to store them anyway.

/// Statuses that a retry of the same request may change, stored only when named one by
/// one: credentials (`401`, `407`), permissions (`403`), timing (`408`, `429`) and
/// limits (`413`).
const NOT_BY_CLASS: [u16; 6] = [401, 403, 407, 408, 413, 429];

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
/// assert!(!policy.stores(401), "nor is 401: new credentials may follow");
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
        in_class && !NOT_BY_CLASS.contains(&status)
    }
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}
