//! Per-worker credentials (see `protocol::credentials`): the live ones in memory by their token's
//! hash, so a request's check reads no row; loaded at start, changed only by the admin's add and
//! revoke and a worker's enrollment, each after its write has committed.
use protocol::credentials::CredentialKind;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// A live credential: who it is and what it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub kind: CredentialKind,
    /// A worker credential's cap on jobs held at once.
    pub max_in_flight: Option<i64>,
}

/// The live credentials by their token's SHA-256, and the live worker credentials' names.
#[derive(Debug, Default)]
pub struct Registry(RwLock<Inner>);

#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<Vec<u8>, Arc<Credential>>,
    workers: HashSet<String>,
}

impl Inner {
    fn insert(&mut self, hash: Vec<u8>, c: Credential) {
        if c.kind == CredentialKind::Worker {
            self.workers.insert(c.name.clone());
        }
        self.by_hash.insert(hash, Arc::new(c));
    }
}

impl Registry {
    pub fn load(live: Vec<(Vec<u8>, Credential)>) -> Self {
        let mut inner = Inner::default();
        for (h, c) in live {
            inner.insert(h, c);
        }
        Registry(RwLock::new(inner))
    }

    /// The credential a bearer token opens (the token hashed first: the map's lookup time says
    /// nothing about the token).
    pub fn get(&self, token: &str) -> Option<Arc<Credential>> {
        let hash = crate::secrets::hash_secret(token);
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.by_hash.get(&hash).cloned()
    }

    pub fn insert(&self, hash: Vec<u8>, c: Credential) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        inner.insert(hash, c);
    }

    /// The live worker credential whose name `worker` is (or is with a suffix), if any: a claim
    /// under the shared token may not pass for that worker. One set lookup per separator.
    pub fn owner_of(&self, worker: &str) -> Option<String> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        let cuts = worker
            .char_indices()
            .filter(|(_, ch)| protocol::credentials::SUFFIX_SEPARATORS.contains(*ch))
            .map(|(i, _)| i);
        std::iter::once(worker.len())
            .chain(cuts)
            .map(|i| &worker[..i])
            .find(|p| inner.workers.contains(*p))
            .map(str::to_string)
    }

    /// Forgets `name`: its token opens nothing from now on.
    pub fn remove(&self, name: &str) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        inner.by_hash.retain(|_, c| c.name != name);
        inner.workers.remove(name);
    }
}

/// A new credential's token: a prefix that says what it is (so a leaked one is recognisable and a
/// wrong one is told apart from the shared tokens), then 256 random bits.
pub fn new_token(kind: CredentialKind) -> String {
    let prefix = match kind {
        CredentialKind::Worker => "swk_",
        CredentialKind::Enrollment => "swe_",
    };
    format!("{prefix}{}", crate::secrets::random_hex(32))
}
