//! Reading the agent's Prometheus text (`/metrics`): one sample by name and labels, every
//! sample of a name, or their sum.

/// The value of the Prometheus sample `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .find(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value)
}

/// The samples of `name`, as (labels, value); the labels are `{…}` or empty.
pub fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
}

/// The samples of `name`, summed over their labels.
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).fold(0.0, |total, (_, v)| total + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE sipnotify_records_total counter\n\
sipnotify_records_total 12\n\
sipnotify_records_total_extra 99\n\
sipnotify_kernel_packets_total{iface=\"veth1\",outcome=\"captured\"} 5\n\
sipnotify_kernel_packets_total{iface=\"veth1\",outcome=\"other_port\"} 7\n";

    #[test]
    fn samples_are_found_by_name_and_labels() {
        assert_eq!(metric(TEXT, "sipnotify_records_total", &[]), Some(12.0));
        assert_eq!(
            metric(
                TEXT,
                "sipnotify_kernel_packets_total",
                &[("outcome", "other_port")]
            ),
            Some(7.0)
        );
        assert_eq!(metric(TEXT, "sipnotify_missing", &[]), None);
        assert_eq!(sum(TEXT, "sipnotify_kernel_packets_total"), 12.0);
    }
}
