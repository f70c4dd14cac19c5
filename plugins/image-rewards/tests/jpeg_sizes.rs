//! The reward's JPEG sizes against Pillow's on the committed fixtures
//! (`scripts/make_jpeg_fixtures.py` wrote them).

mod common;

use flowgym_image_rewards::{jpeg, JpegArgs, JpegSize};
use flowgym_plugin_api::ConstructContext;

/// How far from Pillow's byte size a size may be: the crate's documented promise. Once the scan
/// headers are counted in libjpeg's layout (see `jpeg.rs`), what still differs from libjpeg is
/// the padding at the end of each scan and the order DC differences are coded in, a few bytes
/// either way; 5% of the smallest fixture file (the flat image, about 290 bytes) is 14 bytes.
const TOLERANCE: f64 = 0.05;

#[test]
fn rounding_matches_numpy() {
    let doc = common::document();
    let bits = doc["rounding"]["x_bits"].as_array().expect("x_bits");
    let expected = doc["rounding"]["u8"].as_array().expect("u8");
    assert_eq!(bits.len(), expected.len());
    assert!(bits.len() > 40);
    for (bits, expected) in bits.iter().zip(expected) {
        let x = f32::from_bits(bits.as_u64().expect("bits") as u32);
        let want = expected.as_u64().expect("u8") as u8;
        assert_eq!(jpeg::to_u8(x), want, "x = {x:e} ({bits})");
    }
}

#[test]
fn sizes_are_within_five_percent_of_pillow() {
    let fixtures = common::fixtures();
    assert!(fixtures.len() >= 8);
    let mut lowest = f64::INFINITY;
    let mut highest = 0.0f64;
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let (h, w) = (fixture.height, fixture.width);
        let batch = common::batch(&[&fixture.chw], h, w);
        for &(quality, pillow) in &fixture.pillow_bytes {
            let args = JpegArgs { quality };
            let reward = JpegSize::incompression(args, &ConstructContext::cpu()).expect("reward");
            let bpp = f64::from(reward.score(&batch).expect("score")[0]);
            let ours = bpp * (h * w) as f64 / 8.0;
            let ratio = ours / pillow as f64;
            println!(
                "{:>16} q{quality:<3} ours {ours:>6.0} B  pillow {pillow:>6} B  ratio {ratio:.4}",
                fixture.name
            );
            lowest = lowest.min(ratio);
            highest = highest.max(ratio);
            if (ratio - 1.0).abs() > TOLERANCE {
                failures.push(format!("{} q{quality}: ratio {ratio:.4}", fixture.name));
            }
        }
    }
    println!("size ratio to Pillow: min {lowest:.4}, max {highest:.4}");
    assert!(failures.is_empty(), "beyond 5% of Pillow: {failures:?}");
}

#[test]
fn batch_of_fixtures_scores_each_image() {
    // A batch of several same-size images gives each its own size, in order.
    let fixtures: Vec<_> = common::fixtures()
        .into_iter()
        .filter(|f| (f.height, f.width) == (32, 32))
        .collect();
    assert!(fixtures.len() >= 3);
    let images: Vec<&[f32]> = fixtures.iter().map(|f| f.chw.as_slice()).collect();
    let batch = common::batch(&images, 32, 32);
    let reward = JpegSize::incompression(JpegArgs::default(), &ConstructContext::cpu()).unwrap();
    let scores = reward.score(&batch).unwrap();
    assert_eq!(scores.len(), fixtures.len());
    for (fixture, score) in fixtures.iter().zip(&scores) {
        let alone = reward
            .score(&common::batch(&[&fixture.chw], 32, 32))
            .unwrap();
        assert_eq!(alone[0], *score, "{}", fixture.name);
    }
}
