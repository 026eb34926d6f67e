//! Waking idle workers: LISTEN/NOTIFY, with polling as the fallback.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::{JOBS_CHANNEL, Result};

/// Why [`WakeUp::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Jobs were enqueued or released.
    Notified,
    /// The poll interval passed (retries coming due and expired leases send no notification,
    /// and notifications are lost while the listening connection is down).
    Poll,
}

/// Tells an idle worker when to try claiming again.
///
/// It listens on [`JOBS_CHANNEL`]; every wait also ends after the poll interval, so a worker
/// never sleeps longer than that even when notifications are missed.
///
/// **PgBouncer:** LISTEN needs a session of its own. Behind PgBouncer in transaction pooling
/// mode notifications do not arrive, so give [`WakeUp::listen`] a URL that reaches PostgreSQL
/// directly (or a session-pooled PgBouncer database); the claims and everything else work
/// through transaction pooling. Without a listener ([`WakeUp::polling`]) the queue still works,
/// with up to one poll interval of latency.
#[derive(Debug)]
pub struct WakeUp {
    listener: Option<PgListener>,
    poll: Duration,
}

impl WakeUp {
    /// Listens on a dedicated connection to `url`.
    pub async fn listen(url: &str, poll: Duration) -> Result<Self> {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(JOBS_CHANNEL).await?;
        Ok(Self { listener: Some(listener), poll })
    }

    /// Polling only, every `poll`.
    pub fn polling(poll: Duration) -> Self {
        Self { listener: None, poll }
    }

    /// Waits for a notification or the poll interval, whichever comes first.
    pub async fn wait(&mut self) -> Wake {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.poll).await;
            return Wake::Poll;
        };
        match tokio::time::timeout(self.poll, listener.recv()).await {
            Ok(Ok(_)) => {
                // One wake-up for however many notifications are already here.
                while listener.next_buffered().is_some() {}
                Wake::Notified
            }
            Ok(Err(error)) => {
                // The listener reconnects on the next call; poll meanwhile.
                tracing::warn!(%error, "job notifications interrupted; polling");
                tokio::time::sleep(self.poll).await;
                Wake::Poll
            }
            Err(_elapsed) => Wake::Poll,
        }
    }
}
