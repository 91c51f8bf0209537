//! Compiles `proto/` with protox (pure Rust), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/ledgerd/v1/events.proto", "proto/ledgerd/v1/state.proto", "proto/ledgerd/v1/snapshot.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
