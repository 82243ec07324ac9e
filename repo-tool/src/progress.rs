//! The delta encoder `add` uses, with a progress bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ota_delta::EncodeStage;

/// The production delta encoder (`ota_delta`), with a progress bar on stderr; indicatif hides it
/// when stderr is not a terminal.
pub fn encode_delta_with_progress_bar(old: &[u8], new: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] delta {pos}/{len} candidates: {msg}")
            .map_err(|e| e.to_string())?;
    bar.set_style(style);
    bar.set_message(format!("{} -> {} bytes", old.len(), new.len()));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress = |stage: EncodeStage| match stage {
        EncodeStage::Candidate { count, .. } => bar.set_length(u64::try_from(count).unwrap_or(u64::MAX)),
        EncodeStage::Indexing(f) => bar.set_message(format!("{f}: indexing the old image")),
        EncodeStage::Matching(f) => bar.set_message(format!("{f}: matching")),
        EncodeStage::Compressing(f) => bar.set_message(format!("{f}: compressing")),
        EncodeStage::Finished { filter, delta_len } => {
            bar.inc(1);
            bar.set_message(format!("{filter}: {delta_len} bytes"));
        }
        _ => {}
    };
    let result = ota_delta::encode_with_progress(old, new, &ota_delta::EncodeOptions::default(), &progress);
    bar.finish_and_clear();
    // The whole chain (each cause once), down to the OS error: the reason ends up in a warning.
    result.map_err(|e| format!("{:#}", anyhow::Error::new(e)))
}
