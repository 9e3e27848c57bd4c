//! Fuzz target for the VMDK text descriptor parser: arbitrary bytes (UTF-8 or not, CRLF,
//! quotes, huge numbers) through the lenient and the strict parser. The two must agree:
//! strict refuses exactly when lenient records a problem, and then names the same line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vdr_formats::vmdk::descriptor::Descriptor;

fuzz_target!(|data: &[u8]| {
    let lenient = Descriptor::parse(data);
    let _ = lenient.is_empty();
    let _ = lenient.has_parent();
    for extent in &lenient.extents {
        if let Some(name) = &extent.file {
            let _ = lenient.file_name_bytes(name);
        }
        let _ = extent.kind.name();
        let _ = extent.access.name();
    }
    match Descriptor::parse_strict(data) {
        Ok(strict) => {
            assert!(lenient.problems.is_empty());
            assert_eq!(strict, lenient);
        }
        Err(problem) => assert_eq!(lenient.problems.first(), Some(&problem)),
    }
});
