//! The prompt encoders (resamplers, MusicFM, VQ, tokenizers, HTDemucs, VAE encoder) against the reference's golden fixtures.

#[test]
fn prompt_parity_fixtures_pass() {
    let dir = songgen_tests::fixture_dir("prompt");
    let manifest = songgen_engine::parity::Manifest::read(&dir).expect("prompt manifest");
    let summary = songgen_engine::parity::run_dir(&dir, None, &mut std::io::stdout())
        .expect("running the prompt fixtures");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.passed, manifest.cases.len(), "{summary:?}");
}
