//! CIFAR-10 files: parsing, refusing bad files with the file named, and the verified download
//! against a local HTTP server.
mod common;

use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use worker::data;

#[test]
fn mini_set_loads_with_limits() {
    let ds = data::load_cifar10(&common::cifar_mini(), Some(300), Some(100)).unwrap();
    assert_eq!(ds.train.images.size(), [300, 3, 32, 32]);
    assert_eq!(ds.test.labels.size(), [100]);
    let full = data::load_cifar10(&common::cifar_mini(), None, None).unwrap();
    // The mini set (5,000 / 1,000) or, where CIFAR10_MINI points at it, the full one (50,000 / 10,000).
    assert!(
        [5000, 50_000].contains(&full.train.len()) && [1000, 10_000].contains(&full.test.len())
    );
    // Both are balanced: every class has the same number of training images.
    let counts =
        Vec::<i64>::try_from(&full.train.labels.bincount::<tch::Tensor>(None, 10)).unwrap();
    assert_eq!(counts, vec![full.train.len() as i64 / 10; 10]);
}

#[test]
fn truncated_files_and_bad_labels_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(common::cifar_mini().join("test_batch.bin")).unwrap();
    let cut = dir.path().join("data_batch_1.bin");
    std::fs::write(&cut, &src[..3073 * 3 + 100]).unwrap();
    let err = format!("{:#}", data::read_records(&cut).unwrap_err());
    assert!(
        err.contains("data_batch_1.bin") && err.contains("truncated"),
        "{err}"
    );

    let mut bad = src[..3073 * 2].to_vec();
    bad[3073] = 12;
    let bad_path = dir.path().join("test_batch.bin");
    std::fs::write(&bad_path, &bad).unwrap();
    let err = format!("{:#}", data::read_records(&bad_path).unwrap_err());
    assert!(
        err.contains("test_batch.bin") && err.contains("label 12"),
        "{err}"
    );
}

/// Serves `body` to every request, on a random loopback port, for `n` requests.
fn serve(body: Vec<u8>, n: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let mut s = stream.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..k]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

/// A tar.gz laid out as the official one, with a few real records per file and a stray member.
fn archive(mini: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        // Raw name bytes: the tar crate refuses to *write* a `..` path, and a hostile archive has one.
        let path = format!("cifar-10-batches-bin/{name}");
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        tar.append(&h, bytes).unwrap();
    };
    let train = std::fs::read(mini.join("data_batch_1.bin")).unwrap();
    let test = std::fs::read(mini.join("test_batch.bin")).unwrap();
    add("data_batch_1.bin", &train[..3073 * 50]);
    add("test_batch.bin", &test[..3073 * 20]);
    add("batches.meta.txt", b"airplane\n");
    add("../../escape.txt", b"must not be written");
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn download_verifies_md5_before_unpacking_only_the_expected_members() {
    let bytes = archive(&common::cifar_mini());
    let md5 = format!("{:x}", Md5::digest(&bytes));
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cifar");

    // A corrupted archive (one byte flipped) is refused and leaves nothing behind.
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let err = format!(
        "{:#}",
        data::download_cifar10(&dir, &serve(corrupt, 1), &md5).unwrap_err()
    );
    assert!(err.contains("md5") && err.contains("refusing"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing half-written: {:?}",
        std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
    );

    // The real thing, through the trainer's own loader.
    let cfg = worker::config::TrainConfig {
        data_dir: dir.clone(),
        data_url: serve(bytes, 1),
        data_md5: md5,
        ..worker::config::TrainConfig::default()
    };
    let ds = data::load(&cfg).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (50, 20));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["batches.meta.txt", "data_batch_1.bin", "test_batch.bin"]
    );
    assert!(!root.path().join("escape.txt").exists() && !dir.join("escape.txt").exists());
}
