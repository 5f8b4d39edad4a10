//! Request coalescing: identical concurrent misses wait for the one call in flight. A streaming
//! leader's bytes are fanned out live to followers that asked for the same stream; others get
//! the stored answer when the call completes.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::{Entry, ResponseCache};

/// `None` while the call runs; then the stored answer, or `None` inside if it failed.
pub(crate) type Receiver = watch::Receiver<Option<Option<Arc<Entry>>>>;

/// How a request takes part in a call for its key.
pub(crate) enum Join {
    /// Make the call; others wait on the guard.
    Leader(FlightGuard),
    /// Wait for the leader's answer, or follow its stream live.
    Follower(Receiver, Arc<Live>),
}

/// A leader's stream as it is relayed, for followers to replay from the start and then follow.
#[derive(Default)]
pub(crate) struct Live {
    state: Mutex<LiveState>,
    notify: Notify,
}

#[derive(Default)]
struct LiveState {
    /// Set when the leader's stream is committed: whether it carries usage.
    started: Option<bool>,
    chunks: Vec<Bytes>,
    closed: bool,
}

impl Live {
    /// The leader's stream is committed to its client.
    pub fn start(&self, include_usage: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.started = Some(include_usage);
        }
        self.notify.notify_waiters();
    }

    /// Bytes the leader's client received.
    pub fn push(&self, b: Bytes) {
        if let Ok(mut s) = self.state.lock() {
            if !s.closed {
                s.chunks.push(b);
            }
        }
        self.notify.notify_waiters();
    }

    /// The leader's stream ended (or never started).
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.notify.notify_waiters();
    }

    /// Resolves once the leader's stream is committed, with its `include_usage`; pends
    /// forever when it never is (the flight's completion answers instead).
    pub async fn started(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(iu) = self.state.lock().ok().and_then(|s| s.started) {
                return iu;
            }
            notified.await;
        }
    }

    /// Everything pushed so far, then each push as it comes, until closed.
    pub fn follow(self: Arc<Self>) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold((self, 0usize), |(live, i)| async move {
            loop {
                // Some(Some(b)): the next bytes; Some(None): the end; None: wait for more.
                let step: Option<Option<Bytes>> = {
                    let notified = live.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let now = live.state.lock().ok().map(|s| match s.chunks.get(i) {
                        Some(b) => Some(Some(b.clone())),
                        None if s.closed => Some(None),
                        None => None,
                    });
                    match now {
                        None => Some(None),
                        Some(Some(next)) => Some(next),
                        Some(None) => {
                            notified.await;
                            None
                        }
                    }
                };
                match step {
                    Some(Some(b)) => return Some((Ok(b), (live, i + 1))),
                    Some(None) => return None,
                    None => continue,
                }
            }
        })
    }
}

/// Held by the request making the call. Completing (or dropping, on failure or cancellation)
/// releases the waiting requests and forgets the flight.
pub(crate) struct FlightGuard {
    cache: Arc<ResponseCache>,
    key: String,
    tx: watch::Sender<Option<Option<Arc<Entry>>>>,
    live: Arc<Live>,
    done: bool,
}

impl FlightGuard {
    /// Hands the answer (or `None`: go to the provider yourselves) to the waiting requests.
    pub fn complete(mut self, entry: Option<Arc<Entry>>) {
        self.finish(entry);
    }

    /// Where a streaming leader relays its bytes for live followers.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    fn finish(&mut self, entry: Option<Arc<Entry>>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Ok(mut flights) = self.cache.flights.lock() {
            flights.remove(&self.key);
        }
        self.live.close();
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
            live: Arc::default(),
            done: true,
        });
    };
    if let Some((rx, live)) = flights.get(key) {
        return Join::Follower(rx.clone(), live.clone());
    }
    let (tx, rx) = watch::channel(None);
    let live = Arc::new(Live::default());
    flights.insert(key.to_owned(), (rx, live.clone()));
    Join::Leader(FlightGuard {
        cache: cache.clone(),
        key: key.to_owned(),
        tx,
        live,
        done: false,
    })
}
