//! The archive's shape: what the engine's image load reads from it.

use std::collections::HashMap;
use std::io::Read as _;

use super::*;

fn entries(tar_bytes: &[u8]) -> HashMap<String, (tar::EntryType, u32, Vec<u8>)> {
    let mut out = HashMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let (kind, mode) = (
            entry.header().entry_type(),
            entry.header().mode().expect("mode"),
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        out.insert(path, (kind, mode, data));
    }
    out
}

#[test]
fn the_archive_names_the_tag_and_holds_a_busybox_layer() {
    let image = Busybox {
        tmp_mode: 0o755,
        user: Some("1000"),
        ..Busybox::new("paddock-unit-test:1")
    };
    let archive = entries(&image.archive().expect("archive"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&archive["manifest.json"].2).expect("manifest");
    assert_eq!(manifest[0]["RepoTags"], json!(["paddock-unit-test:1"]));
    let config_name = manifest[0]["Config"].as_str().expect("config name");
    let config: serde_json::Value =
        serde_json::from_slice(&archive[config_name].2).expect("config");
    assert_eq!(config["config"]["User"], "1000");
    assert_eq!(config["os"], "linux");

    let layer_name = manifest[0]["Layers"][0].as_str().expect("layer name");
    let layer_bytes = &archive[layer_name].2;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(layer_bytes)));
    assert_eq!(config["rootfs"]["diff_ids"], json!([diff_id]));

    let layer = entries(layer_bytes);
    assert_eq!(layer["tmp/"].1, 0o755);
    assert_eq!(layer["bin/busybox"].1, 0o755);
    assert!(!layer["bin/busybox"].2.is_empty());
    assert_eq!(layer["bin/sh"].0, tar::EntryType::Symlink);
    assert_eq!(layer["etc/passwd"].2, PASSWD.as_bytes());
    assert!(layer.contains_key("workspace/"));
}

#[test]
fn the_same_inputs_give_the_same_archive() {
    let image = Busybox::new("paddock-unit-test:1");
    assert_eq!(
        image.archive().expect("first"),
        image.archive().expect("second")
    );
}
