//! Request coalescing: identical concurrent misses wait for the one call in flight.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Entry, ResponseCache};

/// `None` while the call runs; then the stored answer, or `None` inside if it failed.
pub(crate) type Receiver = watch::Receiver<Option<Option<Arc<Entry>>>>;

/// How a request takes part in a call for its key.
pub(crate) enum Join {
    /// Make the call; others wait on the guard.
    Leader(FlightGuard),
    /// Wait for the leader's answer.
    Follower(Receiver),
}

/// Held by the request making the call. Completing (or dropping, on failure or cancellation)
/// releases the waiting requests and forgets the flight.
pub(crate) struct FlightGuard {
    cache: Arc<ResponseCache>,
    key: String,
    tx: watch::Sender<Option<Option<Arc<Entry>>>>,
    done: bool,
}

impl FlightGuard {
    /// Hands the answer (or `None`: go to the provider yourselves) to the waiting requests.
    pub fn complete(mut self, entry: Option<Arc<Entry>>) {
        self.finish(entry);
    }

    fn finish(&mut self, entry: Option<Arc<Entry>>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Ok(mut flights) = self.cache.flights.lock() {
            flights.remove(&self.key);
        }
        let _ = self.tx.send(Some(entry));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(None);
    }
}

pub(super) fn join(cache: &Arc<ResponseCache>, key: &str) -> Join {
    let Ok(mut flights) = cache.flights.lock() else {
        // A poisoned map only costs coalescing: call the provider.
        let (tx, _) = watch::channel(None);
        return Join::Leader(FlightGuard {
            cache: cache.clone(),
            key: key.to_owned(),
            tx,
            done: true,
        });
    };
    if let Some(rx) = flights.get(key) {
        return Join::Follower(rx.clone());
    }
    let (tx, rx) = watch::channel(None);
    flights.insert(key.to_owned(), rx);
    Join::Leader(FlightGuard {
        cache: cache.clone(),
        key: key.to_owned(),
        tx,
        done: false,
    })
}
