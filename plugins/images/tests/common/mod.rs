//! Helpers shared by the golden tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowgym_images::models::clip::{ClipTextConfig, ClipVisionConfig};
use flowgym_images::models::unet_2d::UNet2DConfig;
use flowgym_images::models::unet_2d_condition::UNet2DConditionConfig;
use flowgym_images::models::vae::AutoencoderKLConfig;
use tch::{Device, Kind, Tensor};

/// `tests/fixtures/diffusers/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(rel)
}

/// Every tensor of a safetensors file, by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The `__metadata__` of a safetensors file's header.
pub fn safetensors_metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

/// The tensor `name` of `tensors`.
pub fn get<'a>(tensors: &'a BTreeMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
}

/// `max |a - b|`, in float64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max();
    d.double_value(&[])
}

/// `max |a|`, in float64.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// float32's unit roundoff `u = 2^-24`: the largest relative error of rounding one result.
pub const F32_UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

/// How far apart rounding alone may put two correct float32 evaluations of one network on the
/// same weights and inputs, such as this crate's and the PyTorch reference's:
/// `2 * depth * sqrt(terms) * u * scale`.
///
/// Both evaluate the same operations, but may add in other orders (other kernels, blocking,
/// fusion). A float32 sum of `terms` values whose roundings fall either way is off by about
/// `sqrt(terms)` unit roundoffs of the values' magnitude `scale`; every one of the `depth` sums
/// (convolutions, matrix products, normalisations, attention) that a value goes through in
/// sequence adds such an error, normalisation keeping each layer's gain near 1; and each of the
/// two evaluations carries its own. Mistakes in the computation itself (a wrong weight, layout,
/// activation or scaling) move these random-weight fixtures' outputs by far more.
pub fn rounding_tolerance(depth: usize, terms: usize, scale: f64) -> f64 {
    2.0 * depth as f64 * (terms as f64).sqrt() * F32_UNIT_ROUNDOFF * scale
}

/// Sums in sequence in a resnet block: two group norms, two convolutions.
pub const RESNET_SUMS: usize = 4;
/// Sums in sequence in a spatial self-attention: group norm, q/k/v, scores, softmax, weighted
/// values, output projection.
pub const ATTENTION_SUMS: usize = 6;
/// Sums in sequence in a transformer layer (CLIP): layer norm, q/k/v, scores, softmax, weighted
/// values, output projection, layer norm, the MLP's two layers.
pub const TRANSFORMER_LAYER_SUMS: usize = 9;
/// Sums in sequence in a `Transformer2DModel` of one block: group norm and projection in, layer
/// norm and self-attention (q/k/v, scores, softmax, values, output), layer norm and
/// cross-attention (the same five), layer norm and the feed-forward's two layers, projection
/// out.
pub const TRANSFORMER_2D_SUMS: usize = 2 + (1 + 5) + (1 + 5) + (1 + 2) + 1;

/// The longest chain of sums through a CLIP text transformer: its layers, then the final layer
/// norm.
pub fn clip_text_depth(c: &ClipTextConfig) -> usize {
    TRANSFORMER_LAYER_SUMS * c.num_hidden_layers as usize + 1
}

/// The longest sum of a CLIP text transformer: attention over the token positions, or the MLP's
/// or the layers' width if wider.
pub fn clip_text_terms(c: &ClipTextConfig) -> usize {
    c.max_position_embeddings
        .max(c.intermediate_size)
        .max(c.hidden_size) as usize
}

/// The longest chain of sums through the CLIP vision tower with its projection: the patch
/// embedding, the layer norm before the layers, the layers, the one after and the projection.
pub fn clip_vision_depth(c: &ClipVisionConfig) -> usize {
    1 + 1 + TRANSFORMER_LAYER_SUMS * c.num_hidden_layers as usize + 1 + 1
}

/// The longest sum of the CLIP vision tower: the patch embedding over a patch of every channel,
/// or the MLP's width if wider.
pub fn clip_vision_terms(c: &ClipVisionConfig) -> usize {
    (c.num_channels * c.patch_size * c.patch_size)
        .max(c.intermediate_size)
        .max(c.num_positions()) as usize
}

/// The longest chain of sums through a `UNet2DModel`: the input convolution, each down block's
/// resnets (and attentions) and down-sampler, the mid block, each up block's one extra resnet
/// per level and up-sampler, the output norm and convolution (and the skip image's sum). A
/// resampling done by a resnet (`ResnetDownsampleBlock2D`, the skip blocks, `resnet`
/// `downsample_type` / `upsample_type`) counts as one more resnet.
pub fn unet_2d_depth(c: &UNet2DConfig) -> usize {
    let per_layer =
        |kind: &str| RESNET_SUMS + ATTENTION_SUMS * usize::from(kind.starts_with("Attn"));
    let resample = |kind: &str, by_type: &Option<String>| {
        let resnet = kind.contains("Resnet")
            || kind.contains("Skip")
            || (kind.starts_with("Attn") && by_type.as_deref() == Some("resnet"));
        if resnet {
            RESNET_SUMS + 1
        } else {
            1
        }
    };
    let down: usize = c
        .down_block_types
        .iter()
        .map(|k| c.layers_per_block * per_layer(k) + resample(k, &c.downsample_type))
        .sum();
    let up: usize = c
        .up_block_types
        .iter()
        .map(|k| (c.layers_per_block + 1) * per_layer(k) + resample(k, &c.upsample_type))
        .sum();
    let mid = c.mid_block_type.as_ref().map_or(0, |_| {
        2 * RESNET_SUMS + ATTENTION_SUMS * usize::from(c.add_attention)
    });
    1 + down + mid + up + 3
}

/// The longest chain of sums through a `UNet2DConditionModel`, counted as for
/// [`unet_2d_depth`] with a `Transformer2DModel` after each resnet of the cross-attention
/// blocks.
pub fn unet_2d_condition_depth(c: &UNet2DConditionConfig) -> usize {
    let levels = c.block_out_channels.len();
    let layers = c
        .layers_per_block
        .per_level("layers_per_block", levels)
        .unwrap();
    let per_layer =
        |kind: &str| RESNET_SUMS + TRANSFORMER_2D_SUMS * usize::from(kind.starts_with("CrossAttn"));
    let down: usize = c
        .down_block_types
        .iter()
        .zip(&layers)
        .map(|(k, n)| n * per_layer(k))
        .sum();
    let up: usize = c
        .up_block_types
        .iter()
        .zip(layers.iter().rev())
        .map(|(k, n)| (n + 1) * per_layer(k))
        .sum();
    let mid = match c.mid_block_type.as_deref() {
        Some("UNetMidBlock2DCrossAttn") => 2 * RESNET_SUMS + TRANSFORMER_2D_SUMS,
        Some(_) => RESNET_SUMS,
        None => 0,
    };
    1 + down + (levels - 1) + mid + up + (levels - 1) + 2
}

/// The longest chain of sums through the VAE decoder: the 1x1 post-quantisation and input
/// convolutions, the mid block (two resnets around an attention), each up block's resnets and
/// up-sampler, the output norm and convolution.
pub fn vae_decoder_depth(c: &AutoencoderKLConfig) -> usize {
    let levels = c.block_out_channels.len();
    2 + vae_mid_depth(c) + levels * (c.layers_per_block + 1) * RESNET_SUMS + (levels - 1) + 2
}

/// The longest chain of sums through the VAE encoder: the input convolution, each down block's
/// resnets and down-sampler, the mid block, the output norm and convolution and the 1x1
/// quantisation convolution.
pub fn vae_encoder_depth(c: &AutoencoderKLConfig) -> usize {
    let levels = c.block_out_channels.len();
    1 + levels * c.layers_per_block * RESNET_SUMS + (levels - 1) + vae_mid_depth(c) + 3
}

/// The VAE's mid block: two resnets, with an attention between them if the config says so.
fn vae_mid_depth(c: &AutoencoderKLConfig) -> usize {
    2 * RESNET_SUMS + ATTENTION_SUMS * usize::from(c.mid_block_add_attention)
}

/// The longest sum of a UNet on `pixels`-pixel inputs: a group norm at full resolution over an
/// up block's input, the widest level's channels plus a skip connection at most (twice the
/// widest), in `groups` groups. It exceeds the convolutions' `9 * 2 * widest` inputs and the
/// attentions' `pixels` positions.
pub fn unet_terms(block_out_channels: &[i64], groups: i64, pixels: i64) -> usize {
    let widest = *block_out_channels.iter().max().unwrap();
    (2 * widest / groups * pixels) as usize
}

/// The longest sum of the VAE decoder making `pixels`-pixel images: a group norm at full
/// resolution over the widest level's channels in `groups` groups.
pub fn vae_terms(block_out_channels: &[i64], groups: i64, pixels: i64) -> usize {
    let widest = *block_out_channels.iter().max().unwrap();
    (widest / groups * pixels) as usize
}

/// A fresh, empty scratch folder for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("flowgym-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch folder");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of `from` (not recursively) into `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Writes `tensors` as a safetensors file.
pub fn write_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) {
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&list, path).unwrap();
}

/// `{"parameters": {name: shape}, "config": {...}}` of one published model in
/// `published.json`.
pub fn published(name: &str) -> (serde_json::Value, BTreeMap<String, Vec<i64>>) {
    let text = std::fs::read_to_string(fixture("published.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &all[name];
    let parameters = entry["parameters"]
        .as_object()
        .unwrap_or_else(|| panic!("published.json has no `{name}`"))
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (k.clone(), shape)
        })
        .collect();
    (entry["config"].clone(), parameters)
}

/// Weights with every published name at its shape, backed by one expanded zero (no memory).
pub fn phantom_weights(
    parameters: &BTreeMap<String, Vec<i64>>,
) -> flowgym_images::weights::Weights {
    let zero = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let tensors = parameters
        .iter()
        .map(|(name, shape)| {
            let view = zero
                .reshape(vec![1; shape.len()])
                .expand(shape.as_slice(), false);
            (name.clone(), view)
        })
        .collect();
    flowgym_images::weights::Weights::from_tensors(
        "published.json",
        tensors,
        Kind::Float,
        Device::Cpu,
    )
}

/// The tensors renamed to the attention names of checkpoints saved before diffusers renamed
/// them (`query`, `key`, `value`, `proj_attn`), which diffusers still accepts on load.
pub fn with_legacy_attention_names(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, tensor)| {
            let name = name
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (name, tensor)
        })
        .collect()
}
