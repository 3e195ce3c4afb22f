//! CPU and memory accounting from `/proc`, for the benches: a process's or a named thread
//! group's CPU seconds, the whole machine's busy ticks, and a process's memory.

use std::time::Duration;

/// The calling thread's CPU time.
pub fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is valid, and clock_gettime only writes it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The kernel's clock tick (`_SC_CLK_TCK`), in which `/proc` counts CPU time.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime, in seconds, from the text of a `/proc/…/stat` file.
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime is field 14 and stime field 15 of the line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second()
}

/// utime + stime of process `pid` so far, in seconds; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_seconds(&stat))
}

/// CPU seconds used so far by the threads of this process whose name starts with `prefix`.
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .map(|stat| stat_cpu_seconds(&stat))
        .sum()
}

/// Busy and total CPU time of the whole machine so far, in ticks, from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A process's memory at one moment, from /proc/<pid>/status and smaps_rollup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// VmHWM: the peak resident set.
    pub peak: u64,
    /// RssAnon now: heap and stacks.
    pub anon: u64,
    /// RssFile now: the binary, libraries and the mmapped BPF ring buffer, whose data pages
    /// are mapped twice (so that records can wrap) and so counted twice in every RSS figure.
    pub file: u64,
    /// Pss now (/proc/<pid>/smaps_rollup), where those pages count once.
    pub pss: u64,
}

/// A process's CPU seconds (user + system) and memory, from /proc.
pub fn process_usage(pid: u32) -> (f64, Memory) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let bytes = |field: &str| -> u64 {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
        kib * 1024
    };
    let pss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|rollup| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let memory = Memory {
        peak: bytes("VmHWM:"),
        anon: bytes("RssAnon:"),
        file: bytes("RssFile:"),
        pss: pss_kib * 1024,
    };
    (stat_cpu_seconds(&stat), memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let ticks = clock_ticks_per_second();
        // utime 30 and stime 20 ticks, after a command name holding spaces and a ')'.
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 30 20 0 0";
        assert_eq!(stat_cpu_seconds(stat), 50.0 / ticks);
    }

    #[test]
    fn this_process_has_memory_and_the_machine_has_ticks() {
        let (_, memory) = process_usage(std::process::id());
        assert!(memory.peak > 0 && memory.anon > 0);
        let (busy, total) = machine_ticks();
        assert!(total > 0 && busy <= total);
    }
}
