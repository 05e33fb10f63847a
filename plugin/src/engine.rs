//! The plugin's link to the engine, spoken to in the JSON-lines protocol of
//! `songgen_protocol::wire`. Inference runs in a separate process, so the model's memory (and
//! any crash or out-of-memory kill) stays out of the host.
//!
//! - **Local (shared)**: one engine per user and machine on the per-user socket
//!   (`songgen serve --socket`). An instance connects; when nobody serves the socket it starts
//!   the engine (which outlives it while other instances use it) and connects. A race between
//!   instances is settled by the engine's lock: the second engine exits at once and its starter
//!   connects to the first. Without Unix sockets the instance runs a private
//!   `songgen serve --stdio` child instead.
//! - **Remote**: TCP to `songgen serve --listen` on another machine, authenticated with its
//!   token; the stems come back as `chunk` events only.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use songgen_protocol::{Event, Request};

/// Name of the engine executable.
pub const ENGINE_BIN: &str = if cfg!(windows) {
    "songgen.exe"
} else {
    "songgen"
};
/// Name of the CPU-only engine that `cargo xtask install --features cuda` puts beside the CUDA
/// one: the plugin starts it when the CUDA engine cannot start or cannot use its GPU.
pub const CPU_ENGINE_BIN: &str = if cfg!(windows) {
    "songgen-cpu.exe"
} else {
    "songgen-cpu"
};
/// Environment variable naming the engine executable (overrides the search).
pub const ENGINE_ENV: &str = "SONGGEN_ENGINE";

/// How long a started engine may take to bind its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to a remote engine may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the engine's reader thread reports, tagged with the link's number so reports from a
/// link that was already replaced are ignored.
#[derive(Debug)]
pub enum EngineMsg {
    Event(u64, Event),
    /// A line that is not a protocol event.
    Garbage(u64, String),
    /// The connection closed: the engine exited, was killed, or dropped this client.
    Closed(u64),
}

/// Why a link could not be made; `status` is the exit status of an engine this instance
/// started and saw end (for the CPU fallback).
#[derive(Debug)]
pub struct StartError {
    pub status: Option<ExitStatus>,
    pub message: String,
    /// Whether an engine process was started (and then ended or was given up on).
    pub spawned: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn start_error(e: anyhow::Error) -> StartError {
    StartError {
        status: None,
        message: format!("{e:#}"),
        spawned: false,
    }
}

/// Where the engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The shared local engine on `socket`, started from `exe` with `args` when nobody serves it.
    Local {
        exe: PathBuf,
        args: Vec<String>,
        socket: PathBuf,
    },
    /// A private `exe serve --stdio` child (platforms without Unix sockets).
    Private { exe: PathBuf, args: Vec<String> },
    /// `songgen serve --listen` at `addr`, authenticated with `token`.
    Remote { addr: String, token: String },
}

/// A link to an engine.
pub struct EngineLink {
    /// What this link talks to, in words (the executable, or `host:port`).
    pub describe: String,
    /// The executable, for a local engine (the CPU fallback looks beside it).
    pub exe: Option<PathBuf>,
    pub generation: u64,
    pub remote: bool,
    writer: Box<dyn Write + Send>,
    /// Shuts the connection down (so the reader thread ends) when the link is dropped.
    closer: Option<Box<dyn FnOnce() + Send>>,
    /// The engine process this instance started, if it did.
    child: Option<Child>,
    /// Where that engine's messages go (its stderr), to explain how it ended.
    log: Option<PathBuf>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// The engine this instance started exited with an error (seen by `wait_exit`).
    failed: bool,
}

fn spawn_reader(
    input: impl Read + Send + 'static,
    generation: u64,
    events: Sender<EngineMsg>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("songgen-engine-out".into())
        .spawn(move || {
            for line in BufReader::new(input).lines() {
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
    Ok(())
}

/// The last non-empty line of `path` (an engine log), read from its last 8 KiB.
fn last_line(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(8192)))
        .ok()?;
    let mut text = String::new();
    f.take(8192).read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

impl EngineLink {
    /// Connects to (or starts) the engine of `target`; reports go to `events`.
    pub fn start(
        target: &Target,
        generation: u64,
        events: Sender<EngineMsg>,
    ) -> Result<Self, StartError> {
        match target {
            #[cfg(unix)]
            Target::Local { exe, args, socket } => {
                Self::local(exe, args, socket, generation, events)
            }
            #[cfg(not(unix))]
            Target::Local { exe, args, .. } => Self::private(exe, args, generation, events),
            Target::Private { exe, args } => Self::private(exe, args, generation, events),
            Target::Remote { addr, token } => {
                Self::remote(addr, token, generation, events).map_err(start_error)
            }
        }
    }

    fn bare(
        describe: String,
        exe: Option<PathBuf>,
        generation: u64,
        writer: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            describe,
            exe,
            generation,
            remote: false,
            writer,
            closer: None,
            child: None,
            log: None,
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            stderr_reader: None,
            failed: false,
        }
    }

    #[cfg(unix)]
    fn local(
        exe: &Path,
        args: &[String],
        socket: &Path,
        generation: u64,
        events: Sender<EngineMsg>,
    ) -> Result<Self, StartError> {
        use std::os::unix::net::UnixStream;
        let connected = |stream: UnixStream, child: Option<Child>, log: Option<PathBuf>| {
            let read = stream.try_clone().context("engine socket")?;
            let closer = stream.try_clone().context("engine socket")?;
            spawn_reader(read, generation, events.clone()).context("engine reader thread")?;
            let mut link = Self::bare(
                exe.display().to_string(),
                Some(exe.to_path_buf()),
                generation,
                Box::new(stream),
            );
            link.closer = Some(Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Both);
            }));
            link.child = child;
            link.log = log;
            anyhow::Ok(link)
        };
        if let Ok(stream) = UnixStream::connect(socket) {
            return connected(stream, None, None).map_err(start_error);
        }
        // Nobody serves the socket: start the shared engine. Its messages go to a log beside
        // the socket (it outlives this instance, so not to a pipe of ours).
        let dir = socket.parent().unwrap_or(Path::new("."));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .map_err(start_error)?;
        }
        let log = dir.join("engine.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))
            .map_err(start_error)?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting engine {}", exe.display()))
            .map_err(start_error)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut exited: Option<ExitStatus> = None;
        loop {
            if let Ok(stream) = UnixStream::connect(socket) {
                // Another instance's engine may have won the race: ours then exits by itself.
                return connected(stream, Some(child), Some(log)).map_err(start_error);
            }
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
                if let Some(status) = exited.filter(|s| !s.success()) {
                    let detail = last_line(&log)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default();
                    return Err(StartError {
                        spawned: true,
                        status: Some(status),
                        message: format!(
                            "engine {} {}{detail}",
                            exe.display(),
                            describe_exit(Some(status))
                        ),
                    });
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError {
                    spawned: true,
                    status: None,
                    message: format!(
                        "engine {} did not open {} within {} s (see {})",
                        exe.display(),
                        socket.display(),
                        START_TIMEOUT.as_secs(),
                        log.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A private `serve --stdio` child with reader threads feeding `events`.
    fn private(
        exe: &Path,
        args: &[String],
        generation: u64,
        events: Sender<EngineMsg>,
    ) -> Result<Self, StartError> {
        let mut child = Command::new(exe)
            .args(["serve", "--stdio"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting engine {}", exe.display()))
            .map_err(start_error)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(start_error(anyhow::anyhow!("engine pipes")));
        };
        spawn_reader(stdout, generation, events)
            .context("engine reader thread")
            .map_err(start_error)?;
        let mut link = Self::bare(
            exe.display().to_string(),
            Some(exe.to_path_buf()),
            generation,
            Box::new(stdin),
        );
        let tail = link.stderr_tail.clone();
        link.stderr_reader = Some(
            std::thread::Builder::new()
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
                })
                .context("engine stderr thread")
                .map_err(start_error)?,
        );
        link.child = Some(child);
        Ok(link)
    }

    fn remote(addr: &str, token: &str, generation: u64, events: Sender<EngineMsg>) -> Result<Self> {
        use std::net::{TcpStream, ToSocketAddrs};
        let target = addr
            .to_socket_addrs()
            .with_context(|| format!("remote engine address `{addr}` (use host:port)"))?
            .next()
            .with_context(|| format!("remote engine address `{addr}` resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to the remote engine {addr}"))?;
        let _ = stream.set_nodelay(true);
        let read = stream.try_clone()?;
        let closer = stream.try_clone()?;
        spawn_reader(read, generation, events).context("engine reader thread")?;
        let mut link = Self::bare(
            format!("remote engine {addr}"),
            None,
            generation,
            Box::new(stream),
        );
        link.remote = true;
        link.closer = Some(Box::new(move || {
            let _ = closer.shutdown(std::net::Shutdown::Both);
        }));
        link.send(&Request::Auth {
            token: token.to_owned(),
        })?;
        Ok(link)
    }

    /// The engine's process id, when this instance started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes one request line.
    pub fn send(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|_| self.writer.flush())
            .context("writing to the engine")
    }

    /// The exit status of a private (`--stdio`) child that has ended. A shared engine's end is
    /// seen as its connection closing instead (the engine this instance started may exit at
    /// once when another one already serves the socket).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.closer.is_some() {
            return None;
        }
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// After the connection closed: how the engine this instance started ended (waiting
    /// briefly), `None` when it is still running, was started by another instance, or is remote.
    ///
    /// A shared engine this instance started that exited with status 0 ended by itself (it lost
    /// the start-up race to another instance's engine, or stopped when idle): it does not explain
    /// the closed connection, so that is `None` too.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let shared = self.closer.is_some();
        let child = self.child.as_mut()?;
        for _ in 0..50 {
            if let Ok(Some(s)) = child.try_wait() {
                if shared && s.success() {
                    return None;
                }
                self.failed = !s.success();
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The engine's last message (its error, usually): the private child's stderr, or the
    /// shared engine's log.
    pub fn last_stderr(&self) -> Option<String> {
        if let Some(log) = &self.log {
            // The log is shared by every engine started on this socket: its last line is this
            // instance's engine's only when that engine failed.
            return self.failed.then(|| last_line(log)).flatten();
        }
        if let Some(reader) = &self.stderr_reader {
            for _ in 0..50 {
                if reader.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let t = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().rev().find(|l| !l.trim().is_empty()).cloned()
    }
}

impl Drop for EngineLink {
    fn drop(&mut self) {
        let connection = self.closer.is_some();
        if let Some(close) = self.closer.take() {
            // A shared engine keeps running for the other instances (and stops by itself
            // when idle); closing the connection cancels this instance's jobs.
            close();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !connection && child.try_wait().ok().flatten().is_none() {
            // A private child: ask it to stop, then kill it.
            let _ = self.send(&Request::Shutdown);
            for _ in 0..20 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        // The shared engine this instance started: reap it when it ends, so it does not stay
        // a zombie of the host.
        let _ = std::thread::Builder::new()
            .name("songgen-engine-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
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

/// The CPU engine to start instead of `exe` when `exe` cannot run on its device: the
/// [`CPU_ENGINE_BIN`] in the same folder, unless `exe` is that engine already.
pub fn cpu_fallback(exe: &Path) -> Option<PathBuf> {
    let cpu = exe.with_file_name(CPU_ENGINE_BIN);
    let same = match (exe.canonicalize(), cpu.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => exe == cpu,
    };
    (cpu.is_file() && !same).then_some(cpu)
}

/// Whether an engine that ended before it was ready failed because of its device rather than
/// its input: the dynamic loader could not start it (126/127, e.g. the NVIDIA driver's
/// `libcuda.so.1` is missing) or it found no usable GPU ([`songgen_protocol::EXIT_DEVICE`]).
pub fn is_device_failure(status: Option<ExitStatus>) -> bool {
    let code = status.and_then(|s| s.code());
    matches!(code, Some(126 | 127)) || code == Some(i32::from(songgen_protocol::EXIT_DEVICE))
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn device_failures_are_the_loaders_codes_and_the_engines_device_code() {
        let exit = |code: i32| Some(ExitStatus::from_raw(code << 8));
        assert!(is_device_failure(exit(127)));
        assert!(is_device_failure(exit(126)));
        assert!(is_device_failure(exit(3)));
        assert!(!is_device_failure(exit(1)));
        assert!(!is_device_failure(exit(2)));
        // Killed by a signal (e.g. out of memory) or no status: not a device failure.
        assert!(!is_device_failure(Some(ExitStatus::from_raw(9))));
        assert!(!is_device_failure(None));
    }

    #[test]
    fn the_cpu_engine_is_the_one_beside_the_engine_and_not_itself() {
        let dir = std::env::temp_dir().join(format!("songgen-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gpu = dir.join(ENGINE_BIN);
        let cpu = dir.join(CPU_ENGINE_BIN);
        std::fs::write(&gpu, "").unwrap();
        assert_eq!(cpu_fallback(&gpu), None, "no CPU engine installed");
        std::fs::write(&cpu, "").unwrap();
        assert_eq!(cpu_fallback(&gpu), Some(cpu.clone()));
        assert_eq!(cpu_fallback(&cpu), None, "the CPU engine has no fallback");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
