//! Which data-plane worker thread this is. Each worker runs its own single-threaded runtime and
//! uses only the upstream clients of its own index, so a request, its upstream connection and
//! the tasks they spawn stay on one thread.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker index; 0 on any thread that is not a data-plane worker.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Marks this thread as worker `i`.
pub(crate) fn set_index(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// The number of workers for a configured count (0: one per available core, which honours
/// cgroup CPU quotas).
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// One value per worker, picked by the calling thread's index.
pub(crate) struct PerWorker<T>(Vec<T>);

impl<T> PerWorker<T> {
    /// `n` values (at least one) made by `make`.
    pub fn new(n: usize, make: impl FnMut() -> T) -> Self {
        PerWorker(std::iter::repeat_with(make).take(n.max(1)).collect())
    }

    /// The calling worker's value.
    pub fn get(&self) -> &T {
        &self.0[index() % self.0.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_sees_its_own_value() {
        let mut next = 0;
        let values = PerWorker::new(3, || {
            next += 1;
            next
        });
        assert_eq!(
            *values.get(),
            1,
            "a thread that is no worker uses the first"
        );
        std::thread::scope(|s| {
            for i in 0..5 {
                let values = &values;
                s.spawn(move || {
                    set_index(i);
                    assert_eq!(*values.get(), i % 3 + 1);
                });
            }
        });
    }

    #[test]
    fn a_configured_count_is_kept_and_zero_means_every_core() {
        assert_eq!(count(3), 3);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(count(0), cores);
    }
}
