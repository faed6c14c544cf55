//! The optional progress bar of `map`/`imap` (feature `progress`, drawn by indicatif on
//! standard error). Without the feature this is a no-op of size zero.

/// A progress bar, or nothing.
#[derive(Debug)]
pub(super) struct Progress {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(super) fn off() -> Self {
        Progress {
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    /// A bar of `len` items (a counter when the length is unknown), if `on`.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(super) fn new(on: bool, len: Option<u64>) -> Self {
        #[cfg(feature = "progress")]
        if on {
            let style = match len {
                Some(_) => "{bar:40} {pos}/{len} items, {per_sec}, eta {eta}",
                None => "{spinner} {pos} items, {per_sec}",
            };
            let bar = match len {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
                bar.set_style(s);
            }
            return Progress { bar: Some(bar) };
        }
        Progress::off()
    }

    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(super) fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub(super) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
