//! The engine service behind `songgen serve`: the JSON-lines protocol of [`crate::protocol`]
//! over any byte streams (stdin/stdout, TCP connections).
//!
//! One model is loaded and shared: a single worker thread runs the jobs in submission order,
//! fed by a channel. Each connection reads requests on its own thread; the events of a job go to
//! the connection that submitted it. Cancelling a queued job drops it when its turn comes;
//! cancelling the running job stops it at its next unit of work.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::protocol::{encode_samples, Event, Job, Request, Stage, PROTOCOL_VERSION};
use crate::service::pipeline::AudioChunk;
use crate::service::pipeline::{self, PipelineError, SongModel};

/// Where a connection's events go: one JSON object per line, flushed after each.
#[derive(Clone)]
pub struct EventSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl EventSink {
    pub fn new(w: impl Write + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(w))))
    }

    /// Sends one event; a closed connection is not an error for the engine.
    pub fn send(&self, event: &Event) {
        let line = serde_json::to_string(event).expect("events serialise");
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(w, "{line}").and_then(|()| w.flush());
    }
}

struct Queued {
    id: String,
    job: Job,
    sink: EventSink,
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    running: Option<(String, Arc<AtomicBool>)>,
    queued: VecDeque<(String, Arc<AtomicBool>)>,
    shutting_down: bool,
}

/// A running engine: a model, its worker thread and the job queue.
pub struct Engine {
    state: Arc<Mutex<State>>,
    jobs: Mutex<Option<Sender<Queued>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    model_name: String,
    device: String,
}

/// Minimum time between two progress events of one stage (the last unit is always sent).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Longest `chunk` event in sample frames (5 s: a 2.6 MB line); longer final spans are split.
const CHUNK_FRAMES: usize = 240_000;

impl Engine {
    /// Starts the worker thread that owns `model`.
    pub fn start(model: Box<dyn SongModel>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let state = Arc::new(Mutex::new(State::default()));
        let model_name = model.name();
        let device = model.device();
        let worker_state = state.clone();
        let worker = std::thread::Builder::new()
            .name("songgen-worker".into())
            .spawn(move || worker(model, rx, worker_state))
            .expect("spawn worker thread");
        Self {
            state,
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            model_name,
            device,
        }
    }

    /// The `ready` event a new connection receives first.
    pub fn ready_event(&self) -> Event {
        Event::Ready {
            protocol: PROTOCOL_VERSION,
            model: self.model_name.clone(),
            device: self.device.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a `shutdown` request was received.
    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Handles one request line from a connection; events go to `sink`.
    pub fn handle_line(&self, line: &str, sink: &EventSink) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        match serde_json::from_str::<Request>(line) {
            Ok(req) => self.handle(req, sink),
            Err(e) => sink.send(&Event::Error {
                id: None,
                message: format!("unreadable request ({e}): {line}"),
            }),
        }
    }

    pub fn handle(&self, req: Request, sink: &EventSink) {
        match req {
            Request::Generate { id, job } => self.submit(id, job, sink),
            Request::Cancel { id } => self.cancel(&id, sink),
            Request::Status => {
                let st = self.lock();
                sink.send(&Event::Status {
                    running: st.running.as_ref().map(|(id, _)| id.clone()),
                    queued: st.queued.iter().map(|(id, _)| id.clone()).collect(),
                });
            }
            Request::Shutdown => self.shutdown(),
            Request::Auth { .. } => {}
        }
    }

    fn submit(&self, id: String, job: Job, sink: &EventSink) {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(jobs) = jobs.as_ref() else {
            sink.send(&Event::Error {
                id: Some(id),
                message: "the engine has stopped taking jobs".into(),
            });
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut st = self.lock();
            if st.shutting_down {
                sink.send(&Event::Error {
                    id: Some(id),
                    message: "the engine is shutting down".into(),
                });
                return;
            }
            let busy = st.running.as_ref().is_some_and(|(r, _)| *r == id)
                || st.queued.iter().any(|(q, _)| *q == id);
            if busy {
                sink.send(&Event::Error {
                    message: format!("a job with id `{id}` is already queued or running"),
                    id: Some(id),
                });
                return;
            }
            // Input problems are answered at once instead of when the job's turn comes.
            if let Err(e) = pipeline::prepare(&id, &job) {
                sink.send(&Event::Error {
                    id: Some(id),
                    message: e.to_string(),
                });
                return;
            }
            let position = st.queued.len() + usize::from(st.running.is_some());
            st.queued.push_back((id.clone(), cancel.clone()));
            sink.send(&Event::Queued {
                id: id.clone(),
                position,
            });
        }
        let _ = jobs.send(Queued {
            id,
            job,
            sink: sink.clone(),
            cancel,
        });
    }

    fn cancel(&self, id: &str, sink: &EventSink) {
        let st = self.lock();
        let flag = st
            .running
            .iter()
            .chain(st.queued.iter())
            .find(|(j, _)| j == id)
            .map(|(_, f)| f.clone());
        match flag {
            // The worker reports `cancelled` when it stops the job or reaches it in the queue.
            Some(flag) => flag.store(true, Ordering::SeqCst),
            None => sink.send(&Event::Error {
                id: Some(id.to_string()),
                message: format!("no queued or running job `{id}`"),
            }),
        }
    }

    /// Cancels everything and stops accepting jobs; [`Engine::join`] then returns once the
    /// running job has stopped.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        for (_, flag) in st.running.iter().chain(st.queued.iter()) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Serves one connection until its input ends or a `shutdown` arrives.
    pub fn serve_connection(&self, input: impl BufRead, sink: EventSink) {
        sink.send(&self.ready_event());
        for line in input.lines() {
            let Ok(line) = line else { break };
            self.handle_line(&line, &sink);
            if self.is_shutting_down() {
                break;
            }
        }
    }

    /// Waits until every queued job has finished (or been cancelled) and the worker has exited.
    /// Later submissions are refused.
    pub fn join(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

fn worker(mut model: Box<dyn SongModel>, rx: Receiver<Queued>, state: Arc<Mutex<State>>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    for q in rx {
        {
            let mut st = lock();
            st.queued.retain(|(id, _)| *id != q.id);
            if q.cancel.load(Ordering::SeqCst) {
                drop(st);
                q.sink.send(&Event::Cancelled { id: q.id });
                continue;
            }
            st.running = Some((q.id.clone(), q.cancel.clone()));
        }
        run_one(model.as_mut(), &q);
        lock().running = None;
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
        Ok(out) => q.sink.send(&Event::Done {
            id: q.id.clone(),
            stems: out.stems,
            sample_rate: out.sample_rate,
            frames: out.frames,
            seed,
        }),
        Err(PipelineError::Cancelled) => q.sink.send(&Event::Cancelled { id: q.id.clone() }),
        Err(e) => q.sink.send(&error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::pipeline::tests::{job, EchoModel};
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

    #[test]
    fn queued_jobs_run_in_order_and_a_queued_cancel_skips_one() {
        let out = std::env::temp_dir().join(format!("songgen-svc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let engine = Engine::start(Box::new(EchoModel { steps: 20 }));
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
        engine.serve_connection(Cursor::new(lines), EventSink::new(captured.clone()));
        engine.join();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let events: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(matches!(events[0], Event::Ready { .. }));
        let ends: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Done { id, .. } => Some(format!("done {id}")),
                Event::Cancelled { id } => Some(format!("cancelled {id}")),
                Event::Error { id, .. } => Some(format!("error {id:?}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            ends,
            [
                "error None",
                "error Some(\"zz\")",
                "done a",
                "cancelled b",
                "done c"
            ],
            "{text}"
        );
        assert!(out.join("c_bgm.wav").is_file() && !out.join("b.wav").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
