//! CLIP image preprocessing against `F.interpolate(mode="bicubic", antialias=True)` + center
//! crop + normalisation in PyTorch 2.13 (the tensor path of transformers' CLIPImageProcessor).
//! The max abs error allowed on normalised values is what float32 rounding explains for the
//! resampling (see [`tolerance`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowgym_images::preprocess::{clip_preprocess, shortest_side_size};
mod common;

use common::{max_abs, max_abs_diff, rounding_tolerance};
use tch::{Device, Kind, Tensor};

/// What rounding explains (see [`rounding_tolerance`]) for images of `height` x `width` pixels
/// preprocessed to `size`: two resampling passes and the normalisation, the longest sum being
/// the antialiased bicubic kernel's, whose support of 2 pixels on each side widens by the
/// downscale factor (at most `4 * factor + 1` taps), at the magnitude of the `reference`.
fn tolerance(height: i64, width: i64, size: i64, reference: &Tensor) -> f64 {
    let factor = (height.min(width) as f64 / size as f64).max(1.0);
    let taps = (4.0 * factor).ceil() as usize + 1;
    rounding_tolerance(3, taps, max_abs(reference))
}

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
    for (i, size) in sizes.into_iter().enumerate() {
        let input = &cases[&format!("case{i}.input")];
        let reference = &cases[&format!("case{i}.output")];
        let got = clip_preprocess(input, size).unwrap();
        let error = max_abs_diff(&got, reference);
        let [_, _, height, width] = input.size()[..] else {
            panic!("case {i} is not a batch of images");
        };
        let tolerance = tolerance(height, width, size, reference);
        println!(
            "case {i} {:?} -> {size}: max abs error {error:.2e} (tolerance {tolerance:.2e})",
            input.size()
        );
        assert!(error < tolerance, "case {i}: {error}");
    }
}

#[test]
fn matches_at_the_real_size_on_a_512_by_768_image() {
    let out = clip_preprocess(&formula_image(512, 768), 224).unwrap();
    assert_eq!(out.size(), vec![1, 3, 224, 224]);
    let every_7th = out.slice(2, 0, 224, 7).slice(3, 0, 224, 7);
    let reference = &cases()["formula_512x768.output_every_7th"];
    let error = max_abs_diff(&every_7th, reference);
    let tolerance = tolerance(512, 768, 224, reference);
    println!("512 x 768 -> 224: max abs error {error:.2e} (tolerance {tolerance:.2e})");
    assert!(error < tolerance, "{error}");
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
