//! The transports of `songgen serve`: stdin/stdout (one owner), the shared local engine on a
//! per-user Unix socket, and TCP for a remote GPU box (token authentication).
//!
//! **Shared local engine** (`--socket`): one engine per user and machine. The first client
//! starts it; it takes an exclusive lock on `engine.lock` beside the socket (a second engine
//! started in a race finds the lock taken and exits with [`Served::AlreadyRunning`]), binds the
//! socket (mode 0600, in a 0700 folder owned by the user) *before* loading the model, so clients
//! can connect at once and get `ready` when the model is loaded; then it serves until it has
//! had no connection and no job for the grace period.
//!
//! **Network engine** (`--listen ADDR`): every connection authenticates with the token of the
//! token file first; see [`load_or_create_token`].

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::server::{Engine, EventSink, Origin};

/// Most simultaneous network connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a closing connection's peer may take to read the events left for it.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a network connection may take to authenticate.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How a socket server ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// It served until idle (or shut down).
    Done,
    /// Another engine already serves this socket (it holds the lock).
    AlreadyRunning,
}

/// Serves the owner on stdin/stdout. When stdin ends the queued jobs still run to completion.
pub fn serve_stdio(engine: &Engine) {
    let sink = EventSink::new(std::io::stdout());
    let stdin = std::io::stdin();
    engine.serve_connection(stdin.lock(), sink.clone(), Origin::Local, None, true);
    engine.join();
    sink.finish();
}

/// Creates `dir` for the engine's socket and checks that only this user can enter it.
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        bail!(
            "{} belongs to another user (uid {}); the engine's socket folder must be yours",
            dir.display(),
            meta.uid()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

/// The shared local engine: serves `socket` until it has been idle (no connection, no job) for
/// `grace`, or a `shutdown`. `load` loads the model; it runs after the lock is taken and the
/// socket bound, so exactly one engine per socket loads a model.
#[cfg(unix)]
pub fn serve_socket(
    socket: &Path,
    grace: Duration,
    load: impl FnOnce() -> Result<Engine>,
) -> Result<Served> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    private_dir(dir)?;
    let lock_path = dir.join("engine.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Served::AlreadyRunning),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(anyhow!("locking {}: {e}", lock_path.display()))
        }
    }
    // We hold the lock: a socket file left there is stale (its engine is gone).
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", socket.display()))?;
    eprintln!(
        "songgen: serving {} (pid {})",
        socket.display(),
        std::process::id()
    );
    let cleanup = RemoveOnDrop(socket.to_path_buf());
    let engine = Arc::new(load()?);
    listener.set_nonblocking(true)?;
    let mut connections = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let (Ok(write), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
                    continue;
                };
                let engine = engine.clone();
                let limit = engine.limits().send_buffer_bytes;
                connections.push(std::thread::spawn(move || {
                    let close = move || {
                        let _ = closer.shutdown(std::net::Shutdown::Both);
                    };
                    let sink = EventSink::bounded(write, limit, Some(Box::new(close)));
                    engine.serve_connection(
                        BufReader::new(stream),
                        sink.clone(),
                        Origin::Local,
                        None,
                        false,
                    );
                    sink.finish_within(FINISH_TIMEOUT);
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(anyhow!("accept on {}: {e}", socket.display())),
        }
        connections.retain(|c| !c.is_finished());
        if engine.is_shutting_down() || engine.idle_for().is_some_and(|d| d >= grace) {
            break;
        }
    }
    // New clients find no socket (and start an engine of their own) from here on.
    drop(cleanup);
    drop(listener);
    engine.shutdown();
    engine.join();
    drop(lock);
    Ok(Served::Done)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The network engine's token: read from `path`, or created there (32 random bytes as hex,
/// mode 0600) when missing; the bool says it was created (print it once). A token file that
/// others can read, or an empty one, is refused.
pub fn load_or_create_token(path: &Path) -> Result<(String, bool)> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(path)
            .with_context(|| format!("creating the token file {}", path.display()))?;
        std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok((token, true));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "the token file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        bail!(
            "the token file {} holds no token of at least 16 characters",
            path.display()
        );
    }
    Ok((token, false))
}

/// Whether `addr` only accepts connections from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The network engine: accepts connections on `listener` until a local `shutdown` (never sent
/// over the network) ends the process or it is killed. `token`: what each connection must send
/// first; `None` only on a loopback address (`--no-auth`).
pub fn serve_tcp(engine: &Arc<Engine>, listener: TcpListener, token: Option<String>) -> Result<()> {
    let addr = listener.local_addr()?;
    if token.is_none() && !is_loopback(&addr) {
        bail!("refusing to listen on {addr} without a token: anyone on the network could use this engine");
    }
    eprintln!("songgen: listening on {addr}");
    listener.set_nonblocking(true)?;
    let open = Arc::new(AtomicUsize::new(0));
    while !engine.is_shutting_down() {
        match listener.accept() {
            Ok((stream, _)) => {
                if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let engine = engine.clone();
                let token = token.clone();
                let open = open.clone();
                std::thread::spawn(move || {
                    serve_tcp_connection(&engine, stream, token);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(anyhow!("accept on {addr}: {e}")),
        }
    }
    Ok(())
}

fn serve_tcp_connection(engine: &Engine, stream: TcpStream, token: Option<String>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let (Ok(write), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    // Reads time out only before authentication (a silent client cannot hold a thread).
    let _ = stream.set_read_timeout(token.as_ref().map(|_| AUTH_TIMEOUT));
    let close = move || {
        let _ = closer.shutdown(std::net::Shutdown::Both);
    };
    let sink = EventSink::bounded(
        write,
        engine.limits().send_buffer_bytes,
        Some(Box::new(close)),
    );
    let reader = AuthTimeoutReader {
        inner: &stream,
        cleared: token.is_none(),
    };
    engine.serve_connection(
        BufReader::new(reader),
        sink.clone(),
        Origin::Remote,
        token,
        false,
    );
    sink.finish_within(FINISH_TIMEOUT);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Clears the read timeout after the first line (the auth line) has been read.
struct AuthTimeoutReader<'a> {
    inner: &'a TcpStream,
    cleared: bool,
}

impl std::io::Read for AuthTimeoutReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.inner, buf)?;
        if !self.cleared && buf[..n].contains(&b'\n') {
            self.cleared = true;
            let _ = self.inner.set_read_timeout(None);
        }
        Ok(n)
    }
}
