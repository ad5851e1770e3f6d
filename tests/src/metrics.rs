//! Prometheus text exposition, parsed just enough to sum samples by labels.

use std::fmt;

/// `remora_tcp_connections_opened_total{direction,protocol}`
pub const OPENED: &str = "remora_tcp_connections_opened_total";
/// `remora_tcp_connections_closed_total{direction,protocol}`
pub const CLOSED: &str = "remora_tcp_connections_closed_total";
/// `remora_tcp_connections_active{direction,protocol}`
pub const ACTIVE: &str = "remora_tcp_connections_active";
/// `remora_tcp_received_bytes_total{direction,protocol}`: read from the downstream client.
pub const RECEIVED_BYTES: &str = "remora_tcp_received_bytes_total";
/// `remora_tcp_sent_bytes_total{direction,protocol}`: written to the downstream client.
pub const SENT_BYTES: &str = "remora_tcp_sent_bytes_total";
/// `remora_tcp_errors_total{direction,reason}`
pub const ERRORS: &str = "remora_tcp_errors_total";
/// `remora_connections_refused_total{direction,reason}`: reset at accept (`limit`).
pub const REFUSED: &str = "remora_connections_refused_total";
/// `remora_detect_timeouts_total{direction}`
pub const DETECT_TIMEOUTS: &str = "remora_detect_timeouts_total";
/// Label selector for outbound samples.
pub const OUTBOUND: &[(&str, &str)] = &[("direction", "outbound")];
/// Label selector for inbound samples.
pub const INBOUND: &[(&str, &str)] = &[("direction", "inbound")];

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, e.g. `remora_tcp_connections_opened_total`.
    pub name: String,
    /// Label pairs in the order they appeared.
    pub labels: Vec<(String, String)>,
    /// The sample value.
    pub value: f64,
}

/// A scrape of a proxy's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text format; comment and malformed lines are skipped.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The sum of every sample named `name` whose labels include all of
    /// `labels` (0 when none match, as for a counter never incremented).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// How much `name{labels}` grew from `before` to this scrape.
    pub fn since(&self, before: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels) - before.get(name, labels)
    }

    /// Every parsed sample.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

impl fmt::Display for Metrics {
    /// The `remora_*` samples, one per line, for failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self
            .samples
            .iter()
            .filter(|s| s.name.starts_with("remora_"))
        {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            writeln!(f, "{}{{{}}} {}", s.name, labels.join(","), s.value)?;
        }
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    other => value.push(other),
                }
            };
            rest = &rest[end + 1..];
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_matching_labels() {
        let m = Metrics::parse(
            "# HELP remora_tcp_connections_opened_total Connections.\n\
             # TYPE remora_tcp_connections_opened_total counter\n\
             remora_tcp_connections_opened_total{direction=\"outbound\",protocol=\"opaque\"} 3\n\
             remora_tcp_connections_opened_total{direction=\"outbound\",protocol=\"http1\"} 2\n\
             remora_tcp_connections_opened_total{direction=\"inbound\",protocol=\"opaque\"} 5\n\
             remora_detect_timeouts_total{direction=\"in\\\"x\"} 1.5e0 1700000000\n\
             process_open_fds 7\n",
        );
        let opened = "remora_tcp_connections_opened_total";
        assert_eq!(m.get(opened, &[("direction", "outbound")]), 5.0);
        assert_eq!(
            m.get(opened, &[("direction", "outbound"), ("protocol", "http1")]),
            2.0
        );
        assert_eq!(m.get(opened, &[]), 10.0);
        assert_eq!(m.get(opened, &[("direction", "sideways")]), 0.0);
        assert_eq!(
            m.get("remora_detect_timeouts_total", &[("direction", "in\"x")]),
            1.5
        );
        assert_eq!(m.get("process_open_fds", &[]), 7.0);
    }
}
