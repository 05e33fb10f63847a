//! The engine child process: `songgen serve --stdio`, spoken to in the JSON-lines protocol of
//! `songgen_protocol::wire`. Running inference in a separate process keeps the model's memory
//! (and any crash or out-of-memory kill) out of the host.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use songgen_protocol::{Event, Request};

/// Name of the engine executable.
pub const ENGINE_BIN: &str = if cfg!(windows) {
    "songgen.exe"
} else {
    "songgen"
};
/// Environment variable naming the engine executable (overrides the search).
pub const ENGINE_ENV: &str = "SONGGEN_ENGINE";

/// What the engine's reader threads report, tagged with the engine's spawn number so reports
/// from an engine that was already replaced are ignored.
#[derive(Debug)]
pub enum EngineMsg {
    Event(u64, Event),
    /// A stdout line that is not a protocol event.
    Garbage(u64, String),
    /// stdout closed: the process exited or is about to.
    Closed(u64),
}

/// A running engine process.
pub struct EngineProcess {
    child: Child,
    stdin: ChildStdin,
    pub generation: u64,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: std::thread::JoinHandle<()>,
}

impl EngineProcess {
    /// Starts `exe serve --stdio` with reader threads feeding `events`.
    pub fn spawn(
        exe: &Path,
        extra_args: &[String],
        generation: u64,
        events: Sender<EngineMsg>,
    ) -> Result<Self> {
        let mut child = Command::new(exe)
            .args(["serve", "--stdio"])
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting engine {}", exe.display()))?;
        let stdin = child.stdin.take().context("engine stdin")?;
        let stdout = child.stdout.take().context("engine stdout")?;
        let stderr = child.stderr.take().context("engine stderr")?;
        std::thread::Builder::new()
            .name("songgen-engine-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let msg = match serde_json::from_str::<Event>(&line) {
                        Ok(ev) => EngineMsg::Event(generation, ev),
                        Err(_) => EngineMsg::Garbage(generation, line),
                    };
                    if events.send(msg).is_err() {
                        return;
                    }
                }
                let _ = events.send(EngineMsg::Closed(generation));
            })?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let stderr_reader = std::thread::Builder::new()
            .name("songgen-engine-err".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })?;
        Ok(Self {
            child,
            stdin,
            generation,
            stderr_tail,
            stderr_reader,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one request line.
    pub fn send(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.flush())
            .context("writing to the engine")
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits briefly for the exit status after stdout closed.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        for _ in 0..50 {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    /// The last line the engine wrote to stderr (its error message, usually). After an exit,
    /// waits briefly for the reader to see the end of the stream.
    pub fn last_stderr(&self) -> Option<String> {
        for _ in 0..50 {
            if self.stderr_reader.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let t = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().rev().find(|l| !l.trim().is_empty()).cloned()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.send(&Request::Shutdown);
            // Give it a moment to exit cleanly, then kill.
            for _ in 0..20 {
                if self.try_exit().is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Describes how a process ended, naming the signal (9 is what the OOM killer sends).
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "closed its output".into();
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let hint = if sig == 9 {
                " (killed; out of memory?)"
            } else {
                ""
            };
            return format!("was killed by signal {sig}{hint}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".into(),
    }
}

/// Finds the engine: the configured path, `$SONGGEN_ENGINE`, next to the plugin binary, then
/// on `PATH`. The error lists every place looked at.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = configured.filter(|p| !p.as_os_str().is_empty()) {
        candidates.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ENGINE_ENV).filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = plugin_dir() {
        candidates.push(dir.join(ENGINE_BIN));
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join(ENGINE_BIN);
            if c.is_file() {
                return Ok(c);
            }
        }
        tried.push(format!("{ENGINE_BIN} on PATH"));
    }
    Err(format!(
        "songgen engine not found (looked at {}); install it with `cargo xtask install` or set its path",
        tried.join(", ")
    ))
}

/// Folder of the loaded plugin binary (the `.clap` file, or the `.so` inside a `.vst3` bundle).
pub fn plugin_dir() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        use std::ffi::CStr;
        use std::os::unix::ffi::OsStrExt;
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let addr = plugin_dir as *const () as *const libc::c_void;
        // SAFETY: dladdr only reads the address and fills `info`.
        if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
        let bytes = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes));
        path.parent().map(Path::to_path_buf)
    }
    #[cfg(not(unix))]
    {
        None
    }
}
