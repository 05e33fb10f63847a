//! The decoder (renderer) against the reference's golden fixtures.

#[test]
fn decoder_parity_fixtures_pass() {
    let dir = songgen_tests::fixture_dir("decoder");
    let manifest = songgen_engine::parity::Manifest::read(&dir).expect("decoder manifest");
    let summary = songgen_engine::parity::run_dir(&dir, None, &mut std::io::stdout())
        .expect("running the decoder fixtures");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.passed, manifest.cases.len(), "{summary:?}");
}
