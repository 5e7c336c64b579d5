//! Compiles the agentmesh protobuf contract (`proto/` at the workspace root) with protox —
//! no system `protoc` — and generates messages, gRPC clients and servers with
//! tonic-prost-build. The encoded descriptor set, with source comments and custom options
//! preserved, is written to `$OUT_DIR/agentmesh_descriptor.bin` for the REST gateway,
//! gRPC reflection and OpenAPI generation.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &proto_root, &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    // `encode_file_descriptor_set` keeps extension options (google.api.http and the
    // agentmesh.common.v1 rules), which the prost_types conversion below drops.
    fs::write(out_dir.join("agentmesh_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    // Type names let code ask a generated message for its protobuf full name
    // (`prost::Name`), e.g. to find its descriptor for contract-driven validation.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services implement the RPCs they own; the rest answer UNIMPLEMENTED until built.
        .generate_default_stubs(true)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}

/// Collects every `.proto` file under `dir`, as paths relative to `root`.
fn collect_protos(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}
