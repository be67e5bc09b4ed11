//! Helpers shared by the sled tests: counters the kernel keeps per thread.

/// A counter of a `/proc/.../io` file (`rchar`, `wchar`, `syscw`, ...), e.g. of
/// `/proc/thread-self/io` for the calling thread.
pub fn io_field(path: &str, field: &str) -> u64 {
    let io = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(": ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}: {io}"))
}
