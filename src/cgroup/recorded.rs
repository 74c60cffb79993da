//! The file sets of `testdata/`, for the tests of this module and of the agent: the recorded
//! container's process and id, where each set lies, and copies of a set to change.

use std::path::{Path, PathBuf};

/// The main process of the container the sets were recorded from.
pub(crate) const PID: u32 = 3225;
/// That container's full id.
pub(crate) const ID: &str = "dca844d1baf66552442a1032114f67ddaefc1ee229d2e95497f13bf34a412964";

/// The file set `name` (a layout, or a layout's snapshot such as `v1-cgroupfs/a`).
pub(crate) fn set(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cgroup/testdata")
        .join(name)
}

/// Copies the files of `from` over `to`, as the counters of the host move on.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
