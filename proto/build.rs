//! Compiles the .proto files with a vendored protoc, so no system protoc is needed.

#[allow(unsafe_code)] // set_var before any thread exists
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/worker.proto", "proto/control.proto"], &["proto"])?;
    Ok(())
}
