//! The bed's child processes: started with their output in log files, stopped by PID when the bed is
//! dropped, and by a watchdog when the test process dies without dropping it (a panic in a shared bed,
//! `std::process::exit`, a signal, SIGKILL).
//!
//! The watchdog is a small `sh` whose standard input is a pipe that only this process holds (Rust opens
//! pipes close-on-exec, so no other child inherits it). Each started PID is written to the pipe; when the
//! pipe closes, because the bed was dropped or the process is gone, the watchdog sends SIGTERM then SIGKILL
//! to every PID it was told about and removes the bed's folder. No `prctl`, no polling.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use crate::{Error, Result};

const WATCHDOG: &str = r#"
trap '' INT HUP
pids=""
while read -r pid; do pids="$pids $pid"; done
if [ -n "$pids" ]; then
  kill -TERM $pids 2>/dev/null
  sleep 1
  kill -KILL $pids 2>/dev/null
fi
[ -n "$1" ] && rm -rf "$1"
exit 0
"#;

/// One started server.
#[derive(Debug)]
pub(crate) struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Owns every process the bed started and the watchdog that outlives us.
#[derive(Debug)]
pub(crate) struct Supervisor {
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    procs: Mutex<Vec<Proc>>,
}

impl Supervisor {
    /// Starts the watchdog; `cleanup_dir` is removed by it after the processes are gone (only when the
    /// process dies without dropping the bed: a normal drop leaves that to `TempDir`).
    pub fn new(cleanup_dir: Option<&Path>) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("zerospot-testbed-watchdog")
            .arg(cleanup_dir.map(|d| d.as_os_str()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(Error::io("starting the watchdog (sh)"))?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Io {
            step: "opening the watchdog's pipe".into(),
            source: std::io::Error::other("no stdin"),
        })?;
        Ok(Self {
            watchdog: Mutex::new(Some((child, stdin))),
            procs: Mutex::new(Vec::new()),
        })
    }

    /// Starts `cmd` with stdout and stderr appended to `log`, tells the watchdog its PID, and keeps it.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<u32> {
        let out = File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("opening {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        tracing::debug!(name, ?cmd, "starting");
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting {name} ({})",
            cmd.get_program().to_string_lossy()
        )))?;
        let pid = child.id();
        if let Some((_, pipe)) = lock(&self.watchdog).as_mut() {
            // If the watchdog is gone there is nothing better to do than keep the Drop path.
            let _ = writeln!(pipe, "{pid}").and_then(|()| pipe.flush());
        }
        lock(&self.procs).push(Proc {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
        });
        tracing::info!(name, pid, log = %log.display(), "started");
        Ok(pid)
    }

    /// Runs `f` on the process named `name`.
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Proc) -> T) -> Option<T> {
        lock(&self.procs).iter_mut().find(|p| p.name == name).map(f)
    }

    /// `(name, pid)` of every process started.
    pub fn pids(&self) -> Vec<(String, u32)> {
        lock(&self.procs)
            .iter()
            .map(|p| (p.name.clone(), p.pid()))
            .collect()
    }

    /// Stops the watchdog first (so it can never signal a reused PID), then kills and reaps every
    /// process, newest first.
    pub fn shutdown(&self) {
        if let Some((mut child, pipe)) = lock(&self.watchdog).take() {
            let _ = child.kill();
            drop(pipe);
            let _ = child.wait();
        }
        let mut procs = lock(&self.procs);
        while let Some(mut p) = procs.pop() {
            if p.exited().is_none() {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
            tracing::debug!(name = p.name, pid = p.pid(), "stopped");
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
