//! Any bytes, as two header blocks decoded in turn by one decoder (so the
//! dynamic table the first leaves is used by the second): decoding never
//! panics, and the table never holds more than its limit.

#![no_main]

use grpc_proxy::hpack::Decoder;
use libfuzzer_sys::fuzz_target;

const TABLE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split).min(rest.len());
    let mut decoder = Decoder::new(TABLE);
    for block in [&rest[..cut], &rest[cut..]] {
        let mut fields = 0usize;
        let _ = decoder.decode(block, 16 << 10, |f| {
            // Every field is a slice of the block or of the table.
            fields += f.name.len() + f.value.len();
        });
        let _ = fields;
    }
});
