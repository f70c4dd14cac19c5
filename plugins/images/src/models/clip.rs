//! CLIP text and vision transformers, as transformers' `CLIPTextModel` and
//! `CLIPVisionModelWithProjection` (<https://github.com/openai/CLIP>, `modeling_clip.py`).
//!
//! Both are pre-LayerNorm transformer encoders. The text model embeds tokens and positions, runs
//! the encoder with a causal mask and applies a final layer norm: Stable Diffusion 1.x conditions
//! on this `last_hidden_state` of OpenAI's ViT-L/14 text tower, Stable Diffusion 2.x on the
//! `last_hidden_state` of OpenCLIP ViT-H/14's text tower, exported with 23 of its 24 layers
//! (its penultimate layer, then the final norm). [`ClipTextModel::forward_clip_skip`] gives the
//! same for any layer (diffusers' `clip_skip`). The vision model cuts the image into patches (a
//! strided convolution without bias), prepends a class token, adds position embeddings, applies
//! `pre_layrnorm`, the encoder, `post_layernorm` on the class token and the `visual_projection`
//! (no bias): the image embedding that CLIP compares with text and the aesthetic predictor scores.
//!
//! Weights load by their published names (`text_model.encoder.layers.0.self_attn.q_proj.weight`,
//! `vision_model.embeddings.class_embedding`, `visual_projection.weight`, ...), from the
//! `config.json` + `*.safetensors` of a transformers folder; computation is float32.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::nn::{LayerNorm, Linear};
use crate::weights::{model_files, WeightPath, Weights, WeightsError};

/// Why a CLIP model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// `config.json` is missing, unreadable or does not describe the model.
    #[error("cannot use the CLIP config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A folder holds no weights this module reads.
    #[error(
        "no CLIP weights in {dir}: expected `config.json` and `*.safetensors` in the transformers \
         layout (as in openai/clip-vit-large-patch14, or the `text_encoder/` folder of a Stable \
         Diffusion repository)"
    )]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// The weights do not fit the configuration.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// An input of the wrong shape or with out-of-range values.
    #[error("{0}")]
    Input(String),
}

/// The activation of the MLPs (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's (`"quick_gelu"`).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact, erf-based GELU of OpenCLIP models such as SD 2's text encoder (`"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Activation {
    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
        }
    }
}

/// transformers' `CLIPTextConfig` (the `text_config` of a `CLIPConfig`, or the `config.json` of
/// an SD `text_encoder/`); keys left out take transformers' defaults, unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Number of token embeddings.
    pub vocab_size: i64,
    /// Width of the transformer.
    pub hidden_size: i64,
    /// Width of the MLPs.
    pub intermediate_size: i64,
    /// Width of the text projection (not part of `CLIPTextModel`).
    pub projection_dim: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// Number of position embeddings (the context length, 77).
    pub max_position_embeddings: i64,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
    /// Id of the end token, which marks the pooled position (`2` in old configs: the position
    /// of the largest id is taken instead, as transformers does).
    pub eos_token_id: Option<i64>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: Some(49407),
        }
    }
}

/// transformers' `CLIPVisionConfig`; keys left out take transformers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: i64,
    /// Width of the MLPs.
    pub intermediate_size: i64,
    /// Width of the image embedding (`visual_projection`).
    pub projection_dim: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// Input channels.
    pub num_channels: i64,
    /// Side of the (square) input image.
    pub image_size: i64,
    /// Side of a patch.
    pub patch_size: i64,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Reads a `config.json` and returns the object of one tower: `tower` (`"text"` or `"vision"`)
/// of a `CLIPConfig` (its `{tower}_config`, overlaid with the legacy `{tower}_config_dict` as
/// transformers does), or the whole file for a single-tower config. Also returns the
/// `CLIPConfig`'s top-level `projection_dim`, if it is one.
fn tower_config(path: &Path, tower: &str) -> Result<(Value, Option<i64>), ClipError> {
    let error = |message: String| ClipError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not valid JSON: {e}")))?;
    let Value::Object(root) = json else {
        return Err(error("not a JSON object".to_string()));
    };
    let sub = format!("{tower}_config");
    let is_clip =
        root.get("model_type").and_then(Value::as_str) == Some("clip") || root.contains_key(&sub);
    if !is_clip {
        return Ok((Value::Object(root), None));
    }
    let mut merged: Map<String, Value> = match root.get(&sub) {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    if let Some(Value::Object(overlay)) = root.get(&format!("{tower}_config_dict")) {
        for (key, value) in overlay {
            merged.insert(key.clone(), value.clone());
        }
    }
    let projection_dim = match root.get("projection_dim") {
        None => Some(512),
        Some(value) => Some(
            value
                .as_i64()
                .ok_or_else(|| error(format!("`projection_dim` is {value}")))?,
        ),
    };
    Ok((Value::Object(merged), projection_dim))
}

fn parse_config<T: serde::de::DeserializeOwned>(path: &Path, value: Value) -> Result<T, ClipError> {
    serde_json::from_value(value).map_err(|e| ClipError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl ClipTextConfig {
    /// Reads the text configuration from a `config.json` (`CLIPTextConfig` or `CLIPConfig`).
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let (value, _) = tower_config(path, "text")?;
        let config: Self = parse_config(path, value)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ClipError> {
        check_encoder(path, self.hidden_size, self.num_attention_heads)
    }
}

impl ClipVisionConfig {
    /// Reads the vision configuration from a `config.json` (`CLIPVisionConfig` or
    /// `CLIPConfig`). For a `CLIPConfig` the top-level `projection_dim` is the width of
    /// `visual_projection`, as in transformers' `CLIPModel`.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let (value, projection_dim) = tower_config(path, "vision")?;
        let mut config: Self = parse_config(path, value)?;
        if let Some(projection_dim) = projection_dim {
            config.projection_dim = projection_dim;
        }
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ClipError> {
        check_encoder(path, self.hidden_size, self.num_attention_heads)?;
        if self.patch_size <= 0 || self.image_size % self.patch_size != 0 {
            return Err(ClipError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            });
        }
        Ok(())
    }

    /// Number of position embeddings: the patches and the class token.
    pub fn num_positions(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

fn check_encoder(path: &Path, hidden_size: i64, heads: i64) -> Result<(), ClipError> {
    if heads <= 0 || hidden_size % heads != 0 {
        return Err(ClipError::Config {
            path: path.to_path_buf(),
            message: format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}"
            ),
        });
    }
    Ok(())
}

/// Multi-head self-attention (`self_attn`: `q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: &WeightPath, hidden: i64, num_heads: i64) -> Self {
        Self {
            q_proj: Linear::new(&p.pp("q_proj"), hidden, hidden, true),
            k_proj: Linear::new(&p.pp("k_proj"), hidden, hidden, true),
            v_proj: Linear::new(&p.pp("v_proj"), hidden, hidden, true),
            out_proj: Linear::new(&p.pp("out_proj"), hidden, hidden, true),
            num_heads,
            head_dim: hidden / num_heads,
        }
    }

    /// `[n, seq, hidden]` to `[n, seq, hidden]`; `causal` masks later positions.
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let size = x.size();
        let (n, seq, hidden) = (size[0], size[1], size[2]);
        let heads = |t: Tensor| {
            t.view([n, seq, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(x));
        let k = heads(self.k_proj.forward(x));
        let v = heads(self.v_proj.forward(x));
        // Scale 1/sqrt(head_dim), the default, as transformers' CLIPAttention.
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        );
        self.out_proj
            .forward(&out.transpose(1, 2).reshape([n, seq, hidden]))
    }
}

/// `fc1`, activation, `fc2`.
#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    fn new(p: &WeightPath, hidden: i64, intermediate: i64, activation: Activation) -> Self {
        Self {
            fc1: Linear::new(&p.pp("fc1"), hidden, intermediate, true),
            fc2: Linear::new(&p.pp("fc2"), intermediate, hidden, true),
            activation,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2
            .forward(&self.activation.forward(&self.fc1.forward(x)))
    }
}

/// One pre-LayerNorm encoder layer.
#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x), causal);
        &x + self.mlp.forward(&self.layer_norm2.forward(&x))
    }
}

/// The stack of encoder layers (`encoder.layers.{i}`), shared by both towers.
#[derive(Debug)]
pub struct ClipEncoder {
    layers: Vec<EncoderLayer>,
}

impl ClipEncoder {
    /// `layers` layers of width `hidden` under `p` (`.../encoder`).
    pub fn new(
        p: &WeightPath,
        layers: i64,
        hidden: i64,
        intermediate: i64,
        heads: i64,
        activation: Activation,
        eps: f64,
    ) -> Self {
        let p = p.pp("layers");
        let layers = (0..layers)
            .map(|i| {
                let p = p.pp(i);
                EncoderLayer {
                    self_attn: Attention::new(&p.pp("self_attn"), hidden, heads),
                    layer_norm1: LayerNorm::new(&p.pp("layer_norm1"), hidden, eps),
                    mlp: Mlp::new(&p.pp("mlp"), hidden, intermediate, activation),
                    layer_norm2: LayerNorm::new(&p.pp("layer_norm2"), hidden, eps),
                }
            })
            .collect();
        Self { layers }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The hidden states after the first `depth` layers.
    pub fn forward(&self, x: &Tensor, causal: bool, depth: usize) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in self.layers.iter().take(depth) {
            x = layer.forward(&x, causal);
        }
        x
    }

    /// The input and the output of every layer (transformers' `hidden_states`).
    pub fn hidden_states(&self, x: &Tensor, causal: bool) -> Vec<Tensor> {
        let mut states = vec![x.shallow_clone()];
        for layer in &self.layers {
            let next = layer.forward(&states[states.len() - 1], causal);
            states.push(next);
        }
        states
    }
}

/// The folder's weights: its `*.safetensors` files, in `kind` on `device`.
fn folder_weights(dir: &Path, kind: Kind, device: Device) -> Result<Weights, ClipError> {
    let files = model_files(dir);
    if files.is_empty() || !dir.join("config.json").is_file() {
        return Err(ClipError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Weights::from_files(&files, kind, device)?)
}

/// transformers' `CLIPTextModel` (the `text_encoder` of Stable Diffusion).
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// The text model under `p`: `text_model` in the published layout (transformers 5 saves a
    /// lone `CLIPTextModel` without that prefix: pass the root then).
    pub fn new(p: &WeightPath, config: &ClipTextConfig) -> Self {
        let c = config;
        let embeddings = p.pp("embeddings");
        Self {
            token_embedding: embeddings
                .pp("token_embedding")
                .get("weight", &[c.vocab_size, c.hidden_size]),
            position_embedding: embeddings
                .pp("position_embedding")
                .get("weight", &[c.max_position_embeddings, c.hidden_size]),
            encoder: ClipEncoder::new(
                &p.pp("encoder"),
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.hidden_act,
                c.layer_norm_eps,
            ),
            final_layer_norm: LayerNorm::new(
                &p.pp("final_layer_norm"),
                c.hidden_size,
                c.layer_norm_eps,
            ),
            config: config.clone(),
        }
    }

    /// Loads a transformers folder (`config.json` + `*.safetensors`, such as the `text_encoder/`
    /// of a Stable Diffusion repository) onto `device`, checking that every weight fits.
    pub fn load(dir: &Path, device: Device) -> Result<Self, ClipError> {
        Self::load_as(dir, Kind::Float, device)
    }

    /// Like [`ClipTextModel::load`], computing in `kind` (weights converted once). As in
    /// transformers, every layer runs in that precision: its LayerNorm kernels take their
    /// statistics in float32, and attention goes through the fused
    /// `scaled_dot_product_attention` (transformers' default `sdpa` implementation).
    pub fn load_as(dir: &Path, kind: Kind, device: Device) -> Result<Self, ClipError> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let weights = folder_weights(dir, kind, device)?;
        let root = weights.root();
        let p = if root.contains("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root
        };
        let model = Self::new(&p, &config);
        weights.ignore(|name| name.ends_with("position_ids"));
        weights.finish()?;
        Ok(model)
    }

    /// Its configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Token plus position embeddings of `input_ids` `[n, seq]` (integers).
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor, ClipError> {
        let size = input_ids.size();
        let [n, seq] = size[..] else {
            return Err(ClipError::Input(format!(
                "CLIP text input ids must be [batch, sequence], got {size:?}"
            )));
        };
        if seq > self.config.max_position_embeddings || seq == 0 {
            return Err(ClipError::Input(format!(
                "CLIP text input has {seq} tokens; the model takes 1 to {}",
                self.config.max_position_embeddings
            )));
        }
        if input_ids.is_floating_point() || input_ids.kind() == Kind::Bool {
            return Err(ClipError::Input(format!(
                "CLIP text input ids must be integers, got {:?}",
                input_ids.kind()
            )));
        }
        let device = self.token_embedding.device();
        let ids = input_ids.to_device(device).to_kind(Kind::Int64);
        if n > 0 {
            let (low, high) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if low < 0 || high >= self.config.vocab_size {
                return Err(ClipError::Input(format!(
                    "CLIP token ids range from {low} to {high}, outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        let tokens = Tensor::embedding(&self.token_embedding, &ids, -1, false, false);
        Ok(tokens + self.position_embedding.narrow(0, 0, seq).unsqueeze(0))
    }

    /// The `last_hidden_state` `[n, seq, hidden]` of token ids `[n, seq]`: every layer, then
    /// the final layer norm (what Stable Diffusion conditions on).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor, ClipError> {
        self.forward_clip_skip(input_ids, 0)
    }

    /// The hidden state `clip_skip` layers before the last, with the final layer norm applied,
    /// as diffusers' `clip_skip` (0: [`forward`](Self::forward); 1: the penultimate layer).
    pub fn forward_clip_skip(
        &self,
        input_ids: &Tensor,
        clip_skip: usize,
    ) -> Result<Tensor, ClipError> {
        let layers = self.encoder.len();
        if clip_skip >= layers {
            return Err(ClipError::Input(format!(
                "clip_skip {clip_skip} leaves no layer of the {layers} of this text encoder"
            )));
        }
        let x = self.embed(input_ids)?;
        let x = self.encoder.forward(&x, true, layers - clip_skip);
        Ok(self.final_layer_norm.forward(&x))
    }

    /// The embeddings and the output of every layer, without the final layer norm
    /// (transformers' `output_hidden_states`).
    pub fn hidden_states(&self, input_ids: &Tensor) -> Result<Vec<Tensor>, ClipError> {
        let x = self.embed(input_ids)?;
        Ok(self.encoder.hidden_states(&x, true))
    }

    /// The final layer norm, for hidden states taken from [`hidden_states`](Self::hidden_states).
    pub fn final_layer_norm(&self, x: &Tensor) -> Tensor {
        self.final_layer_norm.forward(x)
    }

    /// transformers' `pooler_output` `[n, hidden]`: the last hidden state at the first end token
    /// (or, for old configs with `eos_token_id` 2, at the largest token id).
    pub fn pooled_output(&self, last_hidden_state: &Tensor, input_ids: &Tensor) -> Tensor {
        let ids = input_ids
            .to_device(last_hidden_state.device())
            .to_kind(Kind::Int64);
        let position = match self.config.eos_token_id {
            Some(eos) if eos != 2 => ids.eq(eos).to_kind(Kind::Int).argmax(-1, false),
            _ => ids.argmax(-1, false),
        };
        let n = ids.size()[0];
        let rows = Tensor::arange(n, (Kind::Int64, last_hidden_state.device()));
        last_hidden_state.index(&[Some(rows), Some(position)])
    }
}

/// transformers' `CLIPVisionModel` (`vision_model`): the image transformer up to the pooled,
/// normalised class token.
#[derive(Debug)]
pub struct ClipVisionTransformer {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    config: ClipVisionConfig,
}

impl ClipVisionTransformer {
    /// The vision transformer under `p` (`vision_model`).
    pub fn new(p: &WeightPath, config: &ClipVisionConfig) -> Self {
        let c = config;
        let embeddings = p.pp("embeddings");
        Self {
            class_embedding: embeddings.get("class_embedding", &[c.hidden_size]),
            patch_embedding: embeddings.pp("patch_embedding").get(
                "weight",
                &[c.hidden_size, c.num_channels, c.patch_size, c.patch_size],
            ),
            position_embedding: embeddings
                .pp("position_embedding")
                .get("weight", &[c.num_positions(), c.hidden_size]),
            pre_layrnorm: LayerNorm::new(&p.pp("pre_layrnorm"), c.hidden_size, c.layer_norm_eps),
            encoder: ClipEncoder::new(
                &p.pp("encoder"),
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.hidden_act,
                c.layer_norm_eps,
            ),
            post_layernorm: LayerNorm::new(
                &p.pp("post_layernorm"),
                c.hidden_size,
                c.layer_norm_eps,
            ),
            config: config.clone(),
        }
    }

    /// `(last_hidden_state [n, 1 + patches, hidden], pooler_output [n, hidden])` of normalised
    /// pixels `[n, channels, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<(Tensor, Tensor), ClipError> {
        let c = &self.config;
        let size = pixel_values.size();
        if size.len() != 4
            || size[1] != c.num_channels
            || size[2] != c.image_size
            || size[3] != c.image_size
        {
            return Err(ClipError::Input(format!(
                "CLIP vision input must be [batch, {}, {}, {}], got {size:?}",
                c.num_channels, c.image_size, c.image_size
            )));
        }
        let n = size[0];
        let x = pixel_values
            .to_device(self.patch_embedding.device())
            .to_kind(self.patch_embedding.kind());
        let patches = x
            .conv2d(
                &self.patch_embedding,
                None::<Tensor>,
                [c.patch_size, c.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let class = self
            .class_embedding
            .view([1, 1, -1])
            .expand([n, 1, -1], false);
        let x = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        let x = self.pre_layrnorm.forward(&x);
        let x = self.encoder.forward(&x, false, self.encoder.len());
        let pooled = self.post_layernorm.forward(&x.select(1, 0));
        Ok((x, pooled))
    }
}

/// transformers' `CLIPVisionModelWithProjection`: image embeddings (`image_embeds`), as
/// `CLIPModel.get_image_features` computes them.
#[derive(Debug)]
pub struct ClipVisionModelWithProjection {
    vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    config: ClipVisionConfig,
}

impl ClipVisionModelWithProjection {
    /// The model with `vision_model.*` and `visual_projection.weight` under `p`.
    pub fn new(p: &WeightPath, config: &ClipVisionConfig) -> Self {
        Self {
            vision_model: ClipVisionTransformer::new(&p.pp("vision_model"), config),
            visual_projection: Linear::new(
                &p.pp("visual_projection"),
                config.hidden_size,
                config.projection_dim,
                false,
            ),
            config: config.clone(),
        }
    }

    /// Loads a transformers folder onto `device`: a `CLIPVisionModelWithProjection`, or a whole
    /// `CLIPModel` (openai/clip-vit-large-patch14) whose text tower is then left unused.
    pub fn load(dir: &Path, device: Device) -> Result<Self, ClipError> {
        Self::load_as(dir, Kind::Float, device)
    }

    /// Like [`ClipVisionModelWithProjection::load`], computing in `kind` (weights converted
    /// once; pixels cast to it), as transformers runs the model after `.to(dtype)`.
    pub fn load_as(dir: &Path, kind: Kind, device: Device) -> Result<Self, ClipError> {
        let config = ClipVisionConfig::from_file(&dir.join("config.json"))?;
        let weights = folder_weights(dir, kind, device)?;
        let model = Self::new(&weights.root(), &config);
        weights.ignore(|name| {
            name.starts_with("text_model.")
                || name == "text_projection.weight"
                || name == "logit_scale"
                || name.ends_with("position_ids")
        });
        weights.finish()?;
        Ok(model)
    }

    /// Its configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The image embeddings `[n, projection_dim]` of normalised pixels
    /// `[n, channels, image_size, image_size]` (see [`crate::preprocess`]).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ClipError> {
        let (_, pooled) = self.vision_model.forward(pixel_values)?;
        Ok(self.visual_projection.forward(&pooled))
    }

    /// The vision transformer without the projection.
    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// The device its weights are on.
    pub fn device(&self) -> Device {
        self.vision_model.patch_embedding.device()
    }

    /// The floating-point kind it computes in.
    pub fn kind(&self) -> Kind {
        self.vision_model.patch_embedding.kind()
    }
}
