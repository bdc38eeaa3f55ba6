use crate::helpers::*;
use crate::results::golden_sweep;

fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("decodes");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

async fn png(app: &TestApp, sweep: i64, name: &str) -> Vec<u8> {
    let r = app
        .http
        .get(format!(
            "{}/api/sweeps/{sweep}/figures/{name}.png",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{name}");
    assert_eq!(r.headers()["content-type"], "image/png");
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn every_figure_is_a_png_of_the_expected_size_and_depends_on_the_sweep() {
    let app = spawn_app().await;
    let a = golden_sweep(&app).await;
    // A second sweep of the same shape with other numbers.
    let b = app
        .submit("name = \"other\"\n[grid]\nbatch_size = [16, 32]\nlr = [1e-2]\n")
        .await
        .id;
    while let Some(claim) = app.claim("w").await {
        let id = claim.id;
        for epoch in 1..=3 {
            app.metrics(id, 1, epoch, Some(2.0 / epoch as f64), 0.2 * epoch as f64)
                .await;
        }
        app.finish(id, 1, Outcome::Completed).await;
    }
    for name in server::results::figures::NAMES {
        let pa = png(&app, a, name).await;
        let (w, h, pixels) = decode(&pa);
        assert_eq!((w, h), server::results::figures::SIZE, "{name}");
        let distinct: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
        assert!(
            distinct.len() > 8,
            "{name} is not blank ({} colours)",
            distinct.len()
        );
        assert_ne!(
            pa,
            png(&app, b, name).await,
            "{name} differs between sweeps"
        );
    }
    let r = app
        .http
        .get(format!("{}/api/sweeps/{a}/figures/pie.png", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // `server plot` writes the five files.
    let dir = tempfile::tempdir().unwrap();
    let (base, out) = (app.base.clone(), dir.path().to_path_buf());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["plot", &a.to_string(), "--server", &base, "--out"])
            .arg(&out)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    for name in server::results::figures::NAMES {
        let bytes = std::fs::read(dir.path().join(format!("{name}.png"))).unwrap();
        assert_eq!(
            (decode(&bytes).0, decode(&bytes).1),
            server::results::figures::SIZE
        );
    }
}
