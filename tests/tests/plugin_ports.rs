//! The built plugin, loaded through a CLAP host: descriptor, audio ports and parameters.

mod plugin_host;

use plugin_host::{serial, Port, TestPlugin};

#[test]
fn exposes_stereo_main_sidechain_and_stem_buses() {
    let _guard = serial();
    let (id, name, features) = TestPlugin::descriptor();
    assert_eq!(id, "io.github.songgen.songgen");
    assert_eq!(name, "SongGen");
    assert!(features.iter().any(|f| f == "stereo"), "{features:?}");

    let mut plugin = TestPlugin::new();
    let port = |name: &str, is_main| Port {
        name: name.into(),
        channels: 2,
        is_main,
    };
    assert_eq!(
        plugin.ports(true),
        [port("Input", true), port("Style Sidechain", false)]
    );
    assert_eq!(
        plugin.ports(false),
        [
            port("Output", true),
            port("Vocals", false),
            port("Accompaniment", false)
        ]
    );
    let names: Vec<String> = plugin.params().into_iter().map(|(n, _)| n).collect();
    for expected in ["Main output", "Capture source", "Arm capture"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}
