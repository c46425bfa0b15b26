//! Whether the data directory can take writes: its filesystem is writable
//! and keeps at least `--min-free-bytes` free. A node whose storage cannot
//! write must not lead (its writes would fail, and a failed write stops the
//! process) nor report ready; the driver applies what this reports on every
//! tick, and it is checked again every [`STORAGE_CHECK_INTERVAL`], so the
//! node recovers on its own once space is freed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::StatVfsMountFlags;
use tokio::sync::watch;

/// How often the data directory's filesystem is checked.
pub const STORAGE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What is wrong with the storage; `None` while it can take writes.
pub type StorageHealth = Option<String>;

/// Checks `data_dir`'s filesystem once: `Err` says why it cannot take writes.
pub fn check(data_dir: &Path, free_bytes_min: u64) -> Result<(), String> {
    let stats = rustix::fs::statvfs(data_dir).map_err(|error| {
        format!(
            "cannot inspect the data directory's filesystem ({}): {error}",
            data_dir.display()
        )
    })?;
    if stats.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(format!(
            "the data directory's filesystem is read-only ({})",
            data_dir.display()
        ));
    }
    judge_free_bytes(
        stats.f_bavail.saturating_mul(stats.f_frsize),
        free_bytes_min,
        data_dir,
    )
}

fn judge_free_bytes(free_bytes: u64, free_bytes_min: u64, data_dir: &Path) -> Result<(), String> {
    if free_bytes < free_bytes_min {
        return Err(format!(
            "only {free_bytes} bytes free on the data directory's filesystem ({}), below --min-free-bytes {free_bytes_min}: free space or compact",
            data_dir.display()
        ));
    }
    Ok(())
}

/// Checks `data_dir` now, then every [`STORAGE_CHECK_INTERVAL`] on a task
/// that ends when every receiver is gone. Changes are logged.
pub fn watch(data_dir: PathBuf, free_bytes_min: u64) -> watch::Receiver<StorageHealth> {
    let first = check(&data_dir, free_bytes_min).err();
    if let Some(reason) = &first {
        tracing::error!(%reason, "storage cannot take writes: this node will neither lead nor report ready until it can");
    }
    let (sender, receiver) = watch::channel(first);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(STORAGE_CHECK_INTERVAL);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = sender.closed() => return,
            }
            let path = data_dir.clone();
            let Ok(health) =
                tokio::task::spawn_blocking(move || check(&path, free_bytes_min).err()).await
            else {
                return;
            };
            sender.send_if_modified(|current| {
                if *current == health {
                    return false;
                }
                match &health {
                    Some(reason) => tracing::error!(%reason, "storage cannot take writes: this node will neither lead nor report ready until it can"),
                    None => tracing::info!("storage can take writes again"),
                }
                *current = health;
                true
            });
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_free_space_is_named_with_the_limit() {
        let path = Path::new("/data");
        assert!(judge_free_bytes(100, 100, path).is_ok());
        let reason = judge_free_bytes(99, 100, path).unwrap_err();
        assert!(reason.contains("only 99 bytes free"), "{reason}");
        assert!(reason.contains("--min-free-bytes 100"), "{reason}");
    }

    #[test]
    fn a_real_directory_passes_a_zero_minimum_and_fails_an_impossible_one() {
        let directory = tempfile::tempdir().unwrap();
        assert!(check(directory.path(), 0).is_ok());
        let reason = check(directory.path(), u64::MAX).unwrap_err();
        assert!(reason.contains("below --min-free-bytes"), "{reason}");
        let missing = directory.path().join("missing");
        assert!(check(&missing, 0).unwrap_err().contains("cannot inspect"));
    }
}
