//! `[l1]`.

use super::{duration, size};
use crate::config::{file, L1Config};

pub(super) fn validate(f: file::L1File, e: &mut Vec<String>) -> L1Config {
    let l1 = L1Config {
        max_bytes: size(e, "l1.max_bytes", f.max_bytes, "128MiB"),
        max_entry_bytes: size(e, "l1.max_entry_bytes", f.max_entry_bytes, "1MiB") as usize,
        max_age: duration(e, "l1.max_age", f.max_age, "5m"),
    };
    if l1.max_age.is_zero() {
        e.push("l1.max_age: must be greater than zero".into());
    }
    if l1.max_entry_bytes as u64 > l1.max_bytes && l1.max_bytes > 0 {
        e.push("l1.max_entry_bytes: larger than l1.max_bytes".into());
    }
    if l1.max_entry_bytes as u64 > u32::MAX as u64 / 2 {
        e.push("l1.max_entry_bytes: at most 2GiB".into());
    }
    l1
}
