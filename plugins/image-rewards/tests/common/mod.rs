//! Fixture loading shared by the tests.

#![allow(dead_code)]

use std::path::PathBuf;

use flowgym_plugin_api::serde_json::{self, Value};
use flowgym_plugin_api::{Batch, ManagedTensor};

/// One committed fixture image and Pillow's JPEG sizes for it.
pub struct Fixture {
    /// `kind_HxW`.
    pub name: String,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `[3, H, W]` float32 in [0, 1], as the reward receives it.
    pub chw: Vec<f32>,
    /// `(quality, bytes)` of Pillow's JPEG.
    pub pillow_bytes: Vec<(u8, usize)>,
}

/// The fixture folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// `jpeg_sizes.json`, parsed.
pub fn document() -> Value {
    let path = fixtures_dir().join("jpeg_sizes.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn as_usize(value: &Value, what: &str) -> usize {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned integer: {value}")) as usize
}

/// Every fixture image, read as the reward will see it.
pub fn fixtures() -> Vec<Fixture> {
    let doc = document();
    let images = doc["images"].as_array().expect("`images` is a list");
    images
        .iter()
        .map(|image| {
            let name = image["name"].as_str().expect("name").to_string();
            let height = as_usize(&image["height"], "height");
            let width = as_usize(&image["width"], "width");
            let file = fixtures_dir().join(image["file"].as_str().expect("file"));
            let bytes = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let count = 3 * height * width;
            let chw: Vec<f32> = match image["dtype"].as_str() {
                Some("f32") => {
                    assert_eq!(bytes.len(), count * 4, "{name}: file size");
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }
                Some("u8") => {
                    assert_eq!(bytes.len(), count, "{name}: file size");
                    // The script feeds Pillow from exactly these values: u8 / 255 in float32.
                    bytes.iter().map(|&b| f32::from(b) / 255.0).collect()
                }
                other => panic!("{name}: unknown dtype {other:?}"),
            };
            let pillow_bytes = image["jpeg_bytes"]
                .as_object()
                .expect("jpeg_bytes")
                .iter()
                .map(|(q, n)| {
                    (
                        q.parse::<u8>().expect("quality key"),
                        as_usize(n, "jpeg_bytes"),
                    )
                })
                .collect();
            Fixture {
                name,
                height,
                width,
                chw,
                pillow_bytes,
            }
        })
        .collect()
}

/// An `images` batch holding these `[3, H, W]` images (all of one size).
pub fn batch(images: &[&[f32]], height: usize, width: usize) -> Batch {
    let data: Vec<f32> = images
        .iter()
        .flat_map(|image| image.iter().copied())
        .collect();
    let x = ManagedTensor::from_vec(data, &[images.len(), 3, height, width]).expect("shape");
    Batch::single("images", "x", x)
}
