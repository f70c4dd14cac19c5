//! CLIP image preprocessing against `F.interpolate(mode="bicubic", antialias=True)` + center
//! crop + normalisation in PyTorch 2.13 (the tensor path of transformers' CLIPImageProcessor).
//! Tolerance 1e-5 max abs on normalised values (measured: 0, bit-identical on the CPU).

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowgym_images::preprocess::{clip_preprocess, shortest_side_size};
mod common;

use common::max_abs_diff as max_abs;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn cases() -> BTreeMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip/preprocess_cases.safetensors");
    common::read_tensors(&path)
}

/// The image `make_clip_fixtures.py::formula_image` builds, computed in float64 then rounded.
fn formula_image(h: usize, w: usize) -> Tensor {
    let mut data = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (c, y, x) = (c as f64, y as f64, x as f64);
                let v = 0.5
                    + 0.5
                        * (0.05 * x + 0.031 * y + 1.3 * c).sin()
                        * (0.017 * x * (c + 1.0) - 0.043 * y).cos();
                data.push(v as f32);
            }
        }
    }
    Tensor::from_slice(&data).view([1, 3, h as i64, w as i64])
}

#[test]
fn matches_torch_bicubic_antialias_resize_crop_and_normalisation() {
    let cases = cases();
    let sizes = [32, 32, 32, 32, 32, 40];
    let mut worst: f64 = 0.0;
    for (i, size) in sizes.into_iter().enumerate() {
        let input = &cases[&format!("case{i}.input")];
        let got = clip_preprocess(input, size).unwrap();
        let error = max_abs(&got, &cases[&format!("case{i}.output")]);
        println!(
            "case {i} {:?} -> {size}: max abs error {error:.2e}",
            input.size()
        );
        worst = worst.max(error);
    }
    assert!(worst < TOLERANCE, "{worst}");
}

#[test]
fn matches_at_the_real_size_on_a_512_by_768_image() {
    let out = clip_preprocess(&formula_image(512, 768), 224).unwrap();
    assert_eq!(out.size(), vec![1, 3, 224, 224]);
    let every_7th = out.slice(2, 0, 224, 7).slice(3, 0, 224, 7);
    let error = max_abs(&every_7th, &cases()["formula_512x768.output_every_7th"]);
    println!("512 x 768 -> 224: max abs error {error:.2e}");
    assert!(error < TOLERANCE, "{error}");
}

#[test]
fn sizes_follow_torchvision() {
    assert_eq!(shortest_side_size(512, 512, 224), (224, 224));
    assert_eq!(shortest_side_size(512, 768, 224), (224, 336));
    assert_eq!(shortest_side_size(96, 41, 32), (74, 32));
    assert_eq!(shortest_side_size(224, 300, 224), (224, 300));
}

#[test]
fn refuses_what_is_not_a_float_rgb_batch() {
    let gray = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(clip_preprocess(&gray, 4)
        .unwrap_err()
        .to_string()
        .contains("[batch, 3, height, width]"));
    let bytes = Tensor::zeros([2, 3, 8, 8], (Kind::Uint8, Device::Cpu));
    assert!(clip_preprocess(&bytes, 4)
        .unwrap_err()
        .to_string()
        .contains("floating-point"));
}
