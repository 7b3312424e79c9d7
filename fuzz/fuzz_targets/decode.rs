//! What the API server does with a request body before it is stored:
//! decode, default, validate and look for unknown fields, for every kind.
//! Never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = &shoal_api::KINDS[usize::from(selector) % shoal_api::KINDS.len()];
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let old = obj.clone();
    let _ = shoal_api::unknown_fields(kind, &obj);
    shoal_api::apply_defaults(kind, &mut obj);
    shoal_api::prepare_for_create(kind, &mut obj);
    let _ = shoal_api::validate(kind, &obj, None);
    let _ = shoal_api::validate(kind, &obj, Some(&old));
    let _ = shoal_api::table(
        kind,
        &[obj],
        Value::Null,
        std::time::SystemTime::now(),
        Default::default(),
    );
});
