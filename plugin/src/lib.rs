//! SongGeneration 2 in the DAW: a CLAP + VST3 plugin that writes lyrics and style tags, sends
//! them to the `songgen` engine process, and plays the resulting takes on its output buses in
//! time with the host.
//!
//! Threads: the audio thread only captures and plays (no allocation, locks or blocking); the
//! worker thread ([`worker`]) runs everything else and talks to the engine process; the editor
//! ([`editor`]) sends it commands and shows its status.

pub mod capture;
pub mod clap;
pub mod editor;
pub mod engine;
pub mod files;
pub mod lyrics;
pub mod params;
pub mod playback;
pub mod session;
pub mod settings;
pub mod timeline;
pub mod vst3;
pub mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nice_plug::prelude::*;
use nice_plug_egui::{EguiEditor, RepaintNotifier};

use capture::{CaptureSource, Recorder};
use params::SongGenParams;
use playback::{Outputs, Player};
use timeline::Timeline;
use worker::{Command, Shared, UiStatus, WorkerHandle};

/// How long an offline (bounce) activation waits for the selected take to load.
const OFFLINE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SongGen {
    params: Arc<SongGenParams>,
    shared: Arc<Shared>,
    status: Arc<Mutex<UiStatus>>,
    repaint: RepaintNotifier,
    worker: WorkerHandle,
    recorder: Option<Recorder>,
    player: Option<Player>,
    /// Last seen value of the "Arm capture" parameter (its edges arm and disarm).
    capture_arm: bool,
    /// Whether the host activated the plugin for offline rendering.
    offline: bool,
    /// Samples rendered since activation or reset: the timeline of an offline render whose host
    /// reports no playing transport (batch renderers such as pedalboard have no playhead).
    free_run: i64,
}

impl Default for SongGen {
    fn default() -> Self {
        let params = Arc::new(SongGenParams::default());
        let shared = Arc::new(Shared::default());
        let status = Arc::new(Mutex::new(UiStatus::default()));
        let repaint = RepaintNotifier::new();
        let worker = WorkerHandle::spawn(
            params.clone(),
            shared.clone(),
            status.clone(),
            repaint.clone(),
        );
        Self {
            params,
            shared,
            status,
            repaint,
            worker,
            recorder: None,
            player: None,
            capture_arm: false,
            offline: false,
            free_run: 0,
        }
    }
}

impl Plugin for SongGen {
    const NAME: &'static str = "SongGen";
    const VENDOR: &'static str = "songgen";
    const URL: &'static str = "https://github.com/songgen/songgen";
    const EMAIL: &'static str = "songgen@example.invalid";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    // The first layout is the default and the one VST3 hosts get (VST3 cannot drop buses; its
    // hosts may leave the stem buses and the sidechain inactive instead, which `vst3` handles).
    // CLAP hosts may pick a smaller one through `audio-ports-config`, e.g. when only the main
    // output is wanted. The main output carries the input plus the take per the "Main output"
    // parameter; it keeps the default "Output" name: nice-plug 0.4 reads a custom main-output
    // name from the main-input slot.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            aux_input_ports: &[new_nonzero_u32(2)],
            aux_output_ports: &[new_nonzero_u32(2), new_nonzero_u32(2)],
            names: PortNames {
                layout: Some("Stereo + stems"),
                main_input: None,
                main_output: None,
                aux_inputs: &["Style Sidechain"],
                aux_outputs: &["Vocals", "Accompaniment"],
            },
        },
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            aux_input_ports: &[new_nonzero_u32(2)],
            aux_output_ports: &[],
            names: PortNames {
                layout: Some("Stereo + sidechain"),
                main_input: None,
                main_output: None,
                aux_inputs: &["Style Sidechain"],
                aux_outputs: &[],
            },
        },
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            aux_input_ports: &[],
            aux_output_ports: &[],
            names: PortNames {
                layout: Some("Stereo"),
                main_input: None,
                main_output: None,
                aux_inputs: &[],
                aux_outputs: &[],
            },
        },
    ];

    type SysExMessage = ();
    type BackgroundTask = ();
    type Editor = EguiEditor<editor::EditorApp>;

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(
            self.params.editor_size.open_state(),
            self.repaint.clone(),
            editor::EditorApp::new(
                self.params.clone(),
                self.shared.clone(),
                self.status.clone(),
                self.worker.tx.clone(),
            ),
        )
    }

    fn activate(
        &mut self,
        _layout: &AudioIOLayout,
        config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let (recorder, recorder_link) = Recorder::without_buffer();
        let (player, player_link) = Player::new();
        self.recorder = Some(recorder);
        self.player = Some(player);
        self.capture_arm = self.params.capture_arm.value();
        let offline = config.process_mode == ProcessMode::Offline;
        self.offline = offline;
        self.free_run = 0;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        let sent = self.worker.tx.send(Command::Activated {
            sample_rate: config.sample_rate,
            recorder: recorder_link,
            player: player_link,
            loaded: offline.then_some(ack_tx),
        });
        if offline && sent.is_ok() {
            // A bounce must not start before the take is there to be rendered.
            let _ = ack_rx.recv_timeout(OFFLINE_LOAD_TIMEOUT);
        }
        true
    }

    fn reset(&mut self) {
        self.free_run = 0;
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        // nice-plug sets flush-to-zero (results); denormal *inputs* need denormals-are-zero too.
        let _daz = DenormalsAreZero::enable();
        let mut timeline = Timeline::from_transport(context.transport());
        if self.offline && !timeline.playing {
            // An offline render always moves forward; without a playing host transport, take
            // the render's own sample count as the timeline (from 0 at activation/reset).
            timeline = Timeline {
                playing: true,
                pos: Some(self.free_run),
                loop_range: None,
            };
        }
        self.free_run += buffer.samples() as i64;

        let arm = self.params.capture_arm.value();
        if arm != self.capture_arm {
            self.capture_arm = arm;
            if arm {
                self.shared.capture.arm();
            } else {
                self.shared.capture.disarm();
            }
        }
        if let Some(recorder) = self.recorder.as_mut() {
            let source = match self.params.capture_source.value() {
                CaptureSource::Main => Some(buffer.as_slice_immutable()),
                CaptureSource::Sidechain => aux.inputs.first().map(|b| b.as_slice_immutable()),
            };
            if let Some([l, r, ..]) = source {
                recorder.process(&self.shared.capture, &timeline, [&**l, &**r]);
            }
        }

        if let Some(player) = self.player.as_mut() {
            let main_output = self.params.main_output.value();
            let (vocals, accompaniment) = match aux.outputs {
                [v, a, ..] => (stereo(v.as_slice()), stereo(a.as_slice())),
                [v] => (stereo(v.as_slice()), None),
                [] => (None, None),
            };
            if let Some(main) = stereo(buffer.as_slice()) {
                player.process(
                    &self.shared.play,
                    &timeline,
                    main_output,
                    Outputs {
                        main,
                        vocals,
                        accompaniment,
                    },
                );
            }
        }
        // Takes play over silent input, so never let the host put the plugin to sleep.
        ProcessStatus::KeepAlive
    }
}

/// The two channels of a stereo bus.
fn stereo<'a>(channels: &'a mut [&mut [f32]]) -> Option<[&'a mut [f32]; 2]> {
    match channels {
        [l, r, ..] => Some([&mut **l, &mut **r]),
        _ => None,
    }
}

impl ClapPlugin for SongGen {
    const CLAP_ID: &'static str = "io.github.songgen.songgen";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Lyrics to song with SongGeneration 2: vocal and accompaniment stems");
    const CLAP_MANUAL_URL: Option<&'static str> = Some(Self::URL);
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::Instrument,
        ClapFeature::Synthesizer,
        ClapFeature::Stereo,
    ];
}

impl Vst3Plugin for SongGen {
    const VST3_CLASS_ID: [u8; 16] = *b"SongGenLeVo2Plug";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Generator];
}

// nice-plug's CLAP wrapper plus port activation and 64-bit audio (see `clap`).
export_clap!(SongGen);
// nice-plug's VST3 wrapper behind stand-in buffers for inactive buses (see `vst3`).
export_vst3!(SongGen);

/// Sets the CPU's denormals-are-zero flag (x86 MXCSR bit 6) for the scope of one `process()`
/// call and restores the previous value: with it, denormal input samples (a host's fade tails)
/// cost what zeros cost. nice-plug's `unsafe_flush_denormals` sets only flush-to-zero (bit 15),
/// which covers results, not inputs. No allocation, no lock.
struct DenormalsAreZero {
    #[cfg(target_arch = "x86_64")]
    previous: u32,
}

impl DenormalsAreZero {
    #[cfg(target_arch = "x86_64")]
    const DAZ: u32 = 1 << 6;

    fn enable() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut previous: u32 = 0;
            // SAFETY: stmxcsr/ldmxcsr only read and write this thread's SSE control register
            // (always present on x86_64); the value written differs from the read one only in
            // the DAZ bit, which changes no results but those of denormal operands.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut previous, options(nostack));
                let set = previous | Self::DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &set, options(nostack));
            }
            Self { previous }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self {}
    }
}

impl Drop for DenormalsAreZero {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the register value read in `enable` on the same thread (the guard
        // lives on `process()`'s stack).
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.previous, options(nostack));
        }
    }
}
