//! File source for the model store: polls a model file's modification time and size and offers
//! every change to [`ModelStore::try_swap`]. A refused or unreadable file keeps the model in
//! service; the same bad content is refused only once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::runtime::ModelError;
use crate::store::{ModelStore, SwapOutcome};

/// Default poll interval of [`watch_file`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(1000);

/// What the file watcher reports after each change it acted on (for tests and status pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A new model is in service.
    Swapped { version: String },
    /// The file changed but holds the model in service.
    Unchanged,
    /// The file was refused (reason label, error text).
    Refused { reason: &'static str, error: String },
}

type Stamp = Option<(SystemTime, u64)>;

async fn stamp(path: &std::path::Path) -> Stamp {
    let m = tokio::fs::metadata(path).await.ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Polls `path` every `poll` until `shutdown` resolves. The first poll offers the file as it is
/// (a no-op if it is the model in service). Each outcome is also sent on `events` if given.
pub async fn watch_file(
    store: Arc<ModelStore>,
    path: PathBuf,
    poll: Duration,
    events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let origin = path.display().to_string();
    let mut last: Stamp = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(path = %origin, ?poll, "watching policy model file");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let now = stamp(&path).await;
        if now == last {
            continue;
        }
        last = now;
        if now.is_none() {
            tracing::warn!(path = %origin, "policy model file is missing; keeping the model in service");
            continue;
        }
        let event = match tokio::fs::read(&path).await {
            Err(e) => {
                let e = ModelError::Read {
                    origin: origin.clone(),
                    reason: e.to_string(),
                };
                store.refuse(&e);
                WatchEvent::Refused {
                    reason: e.reason_label(),
                    error: e.to_string(),
                }
            }
            Ok(bytes) => {
                let store = store.clone();
                let origin = origin.clone();
                // Loading optimises a graph: keep it off the async workers.
                let result =
                    tokio::task::spawn_blocking(move || store.try_swap(&bytes, &origin)).await;
                match result {
                    Ok(Ok(SwapOutcome::Swapped { version })) => WatchEvent::Swapped { version },
                    Ok(Ok(SwapOutcome::Unchanged)) => WatchEvent::Unchanged,
                    Ok(Err(e)) => WatchEvent::Refused {
                        reason: e.reason_label(),
                        error: e.to_string(),
                    },
                    Err(join) => {
                        tracing::error!(error = %join, "model validation task failed");
                        continue;
                    }
                }
            }
        };
        if let Some(tx) = &events {
            let _ = tx.send(event);
        }
    }
    tracing::info!(path = %origin, "policy model file watcher stopped");
}
