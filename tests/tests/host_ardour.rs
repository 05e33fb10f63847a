//! A real DAW: Ardour 7 run headless (`ardour7-lua`, dummy audio backend; Debian's `ardour`
//! package, which `.ci/run` installs). A session is created with SongGen (VST3) on a stereo
//! track, rolled, its *Main output* parameter set, and saved; the plugin's state chunk in the
//! session file is edited (new lyrics), the session reloaded, rolled and saved again. Checks
//! that the parameter and the whole plugin state survive, and prints Ardour's DSP load right
//! after inserting the plugin. Skips, saying why, when Ardour is not installed.
//!
//! Ardour finds the bundle through `VST3_PATH` and its scan cache, which `ardour-vst3-scanner
//! -f BUNDLE` writes under the same `HOME`; Ardour trusts that cache only when the module file
//! is strictly older than it (1 s resolution), so the module's time is set back first. The test
//! avoids Ardour's export (it crashes in Ardour 7.3 itself now and then, with any plugin).

mod plugin_host;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use plugin_host::{ardour_vst3_scanner, temp_dir, vst3_bundle};

fn ardour_lua() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ARDOUR_LUA") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|d| ["ardour7-lua", "ardour8-lua"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts/ardour_session.lua")
}

struct Env<'a> {
    dir: &'a Path,
    vst3_path: PathBuf,
}

impl Env<'_> {
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("HOME", self.dir.join("home"))
            .env("VST3_PATH", &self.vst3_path)
            .env("SONGGEN_CACHE_DIR", self.dir.join("cache"))
            .env("SONGGEN_HOME", self.dir.join("songgen-home"))
            .env("SONGGEN_ENGINE", self.dir.join("no-engine-here"));
        c
    }

    /// Runs the session script; returns its output (it reports on stderr).
    fn lua(&self, lua: &Path, args: &[&str]) -> String {
        let out = self
            .command(lua)
            .arg(script())
            .args(args)
            .output()
            .expect("running ardour7-lua");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("\nsaved\n") || text.starts_with("saved\n"),
            "ardour7-lua {args:?} did not save (status {}):\n{text}",
            out.status
        );
        text
    }
}

/// The value printed for a `key` line (`key value`).
fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
}

/// (start, end) byte range of SongGen's base64 state chunk in an Ardour session file.
fn chunk_range(session: &str) -> (usize, usize) {
    let proc_at = session
        .find("name=\"SongGen\"")
        .expect("SongGen processor in the session file");
    let open = session[proc_at..]
        .find("<chunk>")
        .map(|i| proc_at + i + "<chunk>".len())
        .expect("SongGen state chunk");
    let close = open + session[open..].find("</chunk>").expect("end of the chunk");
    (open, close)
}

fn read_chunk(session_file: &Path) -> (String, Vec<u8>) {
    let session = std::fs::read_to_string(session_file).expect("session file");
    let (a, b) = chunk_range(&session);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(session[a..b].trim())
        .expect("chunk is base64");
    (session, bytes)
}

/// A `.vstpreset` chunk: its four-byte id and its bytes.
type PresetChunk = ([u8; 4], Vec<u8>);

/// Ardour stores a VST3's state as a `.vstpreset`: a 48-byte header ("VST3", version, class
/// id, chunk-list offset), the chunks, and a chunk list ("List", count, then id/offset/size).
/// Returns the header's class id and the chunks in order.
fn split_preset(data: &[u8]) -> ([u8; 32], Vec<PresetChunk>) {
    assert_eq!(&data[..4], b"VST3", "not a VST3 preset");
    let class_id: [u8; 32] = data[8..40].try_into().unwrap();
    let i64_at = |at: usize| i64::from_le_bytes(data[at..at + 8].try_into().unwrap()) as usize;
    let list = i64_at(40);
    assert_eq!(&data[list..list + 4], b"List", "no chunk list");
    let count = i32::from_le_bytes(data[list + 4..list + 8].try_into().unwrap()) as usize;
    let chunks = (0..count)
        .map(|i| {
            let at = list + 8 + 20 * i;
            let id: [u8; 4] = data[at..at + 4].try_into().unwrap();
            let (offset, size) = (i64_at(at + 4), i64_at(at + 12));
            (id, data[offset..offset + size].to_vec())
        })
        .collect();
    (class_id, chunks)
}

fn join_preset(class_id: &[u8; 32], chunks: &[PresetChunk]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut list = b"List".to_vec();
    list.extend_from_slice(&(chunks.len() as i32).to_le_bytes());
    for (id, blob) in chunks {
        list.extend_from_slice(id);
        list.extend_from_slice(&((48 + body.len()) as i64).to_le_bytes());
        list.extend_from_slice(&(blob.len() as i64).to_le_bytes());
        body.extend_from_slice(blob);
    }
    let mut out = b"VST3".to_vec();
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(class_id);
    out.extend_from_slice(&((48 + body.len()) as i64).to_le_bytes());
    out.extend(body);
    out.extend(list);
    out
}

/// The plugin's own state (nice-plug's JSON): the preset's component chunk.
fn plugin_json(chunk: &[u8]) -> serde_json::Value {
    let (_, chunks) = split_preset(chunk);
    let comp = &chunks
        .iter()
        .find(|(id, _)| id == b"Comp")
        .expect("component state")
        .1;
    serde_json::from_slice(comp).expect("component state is nice-plug's JSON")
}

#[test]
fn ardour_session_keeps_songgen_parameters_and_state_across_save_and_reload() {
    let Some(lua) = ardour_lua() else {
        songgen_tests::skip(
            "ardour7-lua not found (install Debian's `ardour` package or set ARDOUR_LUA)",
        );
        return;
    };
    let Some(scanner) = ardour_vst3_scanner() else {
        songgen_tests::skip("ardour-vst3-scanner not found (install Debian's `ardour` package)");
        return;
    };
    let dir = temp_dir("ardour");
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let env = Env {
        dir: &dir,
        vst3_path: dir.join("vst3"),
    };
    let bundle = vst3_bundle(&env.vst3_path);
    let module = bundle.join("Contents/x86_64-linux/songgen_plugin.so");
    std::fs::File::options()
        .write(true)
        .open(&module)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(10))
        .unwrap();
    let scan = env
        .command(&scanner)
        .arg("-f")
        .arg(&bundle)
        .env("LD_LIBRARY_PATH", scanner.parent().unwrap())
        .output()
        .expect("running ardour-vst3-scanner");
    assert!(
        scan.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&scan.stderr)
    );

    // Create: insert, roll, set Main output to 0.75 (between two steps), save.
    let session_dir = dir.join("session");
    let sd = session_dir.to_str().unwrap();
    let text = env.lua(&lua, &["create", sd, "songgen-test", "0.75"]);
    eprintln!("{text}");
    let dsp: f64 = value_of(&text, "dsp_max_first_3s")
        .and_then(|v| v.parse().ok())
        .expect("DSP load reported");
    eprintln!("Ardour DSP load, first 3 s after inserting SongGen: max {dsp:.2} %");
    let main_out = value_of(&text, "param Main output").expect("Main output reported");
    let main_out: f64 = main_out.parse().unwrap();
    // Ardour shows stepped VST3 parameters in plain units: 0.75 of Mix(0)..Off(3) is a
    // fraction of a step, which must round to step 1 (Vocals), not truncate to 0.
    assert_eq!(main_out, 1.0, "Main output after the host set 0.75");

    let session_file = session_dir.join("songgen-test.ardour");
    let (session, chunk) = read_chunk(&session_file);
    let mut state = plugin_json(&chunk);
    // nice-plug saves an enum parameter as its index.
    let main_index = state["params"]["main_out"]["i32"]
        .as_i64()
        .expect("main_out in the state");
    assert_eq!(
        main_index as f64, main_out,
        "the plugin's Main output differs from the host's"
    );

    // Edit the lyrics in the saved session, as a project file restored elsewhere would be.
    let mut draft: serde_json::Value =
        serde_json::from_str(state["fields"]["draft"].as_str().expect("draft field")).unwrap();
    let lyrics = "[verse]\nlyrics edited in the saved session\n";
    draft["lyrics"] = serde_json::json!(lyrics);
    state["fields"]["draft"] = serde_json::json!(draft.to_string());
    let (class_id, mut chunks) = split_preset(&chunk);
    for (id, blob) in chunks.iter_mut() {
        if id == b"Comp" {
            *blob = state.to_string().into_bytes();
        }
    }
    let new_chunk = join_preset(&class_id, &chunks);
    let (a, b) = chunk_range(&session);
    let edited = format!(
        "{}{}{}",
        &session[..a],
        base64::engine::general_purpose::STANDARD.encode(&new_chunk),
        &session[b..]
    );
    std::fs::write(&session_file, edited).unwrap();

    // Reload, roll, save again: the parameter and the edited state come back.
    let text = env.lua(&lua, &["reload", sd, "songgen-test"]);
    eprintln!("{text}");
    let reloaded: f64 = value_of(&text, "param Main output")
        .expect("Main output after reload")
        .parse()
        .unwrap();
    assert!(
        (reloaded - main_out).abs() < 1e-6,
        "Main output {reloaded} after reload, {main_out} before"
    );
    let (_, chunk) = read_chunk(&session_file);
    let state = plugin_json(&chunk);
    let draft: serde_json::Value =
        serde_json::from_str(state["fields"]["draft"].as_str().unwrap()).unwrap();
    assert_eq!(draft["lyrics"], lyrics, "edited lyrics lost on reload");
    assert_eq!(
        state["params"]["main_out"]["i32"].as_i64(),
        Some(main_index)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
