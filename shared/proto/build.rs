//! Compiles `proto/` with protox and tonic-prost-build, writes the file
//! descriptor set for server reflection, and generates the table of each
//! RPC's declared access rule. An RPC without a rule fails the build.

use std::fmt::Write as _;
use std::path::PathBuf;

use prost_reflect::{DescriptorPool, Value};

const FILES: &[&str] = &[
    "paddock/api/v1/annotations.proto",
    "paddock/identity/v1/identity.proto",
    "paddock/authz/v1/authz.proto",
    "paddock/authz/v1/policy.proto",
    "paddock/audit/v1/audit.proto",
    "paddock/sandbox/v1/sandbox.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    let pool = compiler.descriptor_pool();
    std::fs::write(
        out.join("paddock_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    std::fs::write(out.join("access_table.rs"), access_table(&pool)?)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Renders `ACCESS: &[(&str, Access)]`, sorted by path, for every RPC.
fn access_table(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let ext = pool
        .get_extension_by_name("paddock.api.v1.access")
        .ok_or("paddock.api.v1.access extension missing")?;
    let mut rows = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with("paddock.") {
            continue;
        }
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            if !options.has_extension(&ext) {
                return Err(format!("{path} declares no (paddock.api.v1.access) rule").into());
            }
            let access = options.get_extension(&ext);
            let Value::Message(access) = access.as_ref() else {
                return Err(format!("{path}: access rule is not a message").into());
            };
            let rule = if let Some(Value::String(p)) = access
                .get_field_by_name("permission")
                .as_deref()
                .filter(|_| access.has_field_by_name("permission"))
            {
                if p.is_empty() {
                    return Err(format!("{path}: empty permission").into());
                }
                format!("Access::Permission({p:?})")
            } else if access.has_field_by_name("public") {
                "Access::Public".to_owned()
            } else if access.has_field_by_name("internal") {
                "Access::Internal".to_owned()
            } else if access.has_field_by_name("authenticated") {
                "Access::Authenticated".to_owned()
            } else if access.has_field_by_name("platform") {
                "Access::Platform".to_owned()
            } else {
                return Err(format!("{path}: access rule is empty").into());
            };
            rows.push((path, rule));
        }
    }
    rows.sort();
    let mut src = String::from(
        "/// Every Paddock RPC and its declared access rule, sorted by path.\npub static ACCESS: &[(&str, Access)] = &[\n",
    );
    for (path, rule) in rows {
        writeln!(src, "    ({path:?}, {rule}),")?;
    }
    src.push_str("];\n");
    Ok(src)
}
