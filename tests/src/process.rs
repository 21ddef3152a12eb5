//! The bed's child processes: started with their output in log files, stopped by PID when the bed is
//! dropped, and by a watchdog when the test process dies without dropping it (a panic in a shared bed,
//! `std::process::exit`, a signal, SIGKILL).
//!
//! The watchdog is a small `sh` whose standard input is a pipe that only this process holds (Rust opens
//! pipes close-on-exec, so no other child inherits it). Each started PID is written to the pipe; when the
//! pipe closes, because the bed was dropped or the process is gone, the watchdog sends SIGTERM then SIGKILL
//! to every PID it was told about and removes the bed's folder. No `prctl`, no polling.
//!
//! A server can also be stopped and started again while the bed runs ([`Supervisor::stop`],
//! [`Supervisor::start_again`]): the stopped PID is struck off the watchdog's list (a line `-PID`) only
//! once the process is dead but not yet reaped, so its PID cannot have been reused, and the new PID is
//! added as any other.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

const WATCHDOG: &str = r#"
trap '' INT HUP
pids=""
while read -r pid; do
  case "$pid" in
    -*) kept=""; for p in $pids; do [ "-$p" = "$pid" ] || kept="$kept $p"; done; pids="$kept" ;;
    *) pids="$pids $pid" ;;
  esac
done
if [ -n "$pids" ]; then
  kill -TERM $pids 2>/dev/null
  sleep 1
  kill -KILL $pids 2>/dev/null
fi
[ -n "$1" ] && rm -rf "$1"
exit 0
"#;

/// How a server was started, to start it again the same way.
#[derive(Debug, Clone)]
struct Recipe {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
}

impl Recipe {
    fn of(cmd: &Command) -> Self {
        Self {
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(ToOwned::to_owned).collect(),
            envs: cmd
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
            current_dir: cmd.get_current_dir().map(ToOwned::to_owned),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd
    }
}

/// One started server.
#[derive(Debug)]
pub(crate) struct Proc {
    pub name: String,
    pub log: PathBuf,
    recipe: Recipe,
    child: Child,
}

/// A server stopped by [`Supervisor::stop`], with its place in the start order.
#[derive(Debug)]
struct Stopped {
    index: usize,
    name: String,
    log: PathBuf,
    recipe: Recipe,
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
    stopped: Mutex<Vec<Stopped>>,
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
            stopped: Mutex::new(Vec::new()),
        })
    }

    /// Starts `cmd` with stdout and stderr written to `log`, tells the watchdog its PID, and keeps it.
    pub fn spawn(&self, name: &str, cmd: Command, log: &Path) -> Result<u32> {
        let recipe = Recipe::of(&cmd);
        let out = File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
        let proc = self.launch(name, recipe, cmd, out, log)?;
        let pid = proc.pid();
        lock(&self.procs).push(proc);
        Ok(pid)
    }

    fn launch(
        &self,
        name: &str,
        recipe: Recipe,
        mut cmd: Command,
        out: File,
        log: &Path,
    ) -> Result<Proc> {
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
        self.tell_watchdog(&pid.to_string());
        tracing::info!(name, pid, log = %log.display(), "started");
        Ok(Proc {
            name: name.to_owned(),
            log: log.to_owned(),
            recipe,
            child,
        })
    }

    fn tell_watchdog(&self, line: &str) {
        if let Some((_, pipe)) = lock(&self.watchdog).as_mut() {
            // If the watchdog is gone there is nothing better to do than keep the Drop path.
            let _ = writeln!(pipe, "{line}").and_then(|()| pipe.flush());
        }
    }

    /// Stops the process named `name`: SIGTERM, then SIGKILL if it is still running after `grace`.
    /// It is struck off the watchdog's list once dead (before it is reaped, so its PID cannot have been
    /// reused yet) and remembered for [`Self::start_again`]. Returns how long it took to exit; `None`
    /// when no process of that name is running.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<Option<Duration>> {
        let Some(pid) = self.with(name, |p| p.pid()) else {
            return Ok(None);
        };
        let started = Instant::now();
        let term = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(Error::io(format!("sending SIGTERM to {name} ({pid})")))?;
        if !term.success() {
            tracing::warn!(name, pid, %term, "kill -TERM failed; the process may be gone already");
        }
        if !dead_within(pid, grace).await {
            tracing::info!(
                name,
                pid,
                ?grace,
                "still running after SIGTERM: sending SIGKILL"
            );
            self.with(name, |p| p.child.kill())
                .transpose()
                .map_err(Error::io(format!("sending SIGKILL to {name} ({pid})")))?;
            if !dead_within(pid, Duration::from_secs(10)).await {
                return Err(Error::Io {
                    step: format!("stopping {name} ({pid})"),
                    source: std::io::Error::other("still running 10 s after SIGKILL"),
                });
            }
        }
        let took = started.elapsed();
        self.tell_watchdog(&format!("-{pid}"));
        let mut procs = lock(&self.procs);
        if let Some(index) = procs.iter().position(|p| p.pid() == pid) {
            let mut proc = procs.remove(index);
            let status = proc.child.wait();
            tracing::info!(name, pid, ?status, ?took, "stopped");
            lock(&self.stopped).push(Stopped {
                index,
                name: proc.name,
                log: proc.log,
                recipe: proc.recipe,
            });
        }
        Ok(Some(took))
    }

    /// Starts a process stopped by [`Self::stop`] again, with the same command, appending to the same
    /// log, in its old place in [`Self::pids`]. `None` when no stopped process has that name.
    pub fn start_again(&self, name: &str) -> Result<Option<u32>> {
        let entry = {
            let mut stopped = lock(&self.stopped);
            let Some(at) = stopped.iter().position(|s| s.name == name) else {
                return Ok(None);
            };
            stopped.remove(at)
        };
        let opened = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&entry.log)
            .and_then(|mut f| {
                writeln!(f, "--- zerospot-testbed: {name} started again ---")?;
                Ok(f)
            });
        let out = match opened {
            Ok(out) => out,
            Err(e) => {
                let step = format!("opening {}", entry.log.display());
                lock(&self.stopped).push(entry);
                return Err(Error::Io { step, source: e });
            }
        };
        let cmd = entry.recipe.command();
        match self.launch(name, entry.recipe.clone(), cmd, out, &entry.log) {
            Ok(proc) => {
                let pid = proc.pid();
                let mut procs = lock(&self.procs);
                let index = entry.index.min(procs.len());
                procs.insert(index, proc);
                Ok(Some(pid))
            }
            Err(e) => {
                lock(&self.stopped).push(entry);
                Err(e)
            }
        }
    }

    /// Runs `f` on the process named `name`.
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Proc) -> T) -> Option<T> {
        lock(&self.procs).iter_mut().find(|p| p.name == name).map(f)
    }

    /// `(name, pid)` of every process started and not stopped by [`Self::stop`], in start order.
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

/// Waits until `pid` (a child of ours, so it stays a zombie until reaped) has exited.
async fn dead_within(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
impl Supervisor {
    /// Closes the watchdog's pipe as if this process had died, and waits for the watchdog to finish.
    fn abandon(&self) {
        if let Some((mut child, pipe)) = lock(&self.watchdog).take() {
            drop(pipe);
            let _ = child.wait();
        }
    }
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        cmd
    }

    /// Alive and not a zombie.
    fn alive(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    }

    #[tokio::test]
    async fn a_restarted_process_keeps_its_place_and_the_watchdog_kills_the_new_pid() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::new(None).unwrap();
        let first = supervisor
            .spawn("first", sleeper(), &dir.path().join("first.log"))
            .unwrap();
        let second = supervisor
            .spawn("second", sleeper(), &dir.path().join("second.log"))
            .unwrap();

        let took = supervisor.stop("first", Duration::from_secs(5)).await;
        assert!(took.unwrap().is_some());
        assert!(!alive(first), "SIGTERM stops sleep");
        assert_eq!(supervisor.pids(), [("second".to_owned(), second)]);
        assert!(
            supervisor
                .stop("first", Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );

        let again = supervisor.start_again("first").unwrap().unwrap();
        assert_ne!(again, first);
        assert!(alive(again));
        assert_eq!(
            supervisor.pids(),
            [("first".to_owned(), again), ("second".to_owned(), second)]
        );
        assert!(supervisor.start_again("first").unwrap().is_none());
        let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
        assert!(log.contains("started again"), "{log}");

        supervisor.abandon();
        assert!(!alive(again), "the watchdog kills the new PID");
        assert!(!alive(second));
    }

    #[test]
    fn the_watchdog_forgets_a_pid_struck_off_its_list() {
        let mut sleepers: Vec<Child> = (0..3).map(|_| sleeper().spawn().unwrap()).collect();
        let [a, b, c] = [0, 1, 2].map(|i| sleepers[i].id());
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("zerospot-testbed-watchdog")
            .arg("")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = watchdog.stdin.take().unwrap();
        writeln!(pipe, "{a}\n{b}\n{c}\n-{b}").unwrap();
        drop(pipe);
        watchdog.wait().unwrap();
        assert!(!alive(a));
        assert!(alive(b), "{b} was struck off and must be left alone");
        assert!(!alive(c));
        for s in &mut sleepers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}
