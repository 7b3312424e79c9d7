//! Every patch type against a live object: never a panic, whatever the
//! bytes. The first byte picks the patch type and the kind, the rest is
//! split into the live object and the patch body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shoal_patch::{PatchType, TypeRef, apply_patch};

const KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("example.com/v1", "Widget"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ty = PatchType::ALL[usize::from(selector) % PatchType::ALL.len()];
    let (api_version, kind) = KINDS[usize::from(selector / 4) % KINDS.len()];
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (live, body) = rest.split_at(split);
    let live: Value = serde_json::from_slice(live).unwrap_or(Value::Null);
    let body = body.get(1..).unwrap_or_default();
    let _ = apply_patch(&TypeRef::new(api_version, kind), &live, body, ty);
});
