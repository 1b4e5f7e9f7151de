//! Compiles the .proto files with a vendored protoc, so no system protoc is needed.

/// Bodies and query strings the admin API reads as they are: a field not
/// given is its default, an unknown field is an error.
const READ_AS_JSON: [&str; 8] = [
    ".bulkhead.control.v1.Limits",
    ".bulkhead.control.v1.FeatureOverrides",
    ".bulkhead.control.v1.ListBurstsRequest",
    ".bulkhead.control.v1.ListWebhooksRequest",
    ".bulkhead.control.v1.ListDeliveriesRequest",
    ".bulkhead.control.v1.ListSnippetsRequest",
    ".bulkhead.control.v1.ListSharesRequest",
    ".bulkhead.control.v1.VerifyAuditRequest",
];

/// A tenant's or plan's limits and features are always JSON objects.
const ALWAYS_OBJECTS: [&str; 5] = [
    ".bulkhead.control.v1.Tenant.limits",
    ".bulkhead.control.v1.Tenant.features",
    ".bulkhead.control.v1.Tenant.feature_overrides",
    ".bulkhead.control.v1.Plan.limits",
    ".bulkhead.control.v1.Plan.features",
];

#[allow(unsafe_code)] // set_var before any thread exists
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    // Messages that carry a secret get a hand-written Debug (src/lib.rs)
    // that prints it as <redacted>.
    let mut config = tonic_prost_build::configure()
        .skip_debug([
            ".bulkhead.control.v1.CreatedKey",
            ".bulkhead.control.v1.AuthenticateRequest",
            ".bulkhead.control.v1.CreatedWebhook",
            ".bulkhead.control.v1.WebhookSpec",
            ".bulkhead.control.v1.CreatedCredential",
        ])
        // The admin API's JSON is these messages' derived serde, with the
        // proto field names (snake_case) and every field written.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Only the feature overrides that are set are written.
        .field_attribute(
            ".bulkhead.control.v1.FeatureOverrides",
            r#"#[serde(skip_serializing_if = "Option::is_none")]"#,
        )
        // A tools override is its list of names in JSON: `"tools": ["code_run"]`.
        .type_attribute(
            ".bulkhead.control.v1.ToolNames",
            "#[derive(serde::Deserialize)] #[serde(transparent)]",
        )
        // 0.8, not 0.800000011920929.
        .field_attribute(
            ".bulkhead.control.v1.Tenant.adapter_scale",
            r#"#[serde(serialize_with = "crate::json::f32_decimal")]"#,
        );
    for message in READ_AS_JSON {
        config = config.type_attribute(
            message,
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        );
    }
    for field in ALWAYS_OBJECTS {
        config = config.field_attribute(
            field,
            r#"#[serde(serialize_with = "crate::json::or_default")]"#,
        );
    }
    config.compile_protos(&["proto/worker.proto", "proto/control.proto"], &["proto"])?;
    Ok(())
}
