//! Secrets and their stored form: lease secrets, tokens and per-worker credentials are random, kept
//! only as SHA-256 hashes (a copy of the database hands out nothing), and compared in constant time.
//! Below the domain: `lifecycle` hashes lease secrets and `http::auth` compares tokens with these.

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A secret's stored form: a copy of the database does not hand out leases.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `secret` hashes to `stored`, compared in constant time (nothing stored or given: no).
pub fn secret_matches(stored: Option<&[u8]>, secret: Option<&str>) -> bool {
    match (stored, secret) {
        (Some(stored), Some(secret)) => constant_time_eq(&hash_secret(secret), stored),
        _ => false,
    }
}

/// `bytes` random bytes from the thread's CSPRNG as hex digits: generated tokens and session ids
/// (16 bytes), lease secrets (32).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
