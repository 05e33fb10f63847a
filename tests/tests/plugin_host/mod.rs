//! A minimal CLAP host (clack-host) that loads the built plugin library, for the `plugin_*`
//! integration tests: ports, parameters, state, and processing blocks with a host transport.
#![allow(dead_code)]

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use clack_extensions::audio_ports::{AudioPortInfoBuffer, PluginAudioPorts};
use clack_extensions::params::{ParamInfoBuffer, PluginParams};
use clack_extensions::render::{PluginRender, RenderMode};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{ParamValueEvent, TransportEvent, TransportFlags};
use clack_host::events::{EventFlags, Pckn};
use clack_host::prelude::*;
use clack_host::utils::{BeatTime, ClapId, SecondsTime};

pub const SAMPLE_RATE: f64 = 48_000.0;
pub const MAX_FRAMES: u32 = 512;

struct Shared;
impl SharedHandler<'_> for Shared {
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {}
}
struct TestHost;
impl HostHandlers for TestHost {
    type Shared<'a> = Shared;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();
}

/// The plugin library built for this test run. Cargo builds the plugin's cdylib into the same
/// `deps` folder as the test binaries because this crate depends on the plugin, so the copy next
/// to the running test is always the fresh one.
pub fn plugin_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps folder");
    let name = format!(
        "{}songgen_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let p = dir.join(&name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found next to {} (cargo builds it as a dev-dependency)",
        exe.display()
    );
}

/// The test engine executable of this crate.
pub fn test_engine() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_songgen-test-engine"))
}

fn entry() -> &'static PluginEntry {
    static ENTRY: OnceLock<PluginEntry> = OnceLock::new();
    ENTRY.get_or_init(|| {
        let path = plugin_library();
        // SAFETY: loading our own plugin library, which follows the CLAP entry contract.
        unsafe { PluginEntry::load(&path) }
            .unwrap_or_else(|e| panic!("loading {}: {e:?}", path.display()))
    })
}

/// Serialises the tests of one binary: they share the loaded library and environment.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub channels: u32,
    pub is_main: bool,
}

/// Transport state of one block.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub playing: bool,
    pub pos_seconds: f64,
    pub loop_seconds: Option<(f64, f64)>,
    pub tempo: f64,
}

impl Transport {
    pub fn playing_at(pos_seconds: f64) -> Self {
        Self {
            playing: true,
            pos_seconds,
            loop_seconds: None,
            tempo: 120.0,
        }
    }

    fn event(&self) -> TransportEvent {
        let mut flags = TransportFlags::HAS_TEMPO
            | TransportFlags::HAS_BEATS_TIMELINE
            | TransportFlags::HAS_SECONDS_TIMELINE
            | TransportFlags::HAS_TIME_SIGNATURE;
        if self.playing {
            flags |= TransportFlags::IS_PLAYING;
        }
        let beats = |s: f64| BeatTime::from_float(s * self.tempo / 60.0);
        let (ls, le) = self.loop_seconds.unwrap_or((0.0, 0.0));
        if self.loop_seconds.is_some() {
            flags |= TransportFlags::IS_LOOP_ACTIVE;
        }
        TransportEvent {
            header: EventHeader::new_core(0, EventFlags::empty()),
            flags,
            song_pos_beats: beats(self.pos_seconds),
            song_pos_seconds: SecondsTime::from_float(self.pos_seconds),
            tempo: self.tempo,
            tempo_inc: 0.0,
            loop_start_beats: beats(ls),
            loop_end_beats: beats(le),
            loop_start_seconds: SecondsTime::from_float(ls),
            loop_end_seconds: SecondsTime::from_float(le),
            bar_start: BeatTime::from_float(0.0),
            bar_number: 0,
            time_signature_numerator: 4,
            time_signature_denominator: 4,
        }
    }
}

/// Audio of one block: main in/out, sidechain in, Vocals and Accompaniment out.
#[derive(Debug, Clone)]
pub struct Block {
    pub main: [Vec<f32>; 2],
    pub sidechain: [Vec<f32>; 2],
    pub vocals: [Vec<f32>; 2],
    pub accompaniment: [Vec<f32>; 2],
}

impl Block {
    pub fn silent(frames: usize) -> Self {
        let z = || [vec![0.0; frames], vec![0.0; frames]];
        Self {
            main: z(),
            sidechain: z(),
            vocals: z(),
            accompaniment: z(),
        }
    }
}

pub struct TestPlugin {
    instance: PluginInstance<TestHost>,
    processor: Option<StartedPluginAudioProcessor<TestHost>>,
}

impl TestPlugin {
    pub fn new() -> Self {
        let entry = entry();
        let factory = entry.get_plugin_factory().expect("plugin factory");
        let desc = factory.plugin_descriptors().next().expect("one plugin");
        let id: CString = desc.id().expect("plugin id").to_owned();
        let host = HostInfo::new("songgen-tests", "songgen", "https://example.invalid", "0.1")
            .expect("host info");
        let instance = PluginInstance::<TestHost>::new(|_| Shared, |_| (), entry, &id, &host)
            .expect("instantiating the plugin");
        Self {
            instance,
            processor: None,
        }
    }

    /// (id, name, features) of the library's only descriptor.
    pub fn descriptor() -> (String, String, Vec<String>) {
        let factory = entry().get_plugin_factory().expect("plugin factory");
        let d = factory.plugin_descriptors().next().expect("one plugin");
        let s = |c: Option<&std::ffi::CStr>| {
            c.map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        (
            s(d.id()),
            s(d.name()),
            d.features()
                .map(|f| f.to_string_lossy().into_owned())
                .collect(),
        )
    }

    pub fn ports(&mut self, input: bool) -> Vec<Port> {
        let h = self.instance.plugin_handle();
        let ext = h.get_extension::<PluginAudioPorts>().expect("audio-ports");
        let mut buf = AudioPortInfoBuffer::new();
        (0..ext.count(&h, input))
            .map(|i| {
                let info = ext.get(&h, i, input, &mut buf).expect("port info");
                Port {
                    name: String::from_utf8_lossy(info.name).into_owned(),
                    channels: info.channel_count,
                    is_main: info
                        .flags
                        .contains(clack_extensions::audio_ports::AudioPortFlags::IS_MAIN),
                }
            })
            .collect()
    }

    /// Parameter names and ids.
    pub fn params(&mut self) -> Vec<(String, ClapId)> {
        let h = self.instance.plugin_handle();
        let ext = h.get_extension::<PluginParams>().expect("params");
        let mut buf = ParamInfoBuffer::new();
        (0..ext.count(&h))
            .filter_map(|i| {
                let info = ext.get_info(&h, i, &mut buf)?;
                Some((String::from_utf8_lossy(info.name).into_owned(), info.id))
            })
            .collect()
    }

    pub fn param_id(&mut self, name: &str) -> ClapId {
        self.params()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no parameter {name:?}"))
            .1
    }

    /// The plugin state as JSON (nice-plug's CLAP state is a u64 length prefix + JSON).
    pub fn save_state(&mut self) -> serde_json::Value {
        let h = self.instance.plugin_handle();
        let ext = h.get_extension::<PluginState>().expect("state");
        let mut raw = Vec::new();
        ext.save(&h, &mut raw).expect("saving state");
        let len = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        assert_eq!(len, raw.len() - 8, "state length prefix");
        serde_json::from_slice(&raw[8..]).expect("state is JSON")
    }

    pub fn load_state(&mut self, state: &serde_json::Value) {
        let json = serde_json::to_vec(state).unwrap();
        let mut raw = (json.len() as u64).to_le_bytes().to_vec();
        raw.extend_from_slice(&json);
        let h = self.instance.plugin_handle();
        let ext = h.get_extension::<PluginState>().expect("state");
        ext.load(&h, &mut raw.as_slice()).expect("loading state");
    }

    /// Switches to offline rendering (a bounce), before activation.
    pub fn set_offline(&mut self) {
        let h = self.instance.plugin_handle();
        let ext = h.get_extension::<PluginRender>().expect("render extension");
        ext.set(&h, RenderMode::Offline)
            .expect("offline render mode");
    }

    pub fn activate(&mut self) {
        let cfg = PluginAudioConfiguration {
            sample_rate: SAMPLE_RATE,
            min_frames_count: 1,
            max_frames_count: MAX_FRAMES,
        };
        let stopped = self.instance.activate(|_, _| (), cfg).expect("activate");
        self.processor = Some(stopped.start_processing().expect("start processing"));
    }

    pub fn deactivate(&mut self) {
        if let Some(p) = self.processor.take() {
            self.instance.deactivate(p.stop_processing());
        }
    }

    /// Processes one block in place; `params` are (id, value) events at the block start.
    pub fn process(
        &mut self,
        block: &mut Block,
        transport: Option<Transport>,
        params: &[(ClapId, f64)],
    ) {
        let frames = block.main[0].len();
        assert!(frames as u32 <= MAX_FRAMES);
        let processor = self.processor.as_mut().expect("activated");
        // In-place main bus: the host passes the input in the output buffer too.
        let main_in = block.main.clone();
        let mut in_bufs = [main_in, block.sidechain.clone()];
        let mut in_ports = AudioPorts::with_capacity(4, 2);
        let input = in_ports.with_input_buffers(in_bufs.iter_mut().map(|c| {
            AudioPortBuffer {
                latency: 0,
                channels: AudioPortBufferType::f32_input_only(
                    c.iter_mut()
                        .map(|b| InputChannel::variable(b.as_mut_slice())),
                ),
            }
        }));
        let mut out_ports = AudioPorts::with_capacity(6, 3);
        let mut output = out_ports.with_output_buffers(
            [&mut block.main, &mut block.vocals, &mut block.accompaniment]
                .into_iter()
                .map(|c| AudioPortBuffer {
                    latency: 0,
                    channels: AudioPortBufferType::f32_output_only(
                        c.iter_mut().map(|b| b.as_mut_slice()),
                    ),
                }),
        );
        let mut events = EventBuffer::new();
        for (id, value) in params {
            events.push(&ParamValueEvent::new(0, *id, Pckn::match_all(), *value));
        }
        let mut out_events = EventBuffer::new();
        let transport = transport.map(|t| t.event());
        processor
            .process(
                &input,
                &mut output,
                &InputEvents::from_buffer(&events),
                &mut OutputEvents::from_buffer(&mut out_events),
                None,
                transport.as_ref(),
            )
            .expect("process");
    }
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        self.deactivate();
    }
}

/// Points the plugin's per-user folders (cache, config, songgen home) into `dir` and its engine at a
/// path that does not exist, so a test touches nothing outside `dir`.
pub fn isolate(dir: &std::path::Path) {
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CONFIG_DIR", dir.join("config"));
    std::env::set_var("SONGGEN_ENGINE", dir.join("no-engine-here"));
    isolate_engine(dir);
}

/// The shared engine's socket in `dir` (so no test reaches another's engine, or the user's),
/// and a short idle grace (1 s) so an engine left by a test exits soon after.
pub fn isolate_engine(dir: &std::path::Path) {
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
}

/// Engine processes running the executable `exe` (zombies, which have no executable, are not
/// counted).
pub fn engine_processes(exe: &std::path::Path) -> Vec<u32> {
    let want = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == want))
        .collect();
    pids.sort_unstable();
    pids
}

/// Copies the plugin library into a Linux VST3 bundle, `<dir>/songgen_plugin.vst3` (the layout
/// `cargo xtask bundle` produces), and returns the bundle path.
pub fn vst3_bundle(dir: &std::path::Path) -> PathBuf {
    let bundle = dir.join("songgen_plugin.vst3");
    let module_dir = bundle.join("Contents/x86_64-linux");
    std::fs::create_dir_all(&module_dir).unwrap();
    std::fs::copy(plugin_library(), module_dir.join("songgen_plugin.so")).unwrap();
    bundle
}

/// Writes a stereo 32-bit float WAV of `frames` frames at [`SAMPLE_RATE`], frame `k` = `f(k)`.
pub fn write_stem(path: &std::path::Path, frames: usize, f: fn(usize) -> (f32, f32)) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: SAMPLE_RATE as u32,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for k in 0..frames {
        let (l, r) = f(k);
        w.write_sample(l).unwrap();
        w.write_sample(r).unwrap();
    }
    w.finalize().unwrap();
}

/// The persisted `takes` field (a JSON string, as nice-plug stores it) of a project whose
/// selected take is finished, with the given stems, length and timeline anchor.
pub fn finished_take_field(
    vocal: &std::path::Path,
    bgm: &std::path::Path,
    frames: usize,
    anchor_seconds: f64,
) -> String {
    serde_json::json!({
        "list": [{
            "id": "take-7", "created": 1, "lyrics": "[verse]\nx\n", "descriptions": null,
            "prompt": "none", "gen_type": "separate", "seed": 1,
            "sampling": {"cfg_coef": 1.5, "temperature": 0.8, "top_k": 5000,
                         "record_window": 50, "penalty": 1.1, "use_sampling": true},
            "status": {"state": "done"},
            "stems": {"vocal": vocal, "bgm": bgm},
            "sample_rate": SAMPLE_RATE as u32, "frames": frames, "anchor_seconds": anchor_seconds
        }],
        "selected": "take-7"
    })
    .to_string()
}

/// Ardour's VST3 scanner: `$ARDOUR_VST3_SCANNER`, or the one of an installed (or unpacked)
/// Debian `ardour` package.
pub fn ardour_vst3_scanner() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ARDOUR_VST3_SCANNER") {
        return Some(PathBuf::from(p));
    }
    for root in [
        "/opt/ardour-scanner/usr/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("ardour") {
                let scanner = e.path().join("ardour-vst3-scanner");
                if scanner.is_file() {
                    return Some(scanner);
                }
            }
        }
    }
    None
}

/// A fresh empty folder under the system temp dir, removed when the test process exits.
pub use songgen_tests::temp_dir;
