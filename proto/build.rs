//! Compiles the .proto files with a vendored protoc, so no system protoc is needed.

#[allow(unsafe_code)] // set_var before any thread exists
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    // Messages that carry a secret get a hand-written Debug (src/lib.rs)
    // that prints it as <redacted>.
    tonic_prost_build::configure()
        .skip_debug([
            ".bulkhead.control.v1.CreatedKey",
            ".bulkhead.control.v1.AuthenticateRequest",
            ".bulkhead.control.v1.CreatedWebhook",
            ".bulkhead.control.v1.WebhookSpec",
            ".bulkhead.control.v1.CreatedCredential",
        ])
        .compile_protos(&["proto/worker.proto", "proto/control.proto"], &["proto"])?;
    Ok(())
}
