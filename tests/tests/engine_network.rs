//! `songgen serve --listen` on loopback TCP with the tiny model, as an untrusted network client
//! sees it: authentication first (none or a wrong token closes the connection), no server paths
//! (`out_dir`, `prompt.path`) and no `shutdown` from the network, stems back as `chunk` events
//! with an uploaded style clip, a client that never reads does not hold up another's job, and
//! malformed input (a 10 MB line, invalid UTF-8, random bytes) leaves the server serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use songgen_engine::protocol::{decode_samples, encode_base64, Event};
use songgen_tests::{songgen, temp_dir, tiny_model};

struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
    out_root: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let tiny = tiny_model::write_with(&dir.join("tiny"), 7, 6).unwrap();
    let token_file = dir.join("config/engine.token");
    let out_root = dir.join("served");
    let mut child = songgen(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--accept-license",
            "--device",
            "cpu",
        ])
        .arg("--model")
        .arg(&tiny.model_dir)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--out-root")
        .arg(&out_root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut seen = String::new();
    while addr.is_none() {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "server ended: {seen}"
        );
        seen += &line;
        if let Some(a) = line.trim().strip_prefix("songgen: listening on ") {
            addr = Some(a.parse().unwrap());
        }
    }
    // The token was created (mode 0600) and printed once.
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(seen.contains(&token), "{seen}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::thread::spawn(move || for _ in err.lines() {});
    Server {
        child,
        addr: addr.unwrap(),
        token,
        out_root,
    }
}

struct Client {
    stream: TcpStream,
    events: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let events = BufReader::new(stream.try_clone().unwrap());
        Self { stream, events }
    }

    fn authed(server: &Server) -> Self {
        let mut c = Self::connect(server.addr);
        c.send(&serde_json::json!({"op": "auth", "token": server.token}).to_string());
        assert!(matches!(c.next(), Some(Event::Ready { .. })));
        c
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(line.as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.write_all(b"\n").unwrap();
        self.stream.flush().unwrap();
    }

    /// The next event; `None` when the server closed the connection.
    fn next(&mut self) -> Option<Event> {
        let mut line = String::new();
        match self.events.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))),
        }
    }

    fn expect_error(&mut self, what: &str) -> String {
        match self.next() {
            Some(Event::Error { message, .. }) => message,
            other => panic!("{what}: expected an error, got {other:?}"),
        }
    }

    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.events.read_to_end(&mut rest), Ok(_)) && rest.is_empty()
    }

    fn status_works(&mut self) {
        self.send(r#"{"op":"status"}"#);
        match self.next() {
            Some(Event::Status { .. }) => {}
            other => panic!("status: {other:?}"),
        }
    }
}

fn job(id: &str, extra: serde_json::Value) -> String {
    let mut job = serde_json::json!({
        "lyrics": "[verse] hello there. how are you ; [chorus] la la la",
        "descriptions": "female, pop",
        "seed": 3,
        "gen_type": "separate",
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    serde_json::json!({"op": "generate", "id": id, "job": job}).to_string()
}

/// A 12 s 16-bit WAV clip (a chord), as a client would upload it.
fn clip_wav(dir: &Path) -> Vec<u8> {
    let path = dir.join("clip.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for k in 0..44_100 * 12 {
        let t = k as f32 / 44_100.0;
        let v = 0.2 * ((t * 220.0 * 6.283).sin() + (t * 277.0 * 6.283).sin());
        w.write_sample((v * 32767.0) as i16).unwrap();
        w.write_sample((v * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn a_network_client_authenticates_names_no_paths_and_gets_its_stems_as_chunks() {
    let dir = temp_dir("net");
    let server = start(&dir);

    // No auth: anything first is refused and the connection closed.
    let mut c = Client::connect(server.addr);
    c.send(r#"{"op":"status"}"#);
    assert!(c.expect_error("no auth").contains("authenticate"));
    assert!(c.closed(), "the connection was closed");
    // Wrong token.
    let mut c = Client::connect(server.addr);
    c.send(r#"{"op":"auth","token":"not-the-token-at-all"}"#);
    assert!(c.expect_error("wrong token").contains("wrong token"));
    assert!(c.closed());

    // A client that submits a job and never reads its events.
    let mut stalled = Client::authed(&server);
    stalled.send(&job("stalled", serde_json::json!({})));

    let mut c = Client::authed(&server);
    // Server paths and shutdown are refused over the network; the server keeps serving.
    c.send(&job("x", serde_json::json!({"out_dir": dir.join("evil")})));
    assert!(c.expect_error("out_dir").contains("out_dir"));
    c.send(&job(
        "y",
        serde_json::json!({"prompt": {"kind": "audio", "path": "/etc/hostname"}}),
    ));
    assert!(c.expect_error("prompt.path").contains("prompt.path"));
    c.send(r#"{"op":"shutdown"}"#);
    assert!(c.expect_error("shutdown").contains("network"));
    assert!(!dir.join("evil").exists());
    // Another client's job is neither visible nor cancellable.
    c.send(r#"{"op":"cancel","id":"stalled"}"#);
    assert!(c
        .expect_error("cancel")
        .contains("no queued or running job"));

    // A real job with an uploaded clip: its stems come back as chunks.
    let wav = encode_base64(&clip_wav(&dir));
    let t0 = Instant::now();
    c.send(&job(
        "song",
        serde_json::json!({"descriptions": null, "prompt": {"kind": "upload", "wav": wav}}),
    ));
    let mut samples: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    let done = loop {
        match c.next().expect("connection open") {
            Event::Chunk {
                id,
                stem,
                start,
                frames,
                data,
            } => {
                assert_eq!(id, "song");
                let s = samples.entry(stem.name().to_owned()).or_default();
                assert_eq!(start as usize * 2, s.len(), "chunks in order");
                let d = decode_samples(&data, 2).unwrap();
                assert_eq!(d.len(), frames as usize * 2);
                s.extend(d);
            }
            Event::Done {
                id, stems, frames, ..
            } => {
                assert_eq!(id, "song");
                break (stems, frames);
            }
            Event::Error { id, message } => panic!("{id:?}: {message}"),
            _ => {}
        }
    };
    let waited = t0.elapsed();
    let (stems, frames) = done;
    assert_eq!(stems.len(), 3);
    for (name, s) in &samples {
        assert_eq!(s.len(), frames as usize * 2, "{name}");
    }
    // `done` names files, not the server's folders; they lie under the output root.
    for path in stems.values() {
        assert!(
            path.is_relative() && path.components().count() == 1,
            "{path:?}"
        );
    }
    let job_dirs: Vec<PathBuf> = std::fs::read_dir(&server.out_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let song_dir = job_dirs
        .iter()
        .find(|d| d.to_string_lossy().ends_with("-song"))
        .unwrap_or_else(|| panic!("{job_dirs:?}"));
    assert!(song_dir.join("song_vocal.wav").is_file());
    assert!(song_dir.join("prompt.wav").is_file());
    // The stalled client's job ran first; ours waited for it, not for the stalled reader.
    assert!(waited < Duration::from_secs(240), "{waited:?}");

    // Malformed input: a 10 MB line, invalid UTF-8, random bytes.
    let mut m = Client::authed(&server);
    m.send(&"x".repeat(10 << 20));
    m.expect_error("10 MB line");
    m.send_bytes(b"\xff\xfe\xfd{\"op\"");
    assert!(m.expect_error("invalid UTF-8").contains("UTF-8"));
    m.status_works();
    let mut r = Client::authed(&server);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    r.stream.write_all(&noise).unwrap();
    r.send("");
    // Either errors or a closed connection; then the server still serves new clients.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(ev) = r.next() {
        assert!(matches!(ev, Event::Error { .. }), "{ev:?}");
        if Instant::now() > deadline {
            break;
        }
        r.stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    Client::authed(&server).status_works();
    drop(stalled);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_open_network_engine_and_a_readable_token_are_refused_at_start_up() {
    let dir = temp_dir("net-refuse");
    let tiny = tiny_model::write_with(&dir.join("tiny"), 7, 2).unwrap();
    let o = songgen(&dir)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--no-auth",
            "--accept-license",
        ])
        .arg("--model")
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--no-auth is refused"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let token = dir.join("open.token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = songgen(&dir)
            .args(["serve", "--listen", "127.0.0.1:0", "--accept-license"])
            .arg("--model")
            .arg(&tiny.model_dir)
            .arg("--token-file")
            .arg(&token)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
