//! The `file` source: a pool-detail JSON file and an optional whitelist file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Fetched, SourceError};
use crate::policy::{PoolDetail, WhitelistEntries};

/// Reads the pool from local files; notices changes by their metadata.
pub struct FileSource {
    path: PathBuf,
    whitelist_path: Option<PathBuf>,
    seen: Option<Fingerprint>,
}

/// What a change of either file changes: size and modification time. A
/// Kubernetes ConfigMap update swaps a symlink; following it covers that too.
type Fingerprint = Vec<Option<(u64, Option<SystemTime>)>>;

impl FileSource {
    /// A source reading `path` and, if given, `whitelist_path`.
    pub fn new(path: PathBuf, whitelist_path: Option<PathBuf>) -> Self {
        FileSource {
            path,
            whitelist_path,
            seen: None,
        }
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut out = Vec::with_capacity(2);
        for p in std::iter::once(&self.path).chain(self.whitelist_path.as_ref()) {
            out.push(
                tokio::fs::metadata(p)
                    .await
                    .ok()
                    .map(|m| (m.len(), m.modified().ok())),
            );
        }
        out
    }

    /// Whether either file's metadata changed since the last fetch.
    pub async fn changed(&mut self) -> bool {
        let now = self.fingerprint().await;
        self.seen.as_ref() != Some(&now)
    }

    /// Reads and parses both files.
    pub async fn fetch(&mut self) -> Result<Fetched, SourceError> {
        // Remember the fingerprint taken before reading: a write that lands
        // during the read shows up as a change next time, and a broken file is
        // not re-read on every poll, only when it changes (or on the interval).
        self.seen = Some(self.fingerprint().await);
        let pool_bytes = read(&self.path).await?;
        let pool = PoolDetail::from_json(&pool_bytes).map_err(|e| SourceError::Parse {
            what: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let whitelist = match &self.whitelist_path {
            None => WhitelistEntries::default(),
            Some(p) => {
                let bytes = read(p).await?;
                WhitelistEntries::from_json(&bytes).map_err(|e| SourceError::Parse {
                    what: p.display().to_string(),
                    message: format!("not a whitelist file: {e}"),
                })?
            }
        };
        Ok(Fetched { pool, whitelist })
    }
}

/// Pool files are small; anything larger is a mistake, not a policy.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

async fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    let io = |e: std::io::Error| SourceError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(SourceError::Io {
            path: path.display().to_string(),
            message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    tokio::fs::read(path).await.map_err(io)
}
