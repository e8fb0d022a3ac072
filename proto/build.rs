//! Generates the Rust code for `proto/cms/v1/cms.proto`.
//!
//! protox parses the `.proto` files in pure Rust, so a fresh machine needs
//! nothing but `cargo build`: no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/cms/v1/cms.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
