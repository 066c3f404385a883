//! Compiles `moat.proto` with the vendored `protoc`, so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Safety of the call is not in question here: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=moat.proto");
    // A ticket key's secret must never reach a log: its `Debug` is written by hand (lib.rs).
    tonic_prost_build::configure()
        .skip_debug([".moat.v1.TicketKey"])
        .compile_protos(&["moat.proto"], &["."])?;
    Ok(())
}
