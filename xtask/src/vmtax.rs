//! `cargo xtask bench vm-tax [5.10 6.1 6.12 7]`: what each capture path costs a virtio_net
//! guest per packet of traffic it does not capture (RTP, on a PBX), in the kernel-matrix VMs.
//!
//! ```text
//! host: one matrix VM per kernel (kernels.rs: QEMU TCG, 2 vCPUs, multi-queue virtio-net)
//! VM:   `xtask vm-tax-guest` ─▶ per round, per path (no capture, XDP native, XDP generic,
//!       AF_PACKET; the order rotates each round): agent capturing on eth0 ─▶ "ready"
//! host: 200-byte RTP-like UDP to an unwatched port at a fixed rate: a warm-up second, then
//!       the window, then end markers
//! VM:   /proc/stat busy jiffies (all CPUs: total − idle − iowait) from the first datagram of
//!       the window to the first end marker, and the datagrams its socket received ─▶ "result"
//! ```
//!
//! The agent process's own CPU in the window (`/proc/PID/stat`) is shown apart: the part of
//! the cost that is not the kernel's receive path (its reader and timers under TCG).
//! The guest's busy time covers the whole receive path of every datagram (virtio_net, the
//! capture path, UDP, the socket read) whatever the kernel's IRQ time accounting; the tax of
//! a path is its cost per datagram minus the no-capture cost of the same round, median over
//! the rounds. A guest that cannot keep up shows as loss (received < sent), not as cheap.
//! TCG emulates every guest instruction, so absolute figures are 10–50× a real host's; the
//! ratios between paths are what this measures. Rate, window and rounds:
//! `SIPNOTIFY_VMTAX_RATE` (datagrams/s), `SIPNOTIFY_VMTAX_SECS`, `SIPNOTIFY_VMTAX_ROUNDS`.

use std::{
    collections::HashMap,
    fs,
    io::ErrorKind,
    net::UdpSocket,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::kernels::{self, GUEST_ADDR, GuestAgent, GuestRun, Host};

/// The paths measured, by name, and the agent's `run` flags (none: no agent).
const PATHS: &[(&str, &[&str])] = &[
    ("no capture", &[]),
    ("XDP native", &["--capture", "xdp", "--xdp-mode", "native"]),
    (
        "XDP generic",
        &["--capture", "xdp", "--xdp-mode", "generic"],
    ),
    ("AF_PACKET", &["--capture", "af-packet"]),
];
/// The unwatched port the RTP-like datagrams go to (the agent watches only 5061).
const RTP_PORT: u16 = 16_384;
/// UDP payload of an RTP-like datagram: 12-byte RTP header and 160 bytes of G.711, 200
/// bytes as an IP packet.
const RTP_PAYLOAD: usize = 172;
/// What an end marker carries (a different length from the datagrams measured).
const END: &[u8] = b"sipnotify vm-tax end";
const END_MARKERS: usize = 10;
/// The RTP payload type of the window's datagrams (G.711 µ-law) and of the warm-up's (A-law):
/// the guest starts measuring at the first datagram of the window.
const PT_WINDOW: u8 = 0;
const PT_WARM_UP: u8 = 8;
/// Datagrams sent before the window: the first ones after an XDP attach may meet receive
/// buffers posted without XDP headroom, a one-off cost that is not the steady state.
const WARM_UP: Duration = Duration::from_secs(1);
/// Calibrated on this machine: the TCG guest receives 3 000/s on every path without loss at
/// about a quarter of one vCPU (1 000/s kept the busy time to 20 jiffies a window, too coarse).
/// Five short rounds rather than three long ones: the host's load moves the guest's figures
/// by up to 2× between windows, and the median of more interleaved rounds resists that.
const DEFAULT_RATE: u32 = 3_000;
const DEFAULT_SECS: u64 = 5;
const DEFAULT_ROUNDS: usize = 5;
const MARK: &str = "sipnotify-vmtax: ";
/// How long the guest waits for the first datagram, and for silence to end a window whose
/// end markers were all lost.
const FIRST_WAIT: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_secs(3);

/// The load: datagrams per second, window, rounds.
struct Load {
    rate: u32,
    window: Duration,
    rounds: usize,
}

impl Load {
    fn from_env() -> Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse()
                    .ok()
                    .with_context(|| format!("{name}=`{text}` is not a number")),
                Err(_) => Ok(default),
            }
        }
        let load = Self {
            rate: var("SIPNOTIFY_VMTAX_RATE", DEFAULT_RATE)?,
            window: Duration::from_secs(var("SIPNOTIFY_VMTAX_SECS", DEFAULT_SECS)?),
            rounds: var("SIPNOTIFY_VMTAX_ROUNDS", DEFAULT_ROUNDS)?,
        };
        ensure!(
            load.rate > 0 && !load.window.is_zero() && load.rounds > 0,
            "SIPNOTIFY_VMTAX_RATE, _SECS and _ROUNDS must be above 0"
        );
        Ok(load)
    }

    /// Datagrams of the warm-up, then of the window.
    fn counts(&self) -> (u64, u64) {
        let per = |d: Duration| (f64::from(self.rate) * d.as_secs_f64()).round() as u64;
        (per(WARM_UP), per(self.window))
    }
}

/// One measurement: a path in a round.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    /// Guest busy CPU over the window, µs (all vCPUs).
    busy_us: f64,
    /// The agent process's own CPU (user + system) within that, µs.
    agent_us: f64,
    received: u64,
    sent: u64,
}

impl Sample {
    fn per_packet_us(&self) -> f64 {
        self.busy_us / self.received.max(1) as f64
    }

    fn agent_per_packet_us(&self) -> f64 {
        self.agent_us / self.received.max(1) as f64
    }
}

/// Host side: boots each kernel in turn (one at a time: they would share the two cores) and
/// prints its table.
pub(crate) fn run(root: &Path, agent: &Path, names: &[String]) -> Result<()> {
    let kernels = kernels::select(names)?;
    let load = Load::from_env()?;
    let host = Host::prepare(root, agent)?;
    let mut trees = Vec::new();
    for kernel in &kernels {
        trees.push(kernels::fetch_kernel(&host.cache, kernel)?);
    }
    let (warm, window) = load.counts();
    println!(
        "vm-tax: 200-byte RTP-like UDP to an unwatched port of a TCG guest (2 vCPUs, \
         multi-queue virtio_net) at {}/s: {warm} to warm up, then {window} measured; guest busy \
         CPU from /proc/stat per datagram received, median of {} rounds (paths interleaved)",
        load.rate, load.rounds
    );
    let mut failed = Vec::new();
    for (kernel, tree) in kernels.iter().zip(&trees) {
        match measure(&host, kernel, tree, &load) {
            Ok((release, samples)) => print!("{}", table(&release, &samples)),
            Err(err) => {
                println!("vm-tax {}: FAILED: {err:#}", kernel.version);
                failed.push(kernel.version);
            }
        }
    }
    ensure!(
        failed.is_empty(),
        "vm-tax failed on {} (logs in {})",
        failed.join(", "),
        host.cache.join("logs").display()
    );
    Ok(())
}

/// One boot: every path in every round; the samples by path, in round order.
fn measure(
    host: &Host,
    kernel: &kernels::Kernel,
    tree: &kernels::Tree,
    load: &Load,
) -> Result<(String, Vec<Vec<Sample>>)> {
    let per_round = (WARM_UP + load.window + Duration::from_secs(30)) * PATHS.len() as u32;
    let (vm, mut console) = host.boot(
        0,
        kernel,
        tree,
        &GuestRun {
            task: "vm-tax-guest",
            params: &[("rounds", load.rounds.to_string())],
            log: format!("vm-tax-{}", kernel.version),
            timeout: Duration::from_secs(180) + per_round * load.rounds as u32,
            mark: MARK,
        },
    )?;
    let socket = vm.socket()?;
    let (warm, window) = load.counts();
    let mut release = kernel.version.to_owned();
    let mut sent = HashMap::new();
    let mut samples = vec![vec![None; load.rounds]; PATHS.len()];
    loop {
        let event = match console.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            // A guest that hung keeps the rounds it finished.
            Err(err) => {
                println!("vm-tax {}: {err:#}", kernel.version);
                break;
            }
        };
        let words: Vec<&str> = event.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", r] => release = (*r).to_owned(),
            ["ready", round, path] => {
                let n = send_train(&socket, load, warm, window)?;
                sent.insert((round.to_string(), path.to_string()), n);
            }
            ["result", round, path, busy_us, received, agent_us, ..] => {
                let key = (round.to_string(), path.to_string());
                let sample = Sample {
                    busy_us: busy_us.parse().context("bad busy time")?,
                    agent_us: agent_us.parse().context("bad agent time")?,
                    received: received.parse().context("bad count")?,
                    sent: *sent.get(&key).context("a result before its ready line")?,
                };
                let (round, path): (usize, usize) = (round.parse()?, path.parse()?);
                *samples
                    .get_mut(path)
                    .and_then(|p| p.get_mut(round))
                    .context("a result out of range")? = Some(sample);
            }
            // A window that failed (see the note of issue 22: a guest's receive stalled after
            // several XDP attach/detach cycles) leaves its round incomplete; the others count.
            ["FAIL", ..] => println!("vm-tax {}: {event}", kernel.version),
            ["exit", code] if *code != "0" => {
                bail!(
                    "the guest failed ({event}); see {}",
                    console.log_path().display()
                )
            }
            _ => {}
        }
    }
    drop(vm);
    let samples = complete_rounds(&samples);
    ensure!(
        !samples[0].is_empty(),
        "no round reported every path; see {}",
        console.log_path().display()
    );
    Ok((release, samples))
}

/// The samples of the rounds in which every path reported, by path.
fn complete_rounds(samples: &[Vec<Option<Sample>>]) -> Vec<Vec<Sample>> {
    let rounds = samples.first().map_or(0, Vec::len);
    let complete: Vec<usize> = (0..rounds)
        .filter(|&r| samples.iter().all(|path| path[r].is_some()))
        .collect();
    samples
        .iter()
        .map(|path| complete.iter().filter_map(|&r| path[r]).collect())
        .collect()
}

/// Sends the warm-up and the window, paced at `load.rate`, then the end markers; returns how
/// many datagrams of the window were sent.
fn send_train(socket: &UdpSocket, load: &Load, warm: u64, window: u64) -> Result<u64> {
    let total = warm + window;
    let started = Instant::now();
    let mut seq = 0u64;
    let mut payload = vec![0xd5u8; RTP_PAYLOAD];
    payload[..12].copy_from_slice(&[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
    let mut window_sent = 0;
    while seq < total {
        let due = ((started.elapsed().as_secs_f64() * f64::from(load.rate)) as u64).min(total);
        while seq < due {
            // RTP sequence number and timestamp; the guest tells warm-up from window by it.
            payload[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            payload[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            payload[1] = if seq < warm { PT_WARM_UP } else { PT_WINDOW };
            // A full tap queue refuses the datagram: the guest did not keep up, which shows
            // as datagrams sent but not received.
            match socket.send_to(&payload, (GUEST_ADDR, RTP_PORT)) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(err) => return Err(err).context("cannot send to the guest"),
            }
            if seq >= warm {
                window_sent += 1;
            }
            seq += 1;
        }
        thread::sleep(Duration::from_micros(500));
    }
    for _ in 0..END_MARKERS {
        thread::sleep(Duration::from_millis(20));
        socket
            .send_to(END, (GUEST_ADDR, RTP_PORT))
            .context("cannot send an end marker")?;
    }
    Ok(window_sent)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The kernel's table: per path, guest CPU per datagram, the tax over no capture in µs and
/// as a share of the no-capture cost (median of the per-round differences), received/sent.
fn table(release: &str, samples: &[Vec<Sample>]) -> String {
    let base: Vec<f64> = samples[0].iter().map(Sample::per_packet_us).collect();
    let base_median = median(&mut base.clone());
    let mut out = format!(
        "vm-tax Linux {release}\n  {:<12} {:>18} {:>24} {:>14} {:>16}   rounds (µs/datagram)\n",
        "path", "guest CPU/datagram", "over no capture", "agent process", "received/sent"
    );
    for (i, ((name, _), rounds)) in PATHS.iter().zip(samples).enumerate() {
        let costs: Vec<f64> = rounds.iter().map(Sample::per_packet_us).collect();
        let cost = median(&mut costs.clone());
        let over = if i == 0 {
            "—".to_owned()
        } else {
            let mut taxes: Vec<f64> = costs.iter().zip(&base).map(|(c, b)| c - b).collect();
            let tax = median(&mut taxes);
            format!("{tax:+.1} µs ({:+.1} %)", 100.0 * tax / base_median)
        };
        let received: u64 = rounds.iter().map(|s| s.received).sum();
        let sent: u64 = rounds.iter().map(|s| s.sent).sum();
        let each: Vec<String> = costs.iter().map(|c| format!("{c:.1}")).collect();
        let agent = median(
            &mut rounds
                .iter()
                .map(Sample::agent_per_packet_us)
                .collect::<Vec<_>>(),
        );
        out.push_str(&format!(
            "  {name:<12} {:>15.1} µs {over:>24} {:>11.1} µs {:>16}   {}\n",
            cost,
            agent,
            format!("{received}/{sent}"),
            each.join(" / ")
        ));
    }
    out
}

/// Guest side, inside the VM: every round, every path, one `ready` and one `result` line each.
pub(crate) fn guest(agent: &Path) -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("{MARK}kernel {}", release.trim());
    let rounds: usize = kernels::cmdline_param("rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let socket = UdpSocket::bind(("0.0.0.0", RTP_PORT)).context("cannot bind the guest socket")?;
    for round in 0..rounds {
        // Interleaved: each round starts with another path, so no path always runs first
        // after the boot or last before the end.
        for step in 0..PATHS.len() {
            let path = (step + round) % PATHS.len();
            match guest_window(agent, &socket, round, path) {
                Ok(result) => println!("{MARK}result {round} {path} {result}"),
                Err(err) => println!("{MARK}FAIL {} round {round}: {err:#}", PATHS[path].0),
            }
        }
    }
    println!("{MARK}done");
    Ok(())
}

/// One path in one round: `busy_us received agent_us elapsed_ms` (the agent process's own
/// CPU inside the busy time).
fn guest_window(agent: &Path, socket: &UdpSocket, round: usize, path: usize) -> Result<String> {
    let (name, flags) = PATHS[path];
    let running = if flags.is_empty() {
        None
    } else {
        let running = GuestAgent::start(agent, flags)?;
        let (mode, _) = running.attached_as(flags);
        ensure!(
            flags.contains(&mode),
            "{name}: the agent attached as {mode}: {}",
            running.attached_line()
        );
        Some(running)
    };
    let pid = running.as_ref().map(GuestAgent::pid);
    // Let the attach settle (virtio_net refills its rings) before the host starts sending.
    thread::sleep(Duration::from_secs(1));
    drain(socket)?;
    println!("{MARK}ready {round} {path}");

    let mut buf = [0u8; 2048];
    let mut warm_up = true;
    let mut received = 0u64;
    let mut start: Option<(u64, u64, Instant)> = None;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let first_deadline = Instant::now() + FIRST_WAIT;
    let mut last = Instant::now();
    let end = loop {
        match socket.recv(&mut buf) {
            Ok(n) if n == RTP_PAYLOAD => {
                last = Instant::now();
                // The window begins with the first datagram past the warm-up.
                if warm_up && buf[1] == PT_WINDOW {
                    warm_up = false;
                    start = Some((busy_us()?, agent_us(pid)?, Instant::now()));
                }
                if !warm_up {
                    received += 1;
                }
            }
            Ok(_) => {
                // An end marker: the window is over.
                break (busy_us()?, agent_us(pid)?, Instant::now());
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let now = Instant::now();
                if start.is_none() && now > first_deadline {
                    bail!("no datagram in {} s", FIRST_WAIT.as_secs());
                }
                if start.is_some() && now.duration_since(last) > QUIET {
                    break (busy_us()?, agent_us(pid)?, now);
                }
            }
            Err(err) => return Err(err).context("cannot receive"),
        }
    };
    if let Some(running) = running {
        running.stop();
    }
    let (busy0, agent0, t0) = start.context("no datagram of the window arrived")?;
    let (busy1, agent1, t1) = end;
    Ok(format!(
        "{} {received} {} {}",
        busy1.saturating_sub(busy0),
        agent1.saturating_sub(agent0),
        t1.duration_since(t0).as_millis()
    ))
}

/// Reads whatever is queued on the socket (end markers of the last window, stragglers).
fn drain(socket: &UdpSocket) -> Result<()> {
    let mut buf = [0u8; 2048];
    socket.set_nonblocking(true)?;
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false)?;
    Ok(())
}

/// The CPU time (utime + stime) of process `pid`, µs; 0 without one.
fn agent_us(pid: Option<u32>) -> Result<u64> {
    let Some(pid) = pid else { return Ok(0) };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Ok(ticks * 1_000_000 / clock_ticks())
}

/// `USER_HZ`, the unit of `/proc/stat` and `/proc/PID/stat`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// Busy CPU time of all CPUs since boot, µs: `/proc/stat`'s first line, total minus idle
/// minus iowait (guest and guest_nice are inside user and nice already).
fn busy_us() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let ticks = busy_ticks(&stat).context("/proc/stat has no cpu line")?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

/// Busy ticks from `/proc/stat`: user nice system idle iowait irq softirq steal, less idle and
/// iowait.
fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields.try_into().ok()?;
    let _ = (idle, iowait);
    Some(user + nice + system + irq + softirq + steal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        assert_eq!(busy_ticks(stat), Some(100 + 5 + 50 + 3 + 7));
        assert_eq!(busy_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn only_rounds_where_every_path_reported_count() {
        let s = Sample {
            busy_us: 1.0,
            agent_us: 0.0,
            received: 1,
            sent: 1,
        };
        let samples = vec![
            vec![Some(s), Some(s), Some(s)],
            vec![Some(s), None, Some(s)],
        ];
        let complete = complete_rounds(&samples);
        assert_eq!(complete.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_table_gives_the_tax_over_the_same_rounds_baseline() {
        let s = |busy_us: f64| Sample {
            busy_us,
            agent_us: 0.0,
            received: 100,
            sent: 100,
        };
        let samples = vec![
            vec![s(10_000.0), s(12_000.0), s(11_000.0)],
            vec![s(11_000.0), s(13_000.0), s(12_000.0)],
            vec![s(20_000.0), s(22_000.0), s(21_000.0)],
            vec![s(10_500.0), s(12_500.0), s(11_500.0)],
        ];
        let table = table("6.1.0-test", &samples);
        // 100, 120, 110 µs a datagram without capture: the tax is taken round by round.
        assert!(table.contains("+10.0 µs (+9.1 %)"), "{table}");
        assert!(table.contains("+100.0 µs (+90.9 %)"), "{table}");
        assert!(table.contains("+5.0 µs (+4.5 %)"), "{table}");
        assert!(table.contains("300/300"), "{table}");
    }
}
