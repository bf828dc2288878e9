//! Golden files for `overlays/example.toml`, and the seed's stability.

use std::path::Path;

use super::*;

fn example() -> Overlay {
    crate::overlay::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/example.toml"))
        .unwrap()
}

#[test]
fn golden_user_data() {
    insta::assert_snapshot!(render(&example()).user_data);
}

#[test]
fn golden_network_config() {
    insta::assert_snapshot!(render(&example()).network_config);
}

#[test]
fn golden_meta_data() {
    insta::assert_snapshot!(render(&example()).meta_data);
}

#[test]
fn golden_nginx_and_synapse() {
    let r = render(&example());
    let get = |p: &str| {
        r.files
            .iter()
            .find(|f| f.path == p)
            .unwrap()
            .content
            .clone()
    };
    insta::assert_snapshot!("nginx", get("/etc/nginx/conf.d/mimg-matrix.conf"));
    insta::assert_snapshot!("synapse", get("/etc/matrix-synapse/conf.d/50-mimg.yaml"));
    insta::assert_snapshot!("element", get("/etc/element-web/config.json"));
}

#[test]
fn secrets_are_0600_and_only_in_secret_files() {
    let o = example();
    let r = render(&o);
    let turn = o.turn.as_ref().unwrap().secret.expose().to_string();
    for f in &r.files {
        if f.content.contains(&turn) {
            assert!(
                f.secret && f.mode == 0o600,
                "{} holds the TURN secret",
                f.path
            );
        }
    }
    assert!(!r.meta_data.contains(&turn) && !r.network_config.contains(&turn));
}

#[test]
fn same_overlay_same_seed_bytes_and_changes_change_the_instance_id() {
    let o = example();
    let a = render(&o);
    let b = render(&o);
    assert!(image(&a, volume_id(&a)).unwrap() == image(&b, volume_id(&b)).unwrap());
    let mut o2 = o.clone();
    o2.max_upload = "10M".parse().unwrap();
    assert_ne!(render(&o2).meta_data, a.meta_data);
}

#[test]
fn the_seed_is_a_cidata_fat_volume() {
    let r = render(&example());
    let img = image(&r, volume_id(&r)).unwrap();
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(img), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label(), "CIDATA");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut fs.root_dir().open_file("user-data").unwrap(), &mut s)
        .unwrap();
    assert!(s.starts_with("#cloud-config\n"));
    assert!(
        fs.root_dir().open_file("meta-data").is_ok()
            && fs.root_dir().open_file("network-config").is_ok()
    );
}
