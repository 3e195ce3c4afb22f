//! The agent binary running as a child process in a network namespace: started, watched
//! through its log, stopped with SIGINT, and killed on drop if a test fails first. Each one
//! spools into its own temporary directory, never the host's /var/lib/sipnotify.

use crate::NetNs;

/// The agent binary running in a namespace; killed on drop if still running.
pub struct Agent {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    /// Reads stdout as it comes (a full pipe would stall the stdout sink); `stop` joins it.
    stdout: Option<std::thread::JoinHandle<String>>,
    /// The spool directory (`SIPNOTIFY_SPOOL_DIR`; a `--spool-dir` flag wins), removed on drop.
    _spool: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent `binary` with `args` in `ns` and waits until it is capturing.
    pub fn start(binary: &str, ns: &NetNs, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let spool = tempfile::tempdir().expect("a spool directory");
        let mut child = ns
            .command(binary)
            .args(args)
            .env("SIPNOTIFY_SPOOL_DIR", spool.path())
            .env("SIPNOTIFY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the agent");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child,
            stderr: rx,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
            _spool: spool,
        };
        agent.wait_for_log("capturing", std::time::Duration::from_secs(20));
        agent
    }

    /// The agent's process id (`ip netns exec` replaces itself with the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "agent did not log `{needle}`; stderr so far:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// The first stderr line containing `needle`, among those seen so far or arriving
    /// within 5 s.
    pub fn log_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.stderr_seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.wait_for_log(needle, std::time::Duration::from_secs(5));
        self.stderr_seen.last().cloned().unwrap_or_default()
    }

    /// Sends SIGINT and returns stdout once the agent has exited successfully.
    pub fn stop(self) -> String {
        self.stop_with_log().0
    }

    /// Sends SIGINT and returns stdout and every stderr line once the agent has exited
    /// successfully.
    pub fn stop_with_log(mut self) -> (String, Vec<String>) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let stdout = self
            .stdout
            .take()
            .expect("stop is called once")
            .join()
            .expect("the stdout reader");
        let status = self.child.wait().expect("wait for the agent");
        while let Ok(line) = self
            .stderr
            .recv_timeout(std::time::Duration::from_millis(200))
        {
            self.stderr_seen.push(line);
        }
        assert!(
            status.success(),
            "agent exited with {status}; stderr:\n{}",
            self.stderr_seen.join("\n")
        );
        (stdout, std::mem::take(&mut self.stderr_seen))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
