//! Request counters and latency totals per operation, rendered in the Prometheus text
//! format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Metrics {
    /// (operation, outcome) -> (count, total seconds)
    requests: Mutex<BTreeMap<(String, String), (u64, f64)>>,
}

impl Metrics {
    /// Counts one request; `outcome` is `ok` or the error's `__type`.
    pub(crate) fn record(&self, operation: &str, outcome: &str, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let slot = requests
            .entry((operation.to_string(), outcome.to_string()))
            .or_default();
        slot.0 += 1;
        slot.1 += elapsed.as_secs_f64();
    }

    pub(crate) fn render(&self) -> String {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str(
            "# HELP skiff_api_requests_total ECS API requests by operation and outcome.\n",
        );
        out.push_str("# TYPE skiff_api_requests_total counter\n");
        for ((op, outcome), (count, _)) in requests.iter() {
            let _ = writeln!(
                out,
                "skiff_api_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP skiff_api_request_seconds_total Time spent serving ECS API requests.\n",
        );
        out.push_str("# TYPE skiff_api_request_seconds_total counter\n");
        for ((op, outcome), (_, seconds)) in requests.iter() {
            let _ = writeln!(out, "skiff_api_request_seconds_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {seconds:.6}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_per_operation() {
        let m = Metrics::default();
        m.record("RunTask", "ok", Duration::from_millis(5));
        m.record("RunTask", "ok", Duration::from_millis(5));
        m.record("RunTask", "ClientException", Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains("skiff_api_requests_total{operation=\"RunTask\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("outcome=\"ClientException\"} 1"));
    }
}
