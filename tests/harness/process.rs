//! The built `poolgate` binary as a child process: [`Proc`] reads its output
//! as it comes, [`file_setup`] writes the config it starts from.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fixture::{server_toml, write_file, FIXTURE_POOL_ID};

/// Writes `pool.json` (raw bytes, if given) and `poolgate.toml` (file source,
/// relative pool path, ports 0, `extra` appended) into `dir`; returns the config path.
pub fn file_setup(dir: &Path, pool: Option<&[u8]>, upstream: &str, extra: &str) -> PathBuf {
    if let Some(p) = pool {
        std::fs::write(dir.join("pool.json"), p).unwrap();
    }
    let cfg = format!(
        r#"{head}
[policy]
source = "file"

[policy.file]
path = "pool.json"
{extra}"#,
        head = server_toml(upstream, "15s", "")
    );
    write_file(dir, "poolgate.toml", &cfg)
}

/// Writes `poolgate.toml` into `dir`: the `authing` source at `api`
/// (fixture pool id, 5 s timeout), debug logs; returns its path.
pub fn authing_setup(dir: &Path, api: SocketAddr, upstream: SocketAddr) -> PathBuf {
    let cfg = format!(
        r#"{head}
[policy]
source = "authing"
refresh_interval = "60s"

[policy.authing]
api_base = "http://{api}"
user_pool_id = "{FIXTURE_POOL_ID}"
timeout = "5s"

[log]
level = "debug"
"#,
        head = server_toml(&upstream.to_string(), "15s", "")
    );
    write_file(dir, "poolgate.toml", &cfg)
}

/// Environment variables that would change what the binary reads.
const POOLGATE_ENV: [&str; 11] = [
    "POOLGATE_CONFIG",
    "POOLGATE_LISTEN",
    "POOLGATE_ADMIN_LISTEN",
    "POOLGATE_UPSTREAM_URL",
    "POOLGATE_LOG_FORMAT",
    "POOLGATE_POOL_FILE",
    "POOLGATE_AUTHING_API_BASE",
    "POOLGATE_AUTHING_USER_POOL_ID",
    "POOLGATE_AUTHING_SECRET",
    "RUST_LOG",
    "NO_COLOR",
];

/// A run of the `poolgate` binary whose stdout and stderr are read into
/// memory as they come (so the pipes never fill); killed if dropped running.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `poolgate args...` with a clean environment plus `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolgate"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in POOLGATE_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the poolgate binary starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        Proc {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The first stderr line so far that contains `needle`; fails the test,
    /// showing all of stderr, when there is none.
    pub fn stderr_line(&self, needle: &str) -> String {
        let all = self.stderr();
        all.lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no stderr line with {needle:?}:\n{all}"))
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to this process only, by pid.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    /// Waits for the process to exit (and its output to be read); fails after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "poolgate did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The pipes close with the process; the readers finish right after.
        for r in self.readers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        self.status.unwrap()
    }

    /// Waits for a stderr line containing every one of `needles`; returns it.
    pub async fn wait_for_stderr(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "poolgate exited ({s}) before logging {needles:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "poolgate did not log {needles:?} within {limit:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the "poolgate listening" log line and returns the proxy and
    /// admin addresses it names (so configs can bind port 0).
    pub async fn listening(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self
            .wait_for_stderr(&["poolgate listening"], Duration::from_secs(30))
            .await;
        // JSON (`"proxy_addr":"127.0.0.1:1"`) or text (`proxy_addr=127.0.0.1:1`).
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let addr = |k: &str| -> SocketAddr {
            let found = match &json {
                Some(v) => v[k].as_str().map(str::to_string),
                None => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string)),
            };
            found
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        (addr("proxy_addr"), addr("admin_addr"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Runs `poolgate args...` to completion (bounded); returns exit code, stdout, stderr.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut p = Proc::spawn(args, env);
    let status = p.wait_exit(Duration::from_secs(60)).await;
    (status.code().unwrap_or(-1), p.stdout(), p.stderr())
}
