//! Input generators for the fuzz tests (proptest): arbitrary JSON, and
//! objects whose known fields hold arbitrary values, so that a parser meets
//! both noise and near-misses of what it takes. `BULKHEAD_FUZZ_CASES` sets
//! how many inputs a target runs (10,000 by default; `scripts/fuzz.sh` runs
//! a million).

use proptest::prelude::*;
use serde_json::{Map, Value};

/// How many inputs each fuzz target runs.
pub fn cases() -> u32 {
    std::env::var("BULKHEAD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The proptest configuration of a fuzz target.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects with some of `fields` (and maybe a stray one) set to any JSON.
pub fn object_with(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(fields), json()), 0..fields.len() + 2).prop_map(
        |pairs| {
            Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>(),
            )
        },
    )
}

/// Bytes: noise, or the text of a generated JSON value.
pub fn body(shaped: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        shaped.prop_map(|v| v.to_string().into_bytes()),
        json().prop_map(|v| v.to_string().into_bytes()),
    ]
}
