//! Compiles `proto/ppp/v1/upstream.proto` with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["ppp/v1/upstream.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".ppp.v1")
        // The rpc is named `Connect`; the generated `UpstreamClient::connect(endpoint)` helper
        // would collide with it, and the node builds its channels itself.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
