//! Records as they come back from disk, on arbitrary bytes: rkyv's checked
//! access says corrupt or gives a record, never a panic or a read out of
//! bounds.
#![no_main]

use chatgw_storage::{RECORD_KINDS, check_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let _ = check_value(usize::from(kind) % RECORD_KINDS.len(), bytes);
});
