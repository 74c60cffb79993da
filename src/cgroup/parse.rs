//! The two shapes of cgroup file the samples read: one number (`cpuacct.usage`, `memory.current`,
//! a limit that may be `max`), and keyed numbers one a line (`cpu.stat`, `memory.stat`). A text
//! that is not what the kernel writes is an error, never a zero.

use std::path::Path;

use super::ReadError;

/// The one number a file holds.
pub(super) fn number(path: &Path, text: &str) -> Result<u64, ReadError> {
    let value = text.trim();
    value
        .parse()
        .map_err(|_| ReadError::malformed(path, format!("{value:?} is not a number")))
}

/// A memory limit: a number, or `max` (cgroup v2) for none, read as the largest number.
pub(super) fn limit(path: &Path, text: &str) -> Result<u64, ReadError> {
    if text.trim() == "max" {
        Ok(u64::MAX)
    } else {
        number(path, text)
    }
}

/// The value of `key` in a file of `key value` lines; `None` when the key is absent (a kernel
/// that does not count it). A line that does not parse is an error.
pub(super) fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, ReadError> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(ReadError::malformed(
                path,
                format!("{line:?} is not a \"key value\" line"),
            ));
        };
        if name == key {
            found = Some(value.parse().map_err(|_| {
                ReadError::malformed(path, format!("{key} {value:?} is not a number"))
            })?);
        }
    }
    Ok(found)
}
