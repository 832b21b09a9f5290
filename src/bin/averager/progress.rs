//! Progress bars on stderr for work that takes seconds (starting peers, a round). indicatif
//! draws nothing when stderr is not a terminal, so pipes and tests see only the result lines.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A counted bar, cleared when finished so that the result lines stay clean.
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A bar of `len` steps labelled `label`.
    pub(crate) fn bar(label: &str, len: usize) -> Self {
        let bar = ProgressBar::new(len as u64);
        // The template is a constant; should it ever fail to parse, the default style is fine.
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(bar)
    }

    /// One more step done.
    pub(crate) fn inc(&self) {
        self.0.inc(1);
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
