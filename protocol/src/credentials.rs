//! Per-worker credentials, as the admin API and a worker's enrollment speak them. A worker
//! credential is a worker's identity: its claims name the credential's name, or that name and a
//! suffix (`NAME-…`, for Slurm's per-allocation names). An enrollment credential mints worker
//! credentials whose names start with its own, a bounded number of times, until it expires.
use serde::{Deserialize, Serialize};

/// The longest credential name.
pub const MAX_NAME: usize = 100;
/// What may follow a credential's name in a claim's worker name.
pub const SUFFIX_SEPARATORS: &str = "-._:@/";

/// Whether `name` is a credential name: 1 to 100 bytes of letters, digits and `-._:@/`, starting
/// with a letter or digit.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || SUFFIX_SEPARATORS.contains(c))
}

/// Whether a claim's `worker` name belongs to credential `name`: the name itself, or the name and
/// a separator and anything (`node07` fits `node07` and `node07-1234_5`, not `node070`).
pub fn name_fits(name: &str, worker: &str) -> bool {
    match worker.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest.starts_with(|c: char| SUFFIX_SEPARATORS.contains(c)),
        None => false,
    }
}

/// `POST /api/workers` (admin): a new credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// The worker's name (or, for an enrollment credential, the prefix of those it mints).
    pub name: String,
    /// A worker credential's cap on jobs held at once (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_in_flight: Option<i64>,
    /// Make an enrollment credential instead, with these limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentLimits>,
}

/// How many worker credentials an enrollment credential may mint, and for how long.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollmentLimits {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000000))]
    pub uses: i64,
    /// Seconds from now until it mints no more.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31536000))]
    pub expires_in_seconds: i64,
    /// The cap on jobs in flight of each credential it mints (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<i64>,
}

/// `POST /api/workers/enroll` with an enrollment credential: the minted credential is named
/// `ENROLLMENT-SUFFIX` (the worker's own name, e.g. `node3-slurm-812_4-0`), returned in the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub suffix: String,
}

/// A credential just made: its token is shown this once (only its hash is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedCredential {
    pub name: String,
    pub kind: CredentialKind,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Worker,
    Enrollment,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Worker => "worker",
            CredentialKind::Enrollment => "enrollment",
        }
    }
}

/// One credential as `GET /api/workers` lists it (never its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialRow {
    pub name: String,
    pub kind: CredentialKind,
    pub max_in_flight: Option<i64>,
    /// Enrollment: credentials it may still mint, and until when (ms since the epoch).
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
    /// A minted worker credential: the enrollment credential that minted it.
    pub enrolled_by: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Jobs it holds now (a gang's membership counts).
    pub running: i64,
}

/// `POST /api/workers/{name}/revoke`: what the revoke ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    pub name: String,
    /// Jobs given back to pending (no attempt charged) because the credential held them.
    pub released: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_name_fits_its_credential_or_the_credential_and_a_suffix() {
        assert!(name_fits("node07", "node07"));
        assert!(name_fits("node07", "node07-1234_5"));
        assert!(name_fits("node07", "node07.gpu"));
        assert!(!name_fits("node07", "node070"));
        assert!(!name_fits("node07", "node0"));
        assert!(!name_fits("node07", "xnode07"));
        assert!(is_name("slurm-array.7"));
        assert!(!is_name("-lead"));
        assert!(!is_name("has space"));
        assert!(!is_name(&"x".repeat(101)));
    }
}
