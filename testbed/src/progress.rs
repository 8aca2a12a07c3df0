//! Progress bars for the long benchmarks, and printing that survives a hidden bar (output
//! not a terminal, e.g. CI logs).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps counting `unit` with elapsed time and ETA.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Prints above the bar, or plainly when the bar is hidden.
pub fn say(pb: &ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        println!("{}", msg.as_ref());
    } else {
        pb.println(msg);
    }
}
