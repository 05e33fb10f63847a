//! The plugin as a standalone app (JACK, ALSA or the dummy backend), used for the editor
//! screenshot under Xvfb: `songgen-plugin-standalone --backend dummy`.

fn main() {
    nice_plug::nice_export_standalone::<songgen_plugin::SongGen>();
}
