//! The last-good-policy snapshot: written after every applied change, read at
//! start-up when the source cannot be reached, so a restart during an outage
//! still enforces. It holds the parsed document only (no `secret`, no
//! `jwtSecret`: the model has no field for them).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Fetched;
use crate::policy::{PoolDetail, WhitelistEntries};

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    saved_at: u64,
    source: String,
    pool: PoolDetail,
    whitelist: WhitelistEntries,
}

/// Writes the snapshot atomically (temporary file, fsync, rename).
pub fn save(path: &Path, source: &str, doc: &Fetched) -> std::io::Result<()> {
    let snap = Snapshot {
        format: FORMAT,
        saved_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source: source.to_string(),
        pool: doc.pool.clone(),
        whitelist: doc.whitelist.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&snap).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        use std::io::Write;
        // Owner-only (0600): the whitelist entries are personal data. Created
        // with that mode, so it is never readable by others, not even briefly;
        // set again in case an older temporary file was left with another.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads a snapshot; returns the document and the source it came from.
pub fn load(path: &Path) -> anyhow::Result<(Fetched, String, u64)> {
    let bytes = std::fs::read(path)?;
    let snap: Snapshot = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("corrupt snapshot {}: {e}", path.display()))?;
    if snap.format != FORMAT {
        anyhow::bail!(
            "snapshot {} has format {}, expected {FORMAT}",
            path.display(),
            snap.format
        );
    }
    Ok((
        Fetched {
            pool: snap.pool,
            whitelist: snap.whitelist,
        },
        snap.source,
        snap.saved_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        let doc = Fetched {
            pool: PoolDetail::from_json(
                br#"{"registerDisabled": true, "secret": "s", "jwtSecret": "j"}"#,
            )
            .unwrap(),
            whitelist: WhitelistEntries::default(),
        };
        save(&path, "authing", &doc).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only, got {mode:o}");
            // A leftover temporary file with a wider mode is narrowed too.
            let tmp = dir.path().join("snap.json.tmp");
            std::fs::write(&tmp, b"old").unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
            save(&path, "authing", &doc).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only, got {mode:o}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"s\"") && !text.contains("jwtSecret"));
        let (back, src, _) = load(&path).unwrap();
        assert_eq!(back, doc);
        assert_eq!(src, "authing");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
        assert!(load(&dir.path().join("missing.json")).is_err());
    }
}
