//! Compiles `moat.proto` with the vendored `protoc`, so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Safety of the call is not in question here: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=moat.proto");
    tonic_prost_build::configure().compile_protos(&["moat.proto"], &["."])?;
    Ok(())
}
