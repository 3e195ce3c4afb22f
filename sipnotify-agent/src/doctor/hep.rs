//! The `--hep-listen` rows: each address binds (reading HEP needs no capability), or a
//! running agent already holds it, and then its metrics endpoint says what it read.

use std::{net::SocketAddr, time::Duration};

use super::Check;

/// One row per address `run --hep-listen` will use; `metrics` is where a running agent that
/// holds one would answer. Blocking (binds and a metrics request).
pub(super) fn checks(addrs: &[SocketAddr], metrics: SocketAddr) -> Vec<Check> {
    let text = agent_metrics(metrics);
    addrs
        .iter()
        .map(|&addr| {
            let bound = crate::hep::socket::bind(addr, 1 << 20).map(|_| ());
            hep_listen_check(addr, bound, text.as_deref())
        })
        .collect()
}

/// A running agent's Prometheus text, if one answers at `addr` within a second.
fn agent_metrics(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: doctor\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The HEP datagrams a running agent's metrics count, by outcome.
fn hep_outcomes(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("sipnotify_hep_packets_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let outcome = labels.split("outcome=\"").nth(1)?.split('"').next()?;
            Some((outcome.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Whether `run --hep-listen ADDR` can receive there: the address binds (and reading HEP
/// needs no capability), or a running agent already holds it, with what it read.
pub fn hep_listen_check(
    addr: std::net::SocketAddr,
    bound: std::io::Result<()>,
    metrics: Option<&str>,
) -> Check {
    let name = format!("hep on {addr}");
    match bound {
        Ok(()) => Check::ok(
            name,
            "the address can be bound; reading HEP needs no capability and no eBPF",
        ),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => match metrics {
            Some(text) if text.contains("sipnotify_hep_datagrams_total") => {
                let outcomes = hep_outcomes(text);
                let read: u64 = metrics_value(text, "sipnotify_hep_datagrams_total");
                let listed: Vec<String> =
                    outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
                let detail = format!(
                    "a running agent receives HEP here: {read} datagrams read ({})",
                    if listed.is_empty() {
                        "none yet".to_owned()
                    } else {
                        listed.join(", ")
                    }
                );
                let refused = outcomes.iter().any(|(o, n)| o == "auth_failed" && *n > 0);
                if read == 0 || refused {
                    Check::warn(
                        name,
                        detail,
                        "point the PBX's HEP at this address (Asterisk hep.conf \
                         capture_address, Kamailio siptrace duplicate_uri) with the same key \
                         as --hep-auth-key-file (README \"SIP over TLS: read it from the PBX\")",
                    )
                } else {
                    Check::ok(name, detail)
                }
            }
            _ => Check::fail(
                name,
                "the address is in use by another program",
                "pick a free port for --hep-listen, or stop what holds it (`ss -ulpn`)",
            ),
        },
        Err(err) => Check::fail(
            name,
            format!("cannot bind it: {err}"),
            "use an address of this host (`ip addr`), e.g. 127.0.0.1:9060 when the PBX runs here",
        ),
    }
}

fn metrics_value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn the_hep_row_binds_or_reads_the_running_agent() {
        let addr: std::net::SocketAddr = "127.0.0.1:9060".parse().unwrap();
        assert_eq!(hep_listen_check(addr, Ok(()), None).status, Status::Ok);
        let in_use = || Err(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert_eq!(hep_listen_check(addr, in_use(), None).status, Status::Fail);
        let running = "sipnotify_hep_datagrams_total 12\n\
            sipnotify_hep_packets_total{outcome=\"sip\"} 10\n\
            sipnotify_hep_packets_total{outcome=\"not_sip\"} 2\n\
            sipnotify_hep_packets_total{outcome=\"auth_failed\"} 0\n";
        let check = hep_listen_check(addr, in_use(), Some(running));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert_eq!(
            check.detail,
            "a running agent receives HEP here: 12 datagrams read (sip 10, not_sip 2)"
        );
        let refused = running.replace("auth_failed\"} 0", "auth_failed\"} 3");
        assert_eq!(
            hep_listen_check(addr, in_use(), Some(&refused)).status,
            Status::Warn
        );
    }
}
