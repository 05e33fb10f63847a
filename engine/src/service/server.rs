//! The engine service behind `songgen serve`: the JSON-lines protocol of [`crate::protocol`]
//! over any byte streams (stdin/stdout, the per-user Unix socket, TCP connections; the
//! transports are in [`super::listen`]).
//!
//! One model is loaded and shared: a single worker thread runs the jobs, one at a time. Every
//! connection is a *client* with its own job queue; the worker serves the clients' queues in
//! turn (round robin), so one client's batch never starves another's. A client sees, cancels and
//! lists only its own jobs. Events go through a per-connection writer thread with a bounded
//! buffer ([`EventSink`]): a client that stops reading loses its own connection, never blocks
//! the worker or the other clients.
//!
//! Network clients ([`Origin::Remote`]) are not trusted: they authenticate first, name no paths
//! on the server (outputs go under the server's own output root, a style clip is uploaded in the
//! request) and cannot shut the engine down.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::protocol::{
    check_id, decode_base64, encode_samples, Event, Job, Request, Stage, StylePrompt,
    MAX_LINE_BYTES, MAX_UPLOAD_BYTES, MAX_UPLOAD_SECONDS, PROTOCOL_VERSION,
};
use crate::service::pipeline::AudioChunk;
use crate::service::pipeline::{self, PipelineError, SongModel};

/// Minimum time between two progress events of one stage (the last unit is always sent).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Longest `chunk` event in sample frames (5 s: a 2.6 MB line); longer final spans are split.
const CHUNK_FRAMES: usize = 240_000;

/// Where a connection comes from, which decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The engine's owner: stdin/stdout of the process that started it, or the per-user socket
    /// (mode 0600 in a 0700 folder). May name paths and shut the engine down.
    Local,
    /// A network connection (`--listen`): must authenticate, names no server paths, cannot shut
    /// the engine down.
    Remote,
}

/// The service's bounds; the defaults are what `songgen serve` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line (bytes); a longer one closes the connection.
    pub line_bytes: usize,
    /// Jobs one client may have queued (not counting its running one).
    pub queue_per_client: usize,
    /// Jobs queued across all clients.
    pub queue_total: usize,
    /// Events a connection may have waiting to be written (bytes); past it the client is too
    /// slow and loses its connection.
    pub send_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            line_bytes: MAX_LINE_BYTES,
            queue_per_client: 16,
            queue_total: 128,
            send_buffer_bytes: 64 << 20,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event sink: one writer thread per connection.

enum Out {
    Line(String),
    /// Wakes the writer to end (the sink was closed).
    End,
}

struct SinkInner {
    tx: Sender<Out>,
    pending: AtomicUsize,
    limit: usize,
    dead: AtomicBool,
    /// Closes the underlying connection (unblocks a writer stuck on a stalled peer).
    closer: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl SinkInner {
    fn kill(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            if let Some(close) = self.closer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                close();
            }
            let _ = self.tx.send(Out::End);
        }
    }
}

/// Where a connection's events go: one JSON object per line, written and flushed by the
/// connection's own writer thread, so sending never blocks the engine.
#[derive(Clone)]
pub struct EventSink(Arc<SinkInner>);

impl EventSink {
    /// A sink writing to `w` with an unbounded buffer (the engine's owner on stdout).
    pub fn new(w: impl Write + Send + 'static) -> Self {
        Self::bounded(w, usize::MAX, None)
    }

    /// A sink that gives up on its connection (calling `closer`, e.g. a socket shutdown) when
    /// more than `limit` bytes wait to be written: the peer stopped reading.
    pub fn bounded(
        w: impl Write + Send + 'static,
        limit: usize,
        closer: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Out>();
        let inner = Arc::new(SinkInner {
            tx,
            pending: AtomicUsize::new(0),
            limit,
            dead: AtomicBool::new(false),
            closer: Mutex::new(closer),
            writer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name("songgen-events".into())
            .spawn(move || writer(w, rx, weak))
            .expect("spawn event writer thread");
        *inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Self(inner)
    }

    /// Sends one event; a closed or stalled connection is not an error for the engine.
    pub fn send(&self, event: &Event) {
        if self.0.dead.load(Ordering::SeqCst) {
            return;
        }
        let mut line = serde_json::to_string(event).expect("events serialise");
        line.push('\n');
        let len = line.len();
        let before = self.0.pending.fetch_add(len, Ordering::SeqCst);
        if before.saturating_add(len) > self.0.limit {
            self.0.kill();
            return;
        }
        if self.0.tx.send(Out::Line(line)).is_err() {
            self.0.dead.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the connection was lost (write error or a peer too slow to keep up).
    pub fn is_dead(&self) -> bool {
        self.0.dead.load(Ordering::SeqCst)
    }

    /// Closes the connection now (what was not written yet is dropped).
    pub fn kill(&self) {
        self.0.kill();
    }

    /// [`Self::finish`], but a peer that does not take what is left within `limit` loses the
    /// rest: its connection is shut down (so a connection thread never hangs on a stalled peer).
    pub fn finish_within(&self, limit: Duration) {
        let _ = self.0.tx.send(Out::End);
        let deadline = Instant::now() + limit;
        loop {
            let done = self
                .0
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(JoinHandle::is_finished);
            if done {
                break;
            }
            if Instant::now() >= deadline {
                self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.finish();
    }

    /// Writes everything sent so far, then stops the writer and waits for it.
    pub fn finish(&self) {
        let _ = self.0.tx.send(Out::End);
        let handle = self
            .0
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn writer(mut w: impl Write, rx: Receiver<Out>, sink: std::sync::Weak<SinkInner>) {
    for out in rx {
        let Out::Line(line) = out else { break };
        let ok = w
            .write_all(line.as_bytes())
            .and_then(|()| w.flush())
            .is_ok();
        let Some(sink) = sink.upgrade() else { break };
        sink.pending.fetch_sub(line.len(), Ordering::SeqCst);
        if !ok {
            sink.kill();
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs, clients and the fair queue.

/// A connection's number, unique for the engine's lifetime.
pub type ClientId = u64;

struct Queued {
    client: ClientId,
    id: String,
    job: Job,
    /// The job's folder, when the server chose it (network clients): `done` names files in it.
    served_dir: Option<PathBuf>,
    sink: EventSink,
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    running: Option<(ClientId, String, Arc<AtomicBool>)>,
    /// Each client's queue; the worker takes from them in turn.
    queues: BTreeMap<ClientId, VecDeque<Queued>>,
    /// The client served last (round robin starts after it).
    last_client: Option<ClientId>,
    /// No more jobs: the worker ends once the queues are empty.
    closed: bool,
    shutting_down: bool,
    /// Open connections, and when the engine last had no connection and no job.
    connections: usize,
    idle_since: Option<Instant>,
}

impl State {
    fn queued_total(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    fn busy(&self) -> bool {
        self.running.is_some() || self.queued_total() > 0
    }

    fn touch(&mut self) {
        self.idle_since = (!self.busy() && self.connections == 0).then(Instant::now);
    }

    /// The next job in round-robin order over the clients with queued jobs.
    fn next_job(&mut self) -> Option<Queued> {
        let after = self.last_client;
        let pick = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(c, _)| *c)
            .find(|c| after.is_none_or(|a| *c > a))
            .or_else(|| {
                self.queues
                    .iter()
                    .find(|(_, q)| !q.is_empty())
                    .map(|(c, _)| *c)
            })?;
        self.last_client = Some(pick);
        let q = self.queues.get_mut(&pick)?;
        let job = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&pick);
        }
        job
    }

    /// About how many jobs run before the `k`-th (0-based) queued job of `client`: its own
    /// `k` earlier ones, the running one, and up to `k + 1` of every other client's (round robin).
    fn position(&self, client: ClientId, k: usize) -> usize {
        let others: usize = self
            .queues
            .iter()
            .filter(|(c, _)| **c != client)
            .map(|(_, q)| q.len().min(k + 1))
            .sum();
        others + k + usize::from(self.running.is_some())
    }
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    limits: Limits,
    /// Where network clients' jobs write (one folder per job).
    out_root: Option<PathBuf>,
    next_client: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Options of [`Engine::start_with`].
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub limits: Limits,
    /// Output root for network clients' jobs (`--out-root`); without one they are refused.
    pub out_root: Option<PathBuf>,
}

/// A running engine: a model, its worker thread and the clients' job queues.
pub struct Engine {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
    model_name: String,
    device: String,
}

impl Engine {
    /// Starts the worker thread that owns `model`, with the default limits and no output root
    /// for network clients.
    pub fn start(model: Box<dyn SongModel>) -> Self {
        Self::start_with(model, EngineOptions::default())
    }

    pub fn start_with(model: Box<dyn SongModel>, options: EngineOptions) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                idle_since: Some(Instant::now()),
                ..State::default()
            }),
            wake: Condvar::new(),
            limits: options.limits,
            out_root: options.out_root,
            next_client: AtomicU64::new(1),
        });
        let model_name = model.name();
        let device = model.device();
        let worker_inner = inner.clone();
        let worker = std::thread::Builder::new()
            .name("songgen-worker".into())
            .spawn(move || worker(model, worker_inner))
            .expect("spawn worker thread");
        Self {
            inner,
            worker: Mutex::new(Some(worker)),
            model_name,
            device,
        }
    }

    /// The `ready` event a connection receives first (after `auth` over the network).
    pub fn ready_event(&self) -> Event {
        Event::Ready {
            protocol: PROTOCOL_VERSION,
            model: self.model_name.clone(),
            device: self.device.clone(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether a `shutdown` request was received.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.lock().shutting_down
    }

    /// How long the engine has had no connection and no job (`None` while it has either).
    pub fn idle_for(&self) -> Option<Duration> {
        self.inner.lock().idle_since.map(|t| t.elapsed())
    }

    /// Opens a client session; events go to `sink`. `token` is the secret a [`Origin::Remote`]
    /// client must send first (`None`: no authentication, for a loopback `--no-auth` server).
    pub fn session(&self, origin: Origin, sink: EventSink, token: Option<String>) -> Session<'_> {
        let client = self.inner.next_client.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = self.inner.lock();
            st.connections += 1;
            st.touch();
        }
        let authed = origin == Origin::Local || token.is_none();
        if authed {
            sink.send(&self.ready_event());
        }
        Session {
            engine: self,
            client,
            origin,
            sink,
            token,
            authed,
            keep_jobs: false,
        }
    }

    /// Serves one connection until its input ends, the connection is lost or closed by a
    /// protocol violation, or a `shutdown` arrives. `keep_jobs`: the client's jobs still run
    /// when its input ends (stdin: `songgen serve --stdio < jobs.jsonl`); on other
    /// connections a client that goes away has its jobs cancelled.
    pub fn serve_connection(
        &self,
        input: impl BufRead,
        sink: EventSink,
        origin: Origin,
        token: Option<String>,
        keep_jobs: bool,
    ) {
        let mut session = self.session(origin, sink, token);
        session.keep_jobs = keep_jobs;
        let mut input = input;
        let limit = self.inner.limits.line_bytes;
        loop {
            match read_line_bounded(&mut input, limit) {
                Line::Eof => break,
                Line::TooLong => {
                    session.sink.send(&Event::Error {
                        id: None,
                        message: format!(
                            "request line longer than {limit} bytes; closing the connection"
                        ),
                    });
                    break;
                }
                Line::Bytes(bytes) => {
                    if session.handle_bytes(&bytes).is_break() {
                        break;
                    }
                }
            }
            if session.sink.is_dead() || self.is_shutting_down() {
                break;
            }
        }
    }

    /// Cancels everything and stops accepting jobs; [`Engine::join`] then returns once the
    /// running job has stopped.
    pub fn shutdown(&self) {
        let mut st = self.inner.lock();
        st.shutting_down = true;
        st.closed = true;
        if let Some((_, _, flag)) = &st.running {
            flag.store(true, Ordering::SeqCst);
        }
        for q in st.queues.values() {
            for j in q {
                j.cancel.store(true, Ordering::SeqCst);
            }
        }
        self.inner.wake.notify_all();
    }

    /// Waits until every queued job has finished (or been cancelled) and the worker has exited.
    /// Later submissions are refused.
    pub fn join(&self) {
        {
            let mut st = self.inner.lock();
            st.closed = true;
            self.inner.wake.notify_all();
        }
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

/// One line read by [`read_line_bounded`].
pub enum Line {
    Bytes(Vec<u8>),
    /// Longer than the limit (what was read is dropped).
    TooLong,
    Eof,
}

/// Reads up to the next `\n` without ever holding more than `limit` bytes.
pub fn read_line_bounded(input: &mut impl BufRead, limit: usize) -> Line {
    let mut line = Vec::new();
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Line::Eof,
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Line::Eof
            } else {
                Line::Bytes(line)
            };
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit.saturating_add(1) {
            return Line::TooLong;
        }
        line.extend_from_slice(&buf[..take]);
        input.consume(take);
        if done {
            line.pop();
            return Line::Bytes(line);
        }
    }
}

/// Compares two secrets in time that depends only on their lengths (one comparison does not
/// justify a dependency).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One client's conversation with the engine.
pub struct Session<'e> {
    engine: &'e Engine,
    client: ClientId,
    origin: Origin,
    sink: EventSink,
    token: Option<String>,
    authed: bool,
    keep_jobs: bool,
}

impl Session<'_> {
    pub fn client(&self) -> ClientId {
        self.client
    }

    fn error(&self, id: Option<&str>, message: impl Into<String>) {
        self.sink.send(&Event::Error {
            id: id.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Handles one request line. `Break`: close the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> ControlFlow<()> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.error(None, "request line is not valid UTF-8");
            return if self.authed {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            };
        };
        self.handle_line(text)
    }

    /// Handles one request line. `Break`: close the connection.
    pub fn handle_line(&mut self, line: &str) -> ControlFlow<()> {
        let line = line.trim();
        if line.is_empty() {
            return ControlFlow::Continue(());
        }
        let req = serde_json::from_str::<Request>(line);
        if !self.authed {
            let ok = match (&req, &self.token) {
                (Ok(Request::Auth { token }), Some(expected)) => {
                    same_secret(token.as_bytes(), expected.as_bytes())
                }
                _ => false,
            };
            if !ok {
                let why = if matches!(req, Ok(Request::Auth { .. })) {
                    "wrong token"
                } else {
                    "authenticate first: send {\"op\":\"auth\",\"token\":\"...\"}"
                };
                self.error(None, format!("{why}; closing the connection"));
                return ControlFlow::Break(());
            }
            self.authed = true;
            self.sink.send(&self.engine.ready_event());
            return ControlFlow::Continue(());
        }
        match req {
            Ok(req) => self.handle(req),
            Err(e) => {
                let shown: String = line.chars().take(200).collect();
                let more = if shown.len() < line.len() { "..." } else { "" };
                self.error(None, format!("unreadable request ({e}): {shown}{more}"));
                ControlFlow::Continue(())
            }
        }
    }

    pub fn handle(&mut self, req: Request) -> ControlFlow<()> {
        match req {
            Request::Auth { .. } => self.error(None, "already authenticated"),
            Request::Generate { id, job } => self.submit(id, job),
            Request::Cancel { id } => self.cancel(&id),
            Request::Status => {
                let st = self.engine.inner.lock();
                let running = st
                    .running
                    .as_ref()
                    .filter(|(c, _, _)| *c == self.client)
                    .map(|(_, id, _)| id.clone());
                let queued = st
                    .queues
                    .get(&self.client)
                    .map(|q| q.iter().map(|j| j.id.clone()).collect())
                    .unwrap_or_default();
                drop(st);
                self.sink.send(&Event::Status { running, queued });
            }
            Request::Shutdown => {
                if self.origin == Origin::Remote {
                    self.error(None, "shutdown is not accepted over the network");
                } else {
                    self.engine.shutdown();
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Network jobs: no server paths from the client; the server picks the job's folder and
    /// stores an uploaded clip in it.
    fn place_remote(&self, id: &str, job: &mut Job) -> Result<Option<PathBuf>, String> {
        if self.origin == Origin::Local {
            if let Some(StylePrompt::Upload { wav }) = &job.prompt {
                if job.out_dir.as_os_str().is_empty() {
                    return Err(format!("job `{id}` has no `out_dir`"));
                }
                let path = job.out_dir.join(format!("{id}.prompt.wav"));
                store_upload(wav, &job.out_dir, &path)?;
                job.prompt = Some(StylePrompt::Audio { path });
            }
            return Ok(None);
        }
        if !job.out_dir.as_os_str().is_empty() {
            return Err(
                "`out_dir` is not accepted over the network: the server writes each job under its own output root"
                    .into(),
            );
        }
        if matches!(job.prompt, Some(StylePrompt::Audio { .. })) {
            return Err(
                "`prompt.path` is not accepted over the network: upload the clip as {\"kind\":\"upload\",\"wav\":\"<base64 of a WAV file>\"}"
                    .into(),
            );
        }
        let root = self
            .engine
            .inner
            .out_root
            .as_ref()
            .ok_or("this server has no output root for network jobs (--out-root)")?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dir = root.join(format!("{stamp}-c{}-{id}", self.client));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("the server cannot create its job folder: {e}"))?;
        if let Some(StylePrompt::Upload { wav }) = &job.prompt {
            let path = dir.join("prompt.wav");
            if let Err(e) = store_upload(wav, &dir, &path) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            job.prompt = Some(StylePrompt::Audio { path });
        }
        job.out_dir = dir.clone();
        Ok(Some(dir))
    }

    fn submit(&mut self, id: String, mut job: Job) {
        if let Err(why) = check_id(&id) {
            return self.error(Some(&id), format!("job id cannot be used: {why}"));
        }
        let inner = &self.engine.inner;
        {
            let st = inner.lock();
            if st.closed || st.shutting_down {
                return self.error(Some(&id), "the engine has stopped taking jobs");
            }
            let mine = st.queues.get(&self.client);
            let busy = st
                .running
                .as_ref()
                .is_some_and(|(c, r, _)| *c == self.client && *r == id)
                || mine.is_some_and(|q| q.iter().any(|j| j.id == id));
            if busy {
                return self.error(
                    Some(&id),
                    format!("a job with id `{id}` is already queued or running"),
                );
            }
            if mine.map_or(0, VecDeque::len) >= inner.limits.queue_per_client {
                return self.error(
                    Some(&id),
                    format!(
                        "queue full: at most {} jobs of one client may wait; send it again when one has finished",
                        inner.limits.queue_per_client
                    ),
                );
            }
            if st.queued_total() >= inner.limits.queue_total {
                return self.error(
                    Some(&id),
                    format!(
                        "the engine's queue is full ({} jobs wait); send it again later",
                        inner.limits.queue_total
                    ),
                );
            }
        }
        let served_dir = match self.place_remote(&id, &mut job) {
            Ok(d) => d,
            Err(message) => return self.error(Some(&id), message),
        };
        // Input problems are answered at once instead of when the job's turn comes.
        if let Err(e) = pipeline::prepare(&id, &job) {
            if let Some(dir) = &served_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return self.error(Some(&id), e.to_string());
        }
        let mut st = inner.lock();
        if st.closed {
            drop(st);
            return self.error(Some(&id), "the engine has stopped taking jobs");
        }
        let k = st.queues.get(&self.client).map_or(0, VecDeque::len);
        let position = st.position(self.client, k);
        st.queues.entry(self.client).or_default().push_back(Queued {
            client: self.client,
            id: id.clone(),
            job,
            served_dir,
            sink: self.sink.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
        });
        st.touch();
        // `queued` goes out before the worker can send `started`.
        self.sink.send(&Event::Queued { id, position });
        drop(st);
        inner.wake.notify_all();
    }

    fn cancel(&self, id: &str) {
        let st = self.engine.inner.lock();
        let flag = st
            .running
            .iter()
            .filter(|(c, r, _)| *c == self.client && r == id)
            .map(|(_, _, f)| f.clone())
            .chain(
                st.queues
                    .get(&self.client)
                    .into_iter()
                    .flatten()
                    .filter(|j| j.id == id)
                    .map(|j| j.cancel.clone()),
            )
            .next();
        drop(st);
        match flag {
            // The worker reports `cancelled` when it stops the job or reaches it in the queue.
            Some(flag) => flag.store(true, Ordering::SeqCst),
            None => self.error(Some(id), format!("no queued or running job `{id}`")),
        }
    }

    /// Cancels every job of this client (its connection is gone).
    fn cancel_all(&self) {
        let st = self.engine.inner.lock();
        if let Some((c, _, f)) = &st.running {
            if *c == self.client {
                f.store(true, Ordering::SeqCst);
            }
        }
        for j in st.queues.get(&self.client).into_iter().flatten() {
            j.cancel.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if !self.keep_jobs || self.sink.is_dead() {
            self.cancel_all();
        }
        let mut st = self.engine.inner.lock();
        st.connections = st.connections.saturating_sub(1);
        st.touch();
    }
}

/// Decodes an uploaded clip and stores it as `path` in `dir`, checking its size and length.
fn store_upload(wav_b64: &str, dir: &Path, path: &Path) -> Result<(), String> {
    if wav_b64.len() > MAX_UPLOAD_BYTES.div_ceil(3) * 4 {
        return Err(format!(
            "uploaded prompt clip is larger than {} MiB (send at most {MAX_UPLOAD_SECONDS} s, as 16-bit PCM)",
            MAX_UPLOAD_BYTES >> 20
        ));
    }
    let bytes = decode_base64(wav_b64).map_err(|e| format!("uploaded prompt clip is {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("storing the uploaded clip: {e}"))?;
    std::fs::write(path, &bytes).map_err(|e| format!("storing the uploaded clip: {e}"))?;
    let checked = match crate::io::audio::probe_wav(path) {
        Ok(info) if info.seconds <= MAX_UPLOAD_SECONDS + 1e-6 => Ok(()),
        Ok(info) => Err(format!(
            "uploaded prompt clip is {:.1} s; at most {MAX_UPLOAD_SECONDS} s are accepted (the model uses the first 10 s)",
            info.seconds
        )),
        Err(e) => Err(format!(
            "uploaded prompt clip is not a readable WAV file: {e}"
        )),
    };
    if checked.is_err() {
        let _ = std::fs::remove_file(path);
    }
    checked
}

fn worker(mut model: Box<dyn SongModel>, inner: Arc<Inner>) {
    loop {
        let q = {
            let mut st = inner.lock();
            loop {
                if let Some(q) = st.next_job() {
                    if q.cancel.load(Ordering::SeqCst) {
                        drop(st);
                        q.sink.send(&Event::Cancelled { id: q.id.clone() });
                        if let Some(dir) = &q.served_dir {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                        st = inner.lock();
                        st.touch();
                        continue;
                    }
                    st.running = Some((q.client, q.id.clone(), q.cancel.clone()));
                    st.touch();
                    break q;
                }
                if st.closed {
                    return;
                }
                st = inner.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        run_one(model.as_mut(), &q);
        let mut st = inner.lock();
        st.running = None;
        st.touch();
        inner.wake.notify_all();
    }
}

/// A fresh seed for a job without one; kept below 2^32 so JSON clients in any language read it
/// back exactly.
pub fn random_seed() -> u64 {
    u64::from(rand::random::<u32>())
}

fn run_one(model: &mut dyn SongModel, q: &Queued) {
    let error = |message: String| Event::Error {
        id: Some(q.id.clone()),
        message,
    };
    let prepared = match pipeline::prepare(&q.id, &q.job) {
        Ok(p) => p,
        Err(e) => return q.sink.send(&error(e.to_string())),
    };
    let seed = q.job.seed.unwrap_or_else(random_seed);
    q.sink.send(&Event::Started {
        id: q.id.clone(),
        seed,
        max_frames: model.max_frames(),
    });
    // Stages run side by side (LM and renderer), so each is throttled on its own.
    let mut last: Vec<(Stage, Instant)> = Vec::new();
    let mut progress = |p: crate::progress::Progress| {
        if q.cancel.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        let seen = last.iter().position(|(s, _)| *s == p.stage);
        let due = seen.is_none_or(|i| last[i].1.elapsed() >= PROGRESS_INTERVAL);
        if due || p.done == p.total {
            match seen {
                Some(i) => last[i].1 = Instant::now(),
                None => last.push((p.stage, Instant::now())),
            }
            q.sink.send(&Event::Progress {
                id: q.id.clone(),
                stage: p.stage,
                done: p.done,
                total: p.total,
                rate: p.rate,
            });
        }
        ControlFlow::Continue(())
    };
    let mut on_chunk = |c: &AudioChunk| {
        let n = c.frames();
        let mut at = 0;
        while at < n {
            let len = CHUNK_FRAMES.min(n - at);
            let channels: Vec<&[f32]> = c.channels.iter().map(|ch| &ch[at..at + len]).collect();
            q.sink.send(&Event::Chunk {
                id: q.id.clone(),
                stem: c.stem,
                start: c.start + at as u64,
                frames: len as u64,
                data: encode_samples(&channels),
            });
            at += len;
        }
    };
    match pipeline::run_streaming(model, &prepared, seed, &mut progress, &mut on_chunk) {
        Ok(mut out) => {
            if q.served_dir.is_some() {
                // A network client learns file names, not the server's folders.
                for path in out.stems.values_mut() {
                    if let Some(name) = path.file_name() {
                        *path = PathBuf::from(name);
                    }
                }
            }
            q.sink.send(&Event::Done {
                id: q.id.clone(),
                stems: out.stems,
                sample_rate: out.sample_rate,
                frames: out.frames,
                seed,
            })
        }
        Err(PipelineError::Cancelled) => q.sink.send(&Event::Cancelled { id: q.id.clone() }),
        Err(e) => q.sink.send(&error(e.to_string())),
    }
    // The job's tensors are gone; an idle engine should not keep their pages.
    crate::heap::release_free_memory();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::pipeline::tests::{echo_model, job};
    use std::io::Cursor;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn events(&self) -> Vec<Event> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn ends(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Done { id, .. } => Some(format!("done {id}")),
                Event::Cancelled { id } => Some(format!("cancelled {id}")),
                Event::Error { id, .. } => Some(format!("error {id:?}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn queued_jobs_run_in_order_and_a_queued_cancel_skips_one() {
        let out = std::env::temp_dir().join(format!("songgen-svc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let engine = Engine::start(Box::new(echo_model(20)));
        let mut lines = String::new();
        for id in ["a", "b", "c"] {
            let req = Request::Generate {
                id: id.into(),
                job: Job {
                    seed: Some(1),
                    ..job(&out)
                },
            };
            lines += &(serde_json::to_string(&req).unwrap() + "\n");
        }
        lines += "{\"op\":\"cancel\",\"id\":\"b\"}\nnot json\n{\"op\":\"cancel\",\"id\":\"zz\"}\n";
        let captured = Captured::default();
        let sink = EventSink::new(captured.clone());
        engine.serve_connection(Cursor::new(lines), sink.clone(), Origin::Local, None, true);
        engine.join();
        sink.finish();
        let events = captured.events();
        assert!(matches!(events[0], Event::Ready { .. }));
        assert_eq!(
            ends(&events),
            [
                "error None",
                "error Some(\"zz\")",
                "done a",
                "cancelled b",
                "done c"
            ],
            "{events:?}"
        );
        assert!(out.join("c_bgm.wav").is_file() && !out.join("b.wav").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn clients_take_turns_and_see_only_their_own_jobs() {
        let out = std::env::temp_dir().join(format!("songgen-svc-rr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let engine = Engine::start(Box::new(echo_model(30)));
        let (ca, cb) = (Captured::default(), Captured::default());
        let (sa, sb) = (EventSink::new(ca.clone()), EventSink::new(cb.clone()));
        let mut a = engine.session(Origin::Local, sa.clone(), None);
        let mut b = engine.session(Origin::Local, sb.clone(), None);
        let gen = |id: &str, dir: &str| Request::Generate {
            id: id.into(),
            job: Job {
                seed: Some(1),
                ..job(&out.join(dir))
            },
        };
        // A queues three jobs before B queues two: B's run between A's.
        for id in ["a1", "a2", "a3"] {
            let _ = a.handle(gen(id, id));
        }
        for id in ["b1", "b2"] {
            let _ = b.handle(gen(id, id));
        }
        // B cannot cancel A's job, and sees only its own in `status`.
        let _ = b.handle(Request::Cancel { id: "a3".into() });
        let _ = b.handle(Request::Status);
        // Same id from two clients is fine (their own namespaces).
        let _ = b.handle(gen("a1", "b-a1"));
        let mut order = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while order.len() < 6 {
            assert!(Instant::now() < deadline, "{order:?}");
            std::thread::sleep(Duration::from_millis(5));
            let st = engine.inner.lock();
            if let Some((c, id, _)) = &st.running {
                let tag = format!("{c}:{id}");
                if order.last() != Some(&tag) {
                    order.push(tag);
                }
            }
        }
        drop((a, b));
        engine.join();
        sa.finish();
        sb.finish();
        let (ea, eb) = (ca.events(), cb.events());
        let ids = |evs: &[Event]| -> Vec<String> {
            evs.iter()
                .filter_map(|e| match e {
                    Event::Queued { id, .. } | Event::Started { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect()
        };
        assert!(ids(&ea).iter().all(|i| i.starts_with('a')), "{ea:?}");
        assert!(
            ids(&eb).iter().all(|i| i.starts_with('b') || i == "a1"),
            "{eb:?}"
        );
        assert!(eb
            .iter()
            .any(|e| matches!(e, Event::Error { id: Some(i), .. } if i == "a3")));
        assert!(
            eb.iter().any(
                |e| matches!(e, Event::Status { running: None, queued } if queued == &["b1", "b2"])
            ),
            "{eb:?}"
        );
        let clients: Vec<&str> = order.iter().map(|t| t.split(':').next().unwrap()).collect();
        // a1 may already run when b's arrive; after that the clients alternate.
        for w in clients[1..5].windows(2) {
            assert_ne!(w[0], w[1], "clients did not take turns: {order:?}");
        }
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn lines_are_bounded_and_bad_bytes_get_an_error() {
        let mut long = vec![b'x'; 100];
        long.push(b'\n');
        long.extend_from_slice(b"ok\n");
        let mut r = Cursor::new(long.clone());
        assert!(matches!(read_line_bounded(&mut r, 50), Line::TooLong));
        let mut r = Cursor::new(long);
        assert!(matches!(read_line_bounded(&mut r, 100), Line::Bytes(b) if b.len() == 100));
        assert!(matches!(read_line_bounded(&mut r, 100), Line::Bytes(b) if b == b"ok"));
        assert!(matches!(read_line_bounded(&mut r, 100), Line::Eof));

        let engine = Engine::start(Box::new(echo_model(1)));
        let captured = Captured::default();
        let sink = EventSink::new(captured.clone());
        let input = b"\xff\xfe{\n{\"op\":\"generate\",\"id\":\"../x\",\"job\":{\"lyrics\":\"a\",\"out_dir\":\"/tmp\"}}\n{\"op\":\"status\",\"x\":1e999}\n{\"op\":\"status\"}\n".to_vec();
        engine.serve_connection(Cursor::new(input), sink.clone(), Origin::Local, None, true);
        engine.join();
        sink.finish();
        let events = captured.events();
        let errors: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::Error { message, .. } => Some(message.as_str()),
                _ => None,
            })
            .collect();
        assert!(errors[0].contains("UTF-8"), "{errors:?}");
        assert!(errors[1].contains("id"), "{errors:?}");
        assert!(
            matches!(events.last(), Some(Event::Status { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn a_stalled_client_loses_its_connection_without_blocking_the_engine() {
        struct Stalled(Arc<AtomicBool>);
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                while !self.0.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::io::Error::other(format!(
                    "closed ({} bytes)",
                    buf.len()
                )))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let sink = EventSink::bounded(
            Stalled(closed.clone()),
            4096,
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        let t = Instant::now();
        let big = Event::Error {
            id: None,
            message: "x".repeat(1000),
        };
        for _ in 0..100 {
            sink.send(&big);
        }
        assert!(sink.is_dead(), "the sink gave up on its peer");
        assert!(closed.load(Ordering::SeqCst), "the connection was closed");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "sending never blocked"
        );
        sink.finish();

        // A peer that stops reading at the end: finishing gives up on it after the limit.
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sink = EventSink::bounded(
            Stalled(stop.clone()),
            usize::MAX,
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        sink.send(&big);
        let t = Instant::now();
        sink.finish_within(Duration::from_millis(200));
        assert!(
            stop.load(Ordering::SeqCst),
            "the stalled connection was shut down"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "finishing did not hang"
        );
    }
}

/// A property test of the request parser and the session state machine: random sessions of
/// valid, mutated and garbage lines, from local and network clients, against a live engine.
/// `SONGGEN_FUZZ_CASES` sets the number of sessions (CI runs the default, a few seconds).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::service::pipeline::tests::echo_model;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn valid_line(rng: &mut StdRng, out: &Path, remote: bool) -> String {
        let long = "z".repeat(80);
        let id = ["a", "b", "take-1", "../x", "", "x/y", "é", &long][rng.random_range(0..8)];
        match rng.random_range(0..9) {
            7 | 8 => {
                // A job every check accepts.
                let id = ["a", "b", "take-1"][rng.random_range(0..3)];
                let gen_type = ["mixed", "vocal"][rng.random_range(0..2)];
                let mut job = serde_json::json!({
                    "lyrics": "[verse] hi there ; [chorus] la",
                    "gen_type": gen_type,
                    "seed": 1,
                });
                if !remote {
                    job["out_dir"] = serde_json::json!(out.join(id));
                }
                serde_json::json!({"op": "generate", "id": id, "job": job}).to_string()
            }
            0 | 1 => {
                let lyrics = [
                    "[verse] hi there ; [chorus] la",
                    "",
                    "no tags",
                    "[verse] a\u{0}b",
                ][rng.random_range(0..4)];
                let gen_type =
                    ["mixed", "vocal", "bgm", "separate", "nope"][rng.random_range(0..5)];
                let seed = [
                    serde_json::json!(1),
                    serde_json::json!(-1),
                    serde_json::json!(1e300),
                    serde_json::json!("7"),
                ][rng.random_range(0..4)]
                .clone();
                let mut job = serde_json::json!({
                    "lyrics": lyrics,
                    "gen_type": gen_type,
                    "seed": seed,
                });
                if !remote || rng.random_bool(0.3) {
                    job["out_dir"] =
                        serde_json::json!(out.join(format!("d{}", rng.random_range(0..3))));
                }
                match rng.random_range(0..5) {
                    0 => {
                        job["prompt"] =
                            serde_json::json!({"kind": "audio", "path": "/nonexistent/clip.wav"})
                    }
                    1 => {
                        job["prompt"] = serde_json::json!({"kind": "upload", "wav": "bm90IGEgd2F2"})
                    }
                    2 => job["prompt"] = serde_json::json!({"kind": "auto", "genre": "Pop"}),
                    3 => {
                        job["sampling"] =
                            serde_json::json!({"top_k": u64::MAX, "temperature": "hot"})
                    }
                    _ => {}
                }
                serde_json::json!({"op": "generate", "id": id, "job": job}).to_string()
            }
            2 => serde_json::json!({"op": "cancel", "id": id}).to_string(),
            3 => r#"{"op":"status"}"#.into(),
            4 => {
                let token = [TOKEN, "wrong"][rng.random_range(0..2)];
                serde_json::json!({"op": "auth", "token": token}).to_string()
            }
            5 => r#"{"op":"shutdown"}"#.into(),
            _ => r#"{"op":"generate","id":1,"job":[]}"#.into(),
        }
    }

    fn mutate(rng: &mut StdRng, line: String) -> Vec<u8> {
        let mut b = line.into_bytes();
        for _ in 0..rng.random_range(0..4) {
            if b.is_empty() {
                break;
            }
            let i = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[i] = rng.random(),
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, rng.random()),
            }
        }
        b.retain(|c| *c != b'\n');
        b
    }

    #[test]
    fn random_sessions_never_panic_and_every_job_ends_once() {
        let cases: usize = std::env::var("SONGGEN_FUZZ_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(400);
        let root = std::env::temp_dir().join(format!("songgen-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out_root = root.join("served");
        let engine = Engine::start_with(
            Box::new(echo_model(1)),
            EngineOptions {
                out_root: Some(out_root.clone()),
                limits: Limits {
                    queue_per_client: 3,
                    queue_total: 6,
                    ..Limits::default()
                },
            },
        );
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut sinks = Vec::new();
        for case in 0..cases {
            let remote = rng.random_bool(0.5);
            let out = root.join(format!("local-{case}"));
            let captured = Lines::default();
            let sink = EventSink::new(captured.clone());
            let origin = if remote {
                Origin::Remote
            } else {
                Origin::Local
            };
            let mut session = engine.session(origin, sink.clone(), remote.then(|| TOKEN.into()));
            // Half the clients stay until their jobs are done, half leave at once (cancelling them).
            let stay = rng.random_bool(0.5);
            session.keep_jobs = stay;
            if remote && rng.random_bool(0.8) {
                let _ = session.handle_line(&format!(r#"{{"op":"auth","token":"{TOKEN}"}}"#));
            }
            for _ in 0..rng.random_range(1..12) {
                let line = valid_line(&mut rng, &out, remote);
                let bytes = match rng.random_range(0..4) {
                    0 => (0..rng.random_range(0..300))
                        .map(|_| rng.random::<u8>())
                        .filter(|c| *c != b'\n')
                        .collect(),
                    1 => mutate(&mut rng, line),
                    _ => line.into_bytes(),
                };
                // Shutdown is never sent by a local client here (it would end the run).
                if !remote && bytes.windows(8).any(|w| w == b"shutdown") {
                    continue;
                }
                if session.handle_bytes(&bytes).is_break() {
                    break;
                }
            }
            drop(session);
            if stay {
                // Wait for this client's jobs (the queue's bounds are small).
                let deadline = Instant::now() + Duration::from_secs(30);
                while engine.inner.lock().busy() {
                    assert!(Instant::now() < deadline, "the engine got stuck");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sinks.push((remote, out, captured, sink));
        }
        // The engine still serves: a new client gets its status.
        let captured = Lines::default();
        let sink = EventSink::new(captured.clone());
        let mut s = engine.session(Origin::Local, sink.clone(), None);
        let _ = s.handle(Request::Status);
        drop(s);
        engine.join();
        sink.finish();
        assert!(String::from_utf8_lossy(&captured.0.lock().unwrap()).contains("\"status\""));
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (remote, out, captured, sink) in sinks {
            sink.finish();
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let mut open: BTreeMap<String, usize> = BTreeMap::new();
            for line in text.lines() {
                let ev: Event =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                let kind = match (&ev, remote) {
                    (Event::Done { .. }, true) => "remote done",
                    (Event::Done { .. }, false) => "local done",
                    (Event::Queued { .. }, _) => "queued",
                    (Event::Error { .. }, _) => "error",
                    (Event::Ready { .. }, true) => "remote ready",
                    _ => "other",
                };
                *seen.entry(kind).or_default() += 1;
                match ev {
                    Event::Queued { id, .. } => *open.entry(id).or_default() += 1,
                    Event::Done { id, .. } | Event::Cancelled { id } => {
                        let n = open
                            .get_mut(&id)
                            .unwrap_or_else(|| panic!("end of unknown job {id}: {text}"));
                        *n -= 1;
                    }
                    // An error ends a queued job, except the refusal of a duplicate id.
                    Event::Error {
                        id: Some(id),
                        message,
                    } if !message.contains("already queued or running") => {
                        if let Some(n) = open.get_mut(&id).filter(|n| **n > 0) {
                            *n -= 1;
                        }
                    }
                    _ => {}
                }
            }
            assert!(
                open.values().all(|n| *n == 0),
                "a job without exactly one end: {open:?}\n{text}"
            );
            // A network client never makes the server write where it asked.
            if remote {
                assert!(!out.exists(), "a network client wrote to {}", out.display());
            }
        }
        // The sessions reached every state: jobs ran for both kinds of client, inputs were refused.
        for kind in [
            "remote done",
            "local done",
            "queued",
            "error",
            "remote ready",
        ] {
            assert!(
                seen.get(kind).is_some_and(|n| *n > 0),
                "never saw {kind}: {seen:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
