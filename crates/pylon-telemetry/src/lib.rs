//! What Pylon tells operators about itself: Prometheus metrics, OpenTelemetry traces, the log
//! writer and the run-time log level. Every other crate reports through here; none talks to an
//! exporter.

pub mod logs;
pub mod metrics;
mod series;
pub mod trace;

pub use prometheus;

pub use metrics::{status_class, Metrics, MetricsError};
pub use series::RequestSeries;
pub use trace::{SpanHandle, TraceError, Tracer};

/// Installs a log filter, or says why it cannot.
type ApplyFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Changes the log filter of the running process (installed by the binary, used by the admin API).
pub struct LogLevel {
    current: std::sync::Mutex<String>,
    apply: ApplyFilter,
}

impl LogLevel {
    /// `apply` installs a filter such as `debug` or `pylon=debug,info`, or says why it cannot.
    pub fn new(
        initial: &str,
        apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> LogLevel {
        LogLevel {
            current: std::sync::Mutex::new(initial.to_owned()),
            apply: Box::new(apply),
        }
    }

    /// The filter in force.
    pub fn get(&self) -> String {
        self.current.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Replaces the filter; the old one stays when `filter` is invalid.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        (self.apply)(filter)?;
        if let Ok(mut g) = self.current.lock() {
            *g = filter.to_owned();
        }
        Ok(())
    }
}
