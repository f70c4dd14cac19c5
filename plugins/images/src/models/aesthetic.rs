//! The LAION aesthetic predictor: a head on the L2-normalised CLIP ViT-L/14 image embedding.
//!
//! Two published heads are recognised by their weight names:
//! - LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`: one `Linear(768, 1)` (keys
//!   `weight`, `bias`);
//! - christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth` (the one
//!   DDPO and TRL use, also published as `aesthetic-model.pth` in trl-lib/ddpo-aesthetic-predictor):
//!   `layers.0` Linear(768, 1024), `layers.2` Linear(1024, 128), `layers.4` Linear(128, 64),
//!   `layers.6` Linear(64, 16), `layers.7` Linear(16, 1), with dropouts (identity at inference)
//!   in between and no nonlinearity. The widths are read from the file.
//!
//! Heads load from `.safetensors` or straight from the published `.pth` files: libtorch's loaders
//! that tch exposes cannot read a `torch.save`d state dict (`load_multi` wants a TorchScript
//! module, `loadz_multi` fails on the pickled `OrderedDict`), so [`crate::pth`] reads PyTorch's
//! zip checkpoint format itself, accepting nothing but tensors in (ordered) dictionaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::models::clip::{ClipError, ClipVisionModelWithProjection};
use crate::nn::Linear;
use crate::preprocess::{clip_preprocess, PreprocessError};
use crate::pth;
use crate::weights::{Weights, WeightsError};

/// Why the aesthetic predictor could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum AestheticError {
    /// The CLIP model.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The head's weights.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The images.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// A head file that cannot be read.
    #[error("cannot read the aesthetic head {path}: {message}")]
    Head {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The Python line that converts a `.pth` state dict to safetensors.
pub const PTH_TO_SAFETENSORS: &str = "python -c \"import sys, torch, safetensors.torch as st; \
st.save_file({k: v.float().contiguous() for k, v in torch.load(sys.argv[1], map_location='cpu', \
weights_only=True).items()}, sys.argv[2])\" HEAD.pth HEAD.safetensors";

/// Reads the tensors of a head file: `.safetensors`, or a PyTorch checkpoint (`.pth`, `.pt`,
/// `.bin`, `.ckpt`) in the zip format `torch.save` has written since PyTorch 1.6.
pub fn read_head_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, AestheticError> {
    let error = |message: String| AestheticError::Head {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(error("no such file".to_string()));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let tensors = if extension == "safetensors" {
        Tensor::read_safetensors(path).map_err(|e| error(e.to_string()))?
    } else {
        pth::read_state_dict(path).map_err(|e| {
            error(format!(
                "{e}. Convert it to safetensors with PyTorch and pass that file instead:\n  \
                 {PTH_TO_SAFETENSORS}"
            ))
        })?
    };
    Ok(tensors.into_iter().collect())
}

/// The head on the normalised image embedding.
#[derive(Debug)]
pub enum AestheticHead {
    /// LAION-AI/aesthetic-predictor: `Linear(dim, 1)`.
    Linear(Linear),
    /// improved-aesthetic-predictor: five linear layers `layers.{0,2,4,6,7}`, no nonlinearity.
    Mlp(Vec<Linear>),
}

impl AestheticHead {
    /// Builds the head from its tensors (moved to `device`), recognising the layout by its
    /// names; `dim` is the width of the CLIP image embedding.
    pub fn from_tensors(
        source: &str,
        tensors: BTreeMap<String, Tensor>,
        dim: i64,
        device: Device,
    ) -> Result<Self, AestheticError> {
        let shape = |name: &str| tensors.get(name).map(Tensor::size);
        let is_mlp = tensors.contains_key("layers.0.weight");
        let is_linear = tensors.contains_key("weight");
        let widths: Option<Vec<i64>> = is_mlp.then(|| {
            [0, 2, 4, 6]
                .iter()
                .map(|i| match shape(&format!("layers.{i}.weight")).as_deref() {
                    Some([out, _]) => *out,
                    _ => 0,
                })
                .collect()
        });
        let weights = Weights::from_tensors(source, tensors, Kind::Float, device);
        let root = weights.root();
        let head = match widths {
            Some(widths) => {
                let p = root.pp("layers");
                let mut layers = Vec::new();
                let mut input = dim;
                for (index, width) in [0, 2, 4, 6].into_iter().zip(widths) {
                    layers.push(Linear::new(&p.pp(index), input, width, true));
                    input = width;
                }
                layers.push(Linear::new(&p.pp(7), input, 1, true));
                AestheticHead::Mlp(layers)
            }
            None if is_linear => AestheticHead::Linear(Linear::new(&root, dim, 1, true)),
            None => {
                return Err(AestheticError::Head {
                    path: PathBuf::from(source),
                    message: "neither a linear head (`weight`, `bias`) nor the MLP head \
                              (`layers.0.weight`, ..., `layers.7.bias`)"
                        .to_string(),
                })
            }
        };
        weights.finish()?;
        Ok(head)
    }

    /// Reads a head file (see [`read_head_tensors`]).
    pub fn load(path: &Path, dim: i64, device: Device) -> Result<Self, AestheticError> {
        let tensors = read_head_tensors(path)?;
        Self::from_tensors(&path.display().to_string(), tensors, dim, device)
    }

    /// Scores `[n, dim]` normalised embeddings: `[n]`.
    pub fn forward(&self, embeddings: &Tensor) -> Tensor {
        let out = match self {
            AestheticHead::Linear(linear) => linear.forward(embeddings),
            AestheticHead::Mlp(layers) => layers
                .iter()
                .fold(embeddings.shallow_clone(), |x, layer| layer.forward(&x)),
        };
        out.squeeze_dim(1)
    }
}

/// CLIP image embedding, L2-normalised, then the head.
#[derive(Debug)]
pub struct AestheticPredictor {
    clip: ClipVisionModelWithProjection,
    head: AestheticHead,
}

impl AestheticPredictor {
    /// The predictor from its two parts.
    pub fn new(clip: ClipVisionModelWithProjection, head: AestheticHead) -> Self {
        Self { clip, head }
    }

    /// Loads the CLIP folder (transformers layout) and the head file onto `device`.
    pub fn load(clip_dir: &Path, head: &Path, device: Device) -> Result<Self, AestheticError> {
        Self::load_as(clip_dir, head, Kind::Float, device)
    }

    /// Like [`AestheticPredictor::load`], with the CLIP vision model computing in `kind`; the
    /// head (a few small linear layers) stays in float32, and so does the normalisation of the
    /// embedding before it.
    pub fn load_as(
        clip_dir: &Path,
        head: &Path,
        kind: Kind,
        device: Device,
    ) -> Result<Self, AestheticError> {
        let clip = ClipVisionModelWithProjection::load_as(clip_dir, kind, device)?;
        let head = AestheticHead::load(head, clip.config().projection_dim, device)?;
        Ok(Self::new(clip, head))
    }

    /// The CLIP model.
    pub fn clip(&self) -> &ClipVisionModelWithProjection {
        &self.clip
    }

    /// The L2-normalised image embeddings `[n, dim]` (float32) of normalised pixels: CLIP in
    /// its precision, its output cast to float32 before the normalisation.
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor, AestheticError> {
        let embeds = self.clip.forward(pixel_values)?.to_kind(Kind::Float);
        let norm = embeds.norm_scalaropt_dim(2, [-1], true);
        Ok(embeds / norm)
    }

    /// Aesthetic scores `[n]` (float32, on the model's device) of RGB images `[n, 3, h, w]` in
    /// `[0, 1]`: values outside are clamped (as rounding to 8 bits does in the reference
    /// pipelines), then the images go through [`clip_preprocess`] at the model's `image_size`.
    pub fn score(&self, images: &Tensor) -> Result<Tensor, AestheticError> {
        let _guard = tch::no_grad_guard();
        let device = self.clip.device();
        let images = images
            .to_device(device)
            .to_kind(Kind::Float)
            .clamp(0.0, 1.0);
        let pixels = clip_preprocess(&images, self.clip.config().image_size)?;
        Ok(self.head.forward(&self.embed(&pixels)?))
    }
}
