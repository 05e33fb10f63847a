//! VST3 smoke test: the plugin, bundled as `songgen_plugin.vst3`, is loaded, instantiated and
//! has its buses enumerated by Ardour's VST3 scanner (`ardour-vst3-scanner` from Debian's
//! `ardour` package, which `.ci/run` installs). Skips, saying why, when the scanner is not
//! installed.

mod plugin_host;

use std::process::Command;

use plugin_host::{ardour_vst3_scanner, temp_dir, vst3_bundle};

#[test]
fn ardour_scanner_loads_the_vst3_bundle_and_sees_all_buses() {
    let Some(scanner) = ardour_vst3_scanner() else {
        songgen_tests::skip(
            "ardour-vst3-scanner not found (install Debian's `ardour` package \
             or set ARDOUR_VST3_SCANNER)",
        );
        return;
    };
    let dir = temp_dir("vst3-scan");
    let bundle = vst3_bundle(&dir);

    let out = Command::new(&scanner)
        .args(["-v", "-f"])
        .arg(&bundle)
        .env("HOME", &dir)
        .env("LD_LIBRARY_PATH", scanner.parent().unwrap())
        .env("SONGGEN_ENGINE", dir.join("no-engine-here"))
        .output()
        .expect("running ardour-vst3-scanner");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("error while loading shared libraries") {
        songgen_tests::skip(&format!(
            "the scanner's libraries are missing (libglibmm-2.4-1v5, libarchive13):\n{text}"
        ));
        return;
    }
    assert!(out.status.success(), "scanner failed:\n{text}");
    assert!(text.contains("Found Plugin: SongGen"), "{text}");
    assert!(text.contains("category=\"Instrument|Generator\""), "{text}");
    // Main stereo in/out, the stereo sidechain, and the two stereo stem outputs.
    for attr in [
        "n_inputs=\"2\"",
        "n_outputs=\"2\"",
        "n_aux_inputs=\"2\"",
        "n_aux_outputs=\"4\"",
    ] {
        assert!(text.contains(attr), "missing {attr}:\n{text}");
    }
    assert!(
        text.contains("dir: kOutput type: kAux n_busses: 3"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
