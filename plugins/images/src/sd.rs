//! `images/sd2` and `images/sd1.5`: Stable Diffusion 2 (base, 512 px) and 1.5, text-to-image
//! latent diffusion with classifier-free guidance, as diffusers' `StableDiffusionPipeline` runs
//! them.
//!
//! # Files
//!
//! The published repositories (`stabilityai/stable-diffusion-2-base`,
//! `stable-diffusion-v1-5/stable-diffusion-v1-5`) in the diffusers folder layout: `unet/` and
//! `vae/` (`config.json`, `diffusion_pytorch_model.safetensors`), `text_encoder/` (a
//! transformers `CLIPTextModel`: `config.json`, `model.safetensors`), `tokenizer/` (`vocab.json`,
//! `merges.txt` and the token configs, or `tokenizer.json`) and `scheduler/`
//! (`scheduler_config.json`). The folder comes from the `weights` argument, else from the host's
//! weight directories and the Hugging Face cache (see [`crate::hub`]). Every tensor of every
//! component must be used and every parameter found with its shape; all differences are listed
//! together. The text encoder's `position_ids` buffer, which the published exports carry, is
//! ignored on purpose (it is `arange(77)`, not a parameter).
//!
//! # Sampling
//!
//! Samples evolve in latent space: leaf `x` `[n, 4, H / 8, W / 8]` (`H`, `W` the `height` and
//! `width` arguments, 512 by default), drawn from libtorch's global generator (which the host
//! seeds). The scheduler is the training schedule of `scheduler/scheduler_config.json` (SD:
//! `scaled_linear` betas from 0.00085 to 0.012 over 1000 steps) as a `DiscreteDiffusion`; the
//! UNet receives the step index `k` that the host passes. Only epsilon-prediction checkpoints are
//! served (a `v_prediction` config is refused: it needs another output type).
//!
//! # Prompts and guidance
//!
//! `sample_p0` gives every sample a prompt (keyword `prompt`, one string per sample): with the
//! prompt list `P` (argument `prompts`, or the lines of `prompts_file`) and an offset `o` drawn
//! uniformly from `0..len(P)` with libtorch's global CPU generator right after the latents,
//! sample `i` gets `P[(o + i) % len(P)]`. So a batch cycles through consecutive prompts, and
//! batches with different seeds start at different prompts. `preprocess` encodes the prompts once
//! per batch (each distinct prompt once) into `text_embeddings` `[n, 77, D]`, and, when guidance
//! is on, the negative prompt into `negative_embeddings` `[n, 77, D]`; both are per-sample
//! tensors, so they follow their samples when the host slices batches.
//!
//! The conditioning is what `StableDiffusionPipeline.encode_prompt` computes without
//! `clip_skip`: the `last_hidden_state` of the text encoder (every layer, then the final layer
//! norm) on the tokens padded to 77. For SD 1.5 that is OpenAI CLIP ViT-L/14's text tower; for
//! SD 2 it is OpenCLIP ViT-H/14's text tower as exported in the transformers format with 23 of
//! its 24 layers, so its last hidden state is OpenCLIP's penultimate layer followed by the final
//! norm, which is what SD 2 was trained on. The tokenizer pads with `<|endoftext|>` (SD 1.5) or
//! `!` (SD 2), as the repositories' `tokenizer/` configs say.
//!
//! `forward` returns `eps_u + cfg_scale * (eps_c - eps_u)` from one UNet call on the batch
//! `[x; x]` with `[negative; prompt]` embeddings, exactly as the pipeline does. `cfg_scale = 0`
//! turns guidance off: one UNet call on `x` with the prompt embeddings, no unconditional pass.
//! `cfg_scale = 1` is the same prediction and also makes one call.
//!
//! `postprocess` decodes the latents with the VAE (`decode(x / scaling_factor)`, the factor from
//! `vae/config.json`), `decode_chunk` images at a time, to `(image / 2 + 0.5).clamp(0, 1)`:
//! `[n, 3, H, W]` float32 in `[0, 1]`.

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RString, RVec};
use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_base_model, BaseModel, Batch, ConstructContext, DType, Dim, KwargValue,
    Kwargs, LeafSpec, ManagedTensor, OutputType, PluginError, PluginResult, Scheduler,
};
use tch::{Device, Kind, Tensor};

use crate::hub::{
    candidate_roots, find_component, find_file, read_config, ComponentFiles, HubCache, LoadError,
    NotFound, Search,
};
use crate::models::clip::{ClipError, ClipTextModel};
use crate::models::clip_tokenizer::{ClipTokenizer, TokenizerError};
use crate::models::resnet::ConfigError;
use crate::models::scheduler::SchedulerConfig;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::{safetensors_files, Weights, WeightsError};

/// The data type of the samples.
const DATA_TYPE: &str = "images";
/// Channels of the decoded images.
const CHANNELS: i64 = 3;
/// The down-sampling factor of the published VAEs; `height` and `width` must be multiples of it.
const PUBLISHED_VAE_FACTOR: usize = 8;

/// The published repository of `images/sd2`.
pub const SD2_REPO: &str = "stabilityai/stable-diffusion-2-base";
/// The published repository of `images/sd1.5`.
pub const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// The default prompts: varied subjects (animals, landscapes, objects, scenes).
pub const DEFAULT_PROMPTS: [&str; 8] = [
    "a photo of a cat sitting on a windowsill",
    "a golden retriever running on a beach at sunset",
    "a snowy mountain range above a calm lake, landscape photography",
    "a red vintage bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden table, still life",
    "a lighthouse on a rocky coast during a storm",
    "a hummingbird hovering next to a purple flower, macro photo",
    "a cozy cabin in a pine forest with smoke rising from the chimney",
];

fn default_prompts() -> Vec<String> {
    DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect()
}

/// Declares the argument struct of one entry; only the default `repo_id` differs.
macro_rules! sd_arguments {
    ($(#[$meta:meta])* $name:ident, $repo:expr) => {
        arguments! {
            $(#[$meta])*
            pub struct $name {
                /// A diffusers folder holding the pipeline (unet/, vae/, text_encoder/, tokenizer/, scheduler/); empty: look in the host's weight directories and the Hugging Face cache.
                weights: String = String::new();
                /// The Hugging Face repository to look for when `weights` is empty.
                repo_id: String = $repo.to_string();
                /// The prompts; sample i of a batch gets prompts[(o + i) % len], o drawn at random per batch.
                prompts: Vec<String> = default_prompts();
                /// A text file with one prompt per line (blank lines skipped); overrides `prompts`.
                prompts_file: String = String::new();
                /// The negative prompt of classifier-free guidance (empty: the unconditional prompt "").
                negative_prompt: String = String::new();
                /// Classifier-free guidance scale: eps_u + cfg_scale (eps_c - eps_u); 0 turns guidance off (one UNet pass on the prompts).
                cfg_scale: f64 = 7.5 => range(0.0, 100.0);
                /// Image height in pixels, a multiple of 8 (latents are height / 8).
                height: usize = 512 => range(8, 8192);
                /// Image width in pixels, a multiple of 8 (latents are width / 8).
                width: usize = 512 => range(8, 8192);
                /// Images decoded by the VAE at a time in postprocess (bounds its memory).
                decode_chunk: usize = 1 => range(1, 65536);
            }
        }

        impl From<$name> for SdArgs {
            fn from(a: $name) -> Self {
                SdArgs {
                    weights: a.weights,
                    repo_id: a.repo_id,
                    prompts: a.prompts,
                    prompts_file: a.prompts_file,
                    negative_prompt: a.negative_prompt,
                    cfg_scale: a.cfg_scale,
                    height: a.height,
                    width: a.width,
                    decode_chunk: a.decode_chunk,
                }
            }
        }
    };
}

sd_arguments! {
    /// Arguments of `images/sd2`.
    Sd2Args, SD2_REPO
}

sd_arguments! {
    /// Arguments of `images/sd1.5`.
    Sd15Args, SD15_REPO
}

/// The arguments of either entry (see [`Sd2Args`] for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct SdArgs {
    /// Pipeline folder, or empty.
    pub weights: String,
    /// Repository looked for when `weights` is empty.
    pub repo_id: String,
    /// Prompts.
    pub prompts: Vec<String>,
    /// File of prompts, one per line, or empty.
    pub prompts_file: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Guidance scale (0: off).
    pub cfg_scale: f64,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Images decoded at a time.
    pub decode_chunk: usize,
}

/// Which entry: Stable Diffusion 2 (base) or 1.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdVersion {
    /// `images/sd2`.
    Sd2,
    /// `images/sd1.5`.
    Sd15,
}

impl SdVersion {
    /// The entry id.
    pub fn id(self) -> &'static str {
        match self {
            SdVersion::Sd2 => "images/sd2",
            SdVersion::Sd15 => "images/sd1.5",
        }
    }

    /// The published repository.
    pub fn repo(self) -> &'static str {
        match self {
            SdVersion::Sd2 => SD2_REPO,
            SdVersion::Sd15 => SD15_REPO,
        }
    }

    /// The default arguments of the entry.
    pub fn default_args(self) -> SdArgs {
        match self {
            SdVersion::Sd2 => Sd2Args::default().into(),
            SdVersion::Sd15 => Sd15Args::default().into(),
        }
    }
}

/// Why the pipeline could not be found, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// No folder with every component was found.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// A config that cannot be read or built (UNet, VAE, scheduler).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The scheduler is not an epsilon-prediction one.
    #[error(
        "{path}: `prediction_type` is {value:?}, but `{id}` serves epsilon-prediction checkpoints \
         only (`prediction_type` \"epsilon\", as stable-diffusion-2-base and stable-diffusion-v1-5 \
         publish). {hint}"
    )]
    PredictionType {
        /// The scheduler config.
        path: PathBuf,
        /// Its `prediction_type`.
        value: String,
        /// The entry.
        id: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The text encoder cannot be used.
    #[error("text encoder: {0}")]
    TextEncoder(#[from] ClipError),
    /// The tokenizer cannot be built or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Components that do not fit each other.
    #[error("{0}")]
    Incompatible(String),
    /// The weights of one or more components do not fit their architectures (every difference).
    #[error("{}", join_reports(.0))]
    Weights(Vec<WeightsError>),
    /// An argument that cannot be used.
    #[error("{0}")]
    Argument(String),
}

fn join_reports(errors: &[WeightsError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<SdError> for PluginError {
    fn from(e: SdError) -> Self {
        PluginError::new(e.to_string())
    }
}

/// The files of a Stable Diffusion pipeline folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdFiles {
    /// `unet/`.
    pub unet: ComponentFiles,
    /// `vae/`.
    pub vae: ComponentFiles,
    /// The `text_encoder/` folder (`config.json`, `*.safetensors`).
    pub text_encoder: PathBuf,
    /// The `tokenizer/` folder.
    pub tokenizer: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: PathBuf,
}

impl SdFiles {
    /// Finds the files of entry `id` for `args`: in `args.weights` when it is set, else in
    /// `weight_dirs` and then the hub cache. The error lists every place looked at and how to
    /// get the files.
    pub fn locate(
        id: &str,
        args: &SdArgs,
        weight_dirs: &[PathBuf],
        hub: &HubCache,
    ) -> Result<Self, NotFound> {
        let mut search = Search::new();
        let folder = (!args.weights.is_empty()).then(|| Path::new(&args.weights));
        for root in candidate_roots(folder, &args.repo_id, weight_dirs, hub, &mut search) {
            if let Some(files) = Self::in_root(&root, &mut search) {
                return Ok(files);
            }
        }
        Err(NotFound {
            what: format!("`{id}` ({})", args.repo_id),
            search,
            hint: format!(
                "To get them, run `huggingface-cli download {repo}` (it fills the Hugging Face \
                 cache, $HF_HOME, default ~/.cache/huggingface; add `--exclude \"*.ckpt\" \
                 \"*.bin\" \"*fp16*\"` to fetch only the safetensors files read here), or pass the \
                 argument {{\"weights\": \"/path/to/folder\"}} naming a diffusers pipeline folder \
                 with unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (the layout of \
                 https://huggingface.co/{repo}).",
                repo = args.repo_id
            ),
        })
    }

    /// The pipeline in `root`, if every component is there; what is missing goes to `search`.
    pub fn in_root(root: &Path, search: &mut Search) -> Option<Self> {
        let unet = find_component(root, "unet", search);
        let vae = find_component(root, "vae", search);
        let text_encoder = find_text_encoder(root, search);
        let tokenizer = find_tokenizer(root, search);
        let scheduler = find_file(root, "scheduler", "scheduler_config.json", search);
        Some(Self {
            unet: unet?,
            vae: vae?,
            text_encoder: text_encoder?,
            tokenizer: tokenizer?,
            scheduler: scheduler?,
        })
    }
}

fn find_text_encoder(root: &Path, search: &mut Search) -> Option<PathBuf> {
    let dir = root.join("text_encoder");
    let config = dir.join("config.json");
    if !config.is_file() {
        search.looked(&config, "does not exist");
        return None;
    }
    if safetensors_files(&dir).is_empty() {
        let why = if dir.join("pytorch_model.bin").is_file() {
            "has pytorch_model.bin but no model.safetensors; only safetensors weights are read"
        } else {
            "has config.json but no *.safetensors"
        };
        search.looked(&dir, why);
        return None;
    }
    Some(dir)
}

fn find_tokenizer(root: &Path, search: &mut Search) -> Option<PathBuf> {
    let dir = root.join("tokenizer");
    let has = |name: &str| dir.join(name).is_file();
    if has("tokenizer.json") || (has("vocab.json") && has("merges.txt")) {
        return Some(dir);
    }
    search.looked(
        &dir,
        "has neither vocab.json + merges.txt nor tokenizer.json",
    );
    None
}

/// The loaded components of a Stable Diffusion pipeline.
#[derive(Debug)]
pub struct SdPipeline {
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: ClipTextModel,
    tokenizer: ClipTokenizer,
    alpha_bar: Vec<f64>,
    device: Device,
}

impl SdPipeline {
    /// Loads every component of `files` onto `device` (float32) for entry `id`, checking that
    /// the weights fit exactly and that the components fit each other.
    pub fn load(id: &'static str, files: &SdFiles, device: Device) -> Result<Self, SdError> {
        let scheduler =
            SchedulerConfig::from_file(&files.scheduler).map_err(LoadError::Scheduler)?;
        if scheduler.prediction_type != "epsilon" {
            let hint = if scheduler.prediction_type == "v_prediction" {
                "This config predicts the velocity v (as stabilityai/stable-diffusion-2 and \
                 stable-diffusion-2-1 at 768 px do), which needs a velocity output type, not the \
                 epsilon this entry declares; use stabilityai/stable-diffusion-2-base."
            } else {
                "Supported: \"epsilon\"."
            };
            return Err(SdError::PredictionType {
                path: files.scheduler.clone(),
                value: scheduler.prediction_type,
                id,
                hint,
            });
        }
        let alpha_bar = scheduler.alphas_cumprod().map_err(LoadError::Scheduler)?;

        let unet_config: UNet2DConditionConfig = read_config(&files.unet.config)?;
        let vae_config: AutoencoderKLConfig = read_config(&files.vae.config)?;
        let text_config_path = files.text_encoder.join("config.json");
        refuse_attention_mask(&text_config_path)?;
        let tokenizer = ClipTokenizer::from_dir(&files.tokenizer)?;

        let architecture = |path: &Path| {
            let path = path.to_path_buf();
            move |source: ConfigError| LoadError::Architecture { path, source }
        };
        let mut mismatches = Vec::new();
        let weights = Weights::from_safetensors(&files.unet.weights, Kind::Float, device)
            .map_err(LoadError::from)?;
        let unet = UNet2DConditionModel::new(&weights.root(), &unet_config)
            .map_err(architecture(&files.unet.config))?;
        mismatches.extend(weights.finish().err());
        let weights = Weights::from_safetensors(&files.vae.weights, Kind::Float, device)
            .map_err(LoadError::from)?;
        let vae = AutoencoderKL::new(&weights.root(), &vae_config)
            .map_err(architecture(&files.vae.config))?;
        mismatches.extend(weights.finish().err());
        // `ClipTextModel::load` ignores the `position_ids` buffer of the published exports.
        let text_encoder = match ClipTextModel::load(&files.text_encoder, device) {
            Ok(model) => Some(model),
            Err(ClipError::Weights(e)) => {
                mismatches.push(e);
                None
            }
            Err(e) => return Err(e.into()),
        };
        let text_encoder = match text_encoder {
            Some(model) if mismatches.is_empty() => model,
            _ => return Err(SdError::Weights(mismatches)),
        };

        let pipeline = Self {
            unet,
            vae,
            text_encoder,
            tokenizer,
            alpha_bar,
            device,
        };
        pipeline.check_fit(files)?;
        Ok(pipeline)
    }

    /// Checks that the components fit each other.
    fn check_fit(&self, files: &SdFiles) -> Result<(), SdError> {
        let unet = self.unet.config();
        let vae = self.vae.config();
        let text = self.text_encoder.config();
        let levels = unet.block_out_channels.len();
        let cross = unet
            .cross_attention_dim
            .per_level("cross_attention_dim", levels)
            .map_err(|source| LoadError::Architecture {
                path: files.unet.config.clone(),
                source,
            })?;
        if let Some(dim) = cross.iter().find(|d| **d != text.hidden_size) {
            return Err(SdError::Incompatible(format!(
                "the UNet ({}) attends to text features of width {dim} (`cross_attention_dim`), \
                 but the text encoder ({}) produces {} (`hidden_size`)",
                files.unet.config.display(),
                files.text_encoder.display(),
                text.hidden_size
            )));
        }
        if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
            return Err(SdError::Incompatible(format!(
                "the UNet ({}) maps {} to {} channels, but the VAE ({}) has {} latent channels",
                files.unet.config.display(),
                unet.in_channels,
                unet.out_channels,
                files.vae.config.display(),
                vae.latent_channels
            )));
        }
        if vae.out_channels != CHANNELS {
            return Err(SdError::Incompatible(format!(
                "the VAE ({}) decodes to {} channels; RGB images need {CHANNELS}",
                files.vae.config.display(),
                vae.out_channels
            )));
        }
        let length = self.tokenizer.max_length() as i64;
        if length > text.max_position_embeddings {
            return Err(SdError::Incompatible(format!(
                "the tokenizer ({}) pads to {length} tokens, but the text encoder ({}) takes at \
                 most {} (`max_position_embeddings`)",
                files.tokenizer.display(),
                files.text_encoder.display(),
                text.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The CLIP text encoder.
    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.text_encoder
    }

    /// The CLIP tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// `alpha_bar[k]`, `k = 0..=K`, index 0 the cleanest (diffusers' `alphas_cumprod`).
    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Pixels per latent pixel: `2^(levels - 1)` of the VAE (8 for Stable Diffusion), as
    /// diffusers' `vae_scale_factor`.
    pub fn vae_scale_factor(&self) -> i64 {
        1 << (self.vae.config().block_out_channels.len() - 1)
    }

    /// Channels of the latents.
    pub fn latent_channels(&self) -> i64 {
        self.vae.config().latent_channels
    }

    /// The token ids of `prompts` `[n, 77]`, as the pipeline tokenizes them.
    pub fn tokenize<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor, SdError> {
        Ok(self.tokenizer.encode_batch(prompts, self.device)?)
    }

    /// The conditioning `[n, 77, D]` of `prompts`: the text encoder's `last_hidden_state`, as
    /// `StableDiffusionPipeline.encode_prompt` computes it. Each distinct prompt is encoded once.
    pub fn encode_prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor, SdError> {
        let mut unique: Vec<&str> = Vec::new();
        let mut index: Vec<i64> = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let prompt = prompt.as_ref();
            let at = match unique.iter().position(|u| *u == prompt) {
                Some(at) => at,
                None => {
                    unique.push(prompt);
                    unique.len() - 1
                }
            };
            index.push(at as i64);
        }
        let ids = self.tokenize(&unique)?;
        let hidden = tch::no_grad(|| self.text_encoder.forward(&ids))?;
        let index = Tensor::from_slice(&index).to_device(self.device);
        Ok(hidden.index_select(0, &index))
    }

    /// The UNet's noise prediction for latents `x` `[n, c, h, w]` at steps `k` `[n]` given the
    /// conditioning `context` `[n, 77, D]`.
    pub fn predict(&self, x: &Tensor, k: &Tensor, context: &Tensor) -> Tensor {
        tch::no_grad(|| self.unet.forward(x, k, context))
    }

    /// Classifier-free guidance as `StableDiffusionPipeline` computes it: one UNet call on
    /// `[x; x]` with `[uncond; cond]`, then `eps_u + scale * (eps_c - eps_u)`.
    pub fn predict_guided(
        &self,
        x: &Tensor,
        k: &Tensor,
        cond: &Tensor,
        uncond: &Tensor,
        scale: f64,
    ) -> Tensor {
        tch::no_grad(|| {
            let x2 = Tensor::cat(&[x, x], 0);
            let k2 = Tensor::cat(&[k, k], 0);
            let context = Tensor::cat(&[uncond, cond], 0);
            let eps = self.unet.forward(&x2, &k2, &context);
            let parts = eps.chunk(2, 0);
            &parts[0] + (&parts[1] - &parts[0]) * scale
        })
    }

    /// Images `[n, 3, h f, w f]` in `[0, 1]` of latents `[n, c, h, w]`: `vae.decode(latents /
    /// scaling_factor)` mapped by `(x / 2 + 0.5).clamp(0, 1)`, `chunk` latents at a time.
    pub fn decode(&self, latents: &Tensor, chunk: i64) -> Tensor {
        tch::no_grad(|| {
            let size = latents.size();
            let f = self.vae_scale_factor();
            if size[0] == 0 {
                return Tensor::zeros(
                    [0, CHANNELS, size[2] * f, size[3] * f],
                    (Kind::Float, latents.device()),
                );
            }
            let images: Vec<Tensor> = latents
                .split(chunk.max(1), 0)
                .iter()
                .map(|part| (self.vae.decode_latents(part) / 2.0 + 0.5).clamp(0.0, 1.0))
                .collect();
            Tensor::cat(&images, 0)
        })
    }
}

/// Refuses a text-encoder config that asks for an attention mask over the padding
/// (`use_attention_mask`), which the SD pipelines then pass and this implementation does not.
fn refuse_attention_mask(path: &Path) -> Result<(), SdError> {
    let config: serde_json::Value = read_config(path)?;
    if config.get("use_attention_mask") == Some(&serde_json::Value::Bool(true)) {
        return Err(SdError::Incompatible(format!(
            "{}: `use_attention_mask` = true is not supported (the published Stable Diffusion \
             text encoders attend over the padding, without a mask)",
            path.display()
        )));
    }
    Ok(())
}

/// The prompts of `args`: the lines of `prompts_file` when set (blank lines skipped, each line
/// trimmed), else `prompts`.
pub fn resolve_prompts(args: &SdArgs) -> Result<Vec<String>, SdError> {
    if args.prompts_file.is_empty() {
        if args.prompts.is_empty() {
            return Err(SdError::Argument(
                "argument `prompts` is empty; give at least one prompt (or `prompts_file`)".into(),
            ));
        }
        return Ok(args.prompts.clone());
    }
    let path = Path::new(&args.prompts_file);
    let text = std::fs::read_to_string(path).map_err(|e| {
        SdError::Argument(format!(
            "argument `prompts_file`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(SdError::Argument(format!(
            "argument `prompts_file`: {} holds no prompt (one prompt per line)",
            path.display()
        )));
    }
    Ok(prompts)
}

/// Checks `height` and `width`: multiples of `factor`.
fn check_size(args: &SdArgs, factor: usize) -> Result<(), SdError> {
    for (name, value) in [("height", args.height), ("width", args.width)] {
        if value == 0 || value % factor != 0 {
            return Err(SdError::Argument(format!(
                "argument `{name}` is {value}; it must be a multiple of {factor} (the VAE's \
                 down-sampling factor)"
            )));
        }
    }
    Ok(())
}

/// A Stable Diffusion base model: the pipeline and the run's prompts and guidance settings.
#[derive(Debug)]
pub struct SdModel {
    id: &'static str,
    pipeline: SdPipeline,
    prompts: Vec<String>,
    negative_prompt: String,
    cfg_scale: f64,
    latent_shape: [i64; 3],
    decode_chunk: i64,
    unet_calls: usize,
    unet_rows: usize,
}

impl SdModel {
    /// Constructs the entry `version`: checks the arguments, finds the files and loads them
    /// onto the host's device.
    pub fn new(version: SdVersion, args: SdArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        check_size(&args, PUBLISHED_VAE_FACTOR)?;
        resolve_prompts(&args)?;
        let weight_dirs: Vec<PathBuf> = ctx.weight_dirs.iter().map(|d| d.as_str().into()).collect();
        let files = SdFiles::locate(version.id(), &args, &weight_dirs, &HubCache::from_env())
            .map_err(SdError::from)?;
        Ok(Self::load(version, args, &files, device)?)
    }

    /// Loads the model of `files` onto `device` with the settings of `args`.
    pub fn load(
        version: SdVersion,
        args: SdArgs,
        files: &SdFiles,
        device: Device,
    ) -> Result<Self, SdError> {
        let prompts = resolve_prompts(&args)?;
        let pipeline = SdPipeline::load(version.id(), files, device)?;
        let factor = pipeline.vae_scale_factor();
        check_size(&args, factor as usize)?;
        Ok(Self {
            id: version.id(),
            latent_shape: [
                pipeline.latent_channels(),
                args.height as i64 / factor,
                args.width as i64 / factor,
            ],
            pipeline,
            prompts,
            negative_prompt: args.negative_prompt,
            cfg_scale: args.cfg_scale,
            decode_chunk: args.decode_chunk as i64,
            unet_calls: 0,
            unet_rows: 0,
        })
    }

    /// The entry id (`images/sd2` or `images/sd1.5`).
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// The loaded components.
    pub fn pipeline(&self) -> &SdPipeline {
        &self.pipeline
    }

    /// The prompts samples are given, in order.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// Whether `forward` applies classifier-free guidance (an unconditional pass): `cfg_scale`
    /// neither 0 (off) nor 1 (the guided prediction is the conditional one).
    pub fn guided(&self) -> bool {
        self.cfg_scale != 0.0 && self.cfg_scale != 1.0
    }

    /// `[channels, height / 8, width / 8]` of the latents.
    pub fn latent_shape(&self) -> [i64; 3] {
        self.latent_shape
    }

    /// UNet calls made by `forward` so far, and the latents (batch rows) they evaluated.
    pub fn unet_evaluations(&self) -> (usize, usize) {
        (self.unet_calls, self.unet_rows)
    }

    /// Checks that `x` is `[n, channels, h, w]` latents and returns `n`.
    fn check_latents(&self, x: &Tensor) -> PluginResult<i64> {
        let size = x.size();
        let channels = self.latent_shape[0];
        if size.len() != 4 || size[1] != channels {
            return Err(PluginError::new(format!(
                "leaf `x` has shape {size:?}; expected latents [n, {channels}, h, w] ({channels} \
                 x {} x {} for the configured size)",
                self.latent_shape[1], self.latent_shape[2]
            )));
        }
        Ok(size[0])
    }

    /// The embeddings keyword `name`, `[n, 77, D]`, or `None` when absent.
    fn embeddings(&self, kwargs: &mut Kwargs, name: &str, n: i64) -> PluginResult<Option<Tensor>> {
        if kwargs.get(name).is_none() {
            return Ok(None);
        }
        let tensor = kwargs.take_tensor(name)?.into_tch()?;
        let size = tensor.size();
        let width = self.pipeline.text_encoder.config().hidden_size;
        if size.len() != 3 || size[0] != n || size[2] != width {
            return Err(PluginError::new(format!(
                "keyword `{name}` has shape {size:?}; expected [{n}, tokens, {width}] (from \
                 preprocess)"
            )));
        }
        Ok(Some(
            tensor.to_device(self.pipeline.device).to_kind(Kind::Float),
        ))
    }

    /// The per-sample prompts of `kwargs` (keyword `prompt`), which must number `n`.
    fn sample_prompts(kwargs: &Kwargs, n: i64) -> PluginResult<Vec<String>> {
        let prompts = kwargs.strings("prompt")?;
        if prompts.len() as i64 != n {
            return Err(PluginError::new(format!(
                "keyword `prompt` has {} prompts for {n} samples",
                prompts.len()
            )));
        }
        Ok(prompts)
    }

    /// The negative-prompt conditioning repeated for `n` samples.
    fn negative_embeddings(&self, n: i64) -> Result<Tensor, SdError> {
        let negative = self
            .pipeline
            .encode_prompts(std::slice::from_ref(&self.negative_prompt))?;
        Ok(negative.expand([n, -1, -1], false).contiguous())
    }
}

impl BaseModel for SdModel {
    fn output_type(&self) -> OutputType {
        OutputType::Epsilon
    }

    fn scheduler(&self) -> Scheduler {
        Scheduler::DiscreteDiffusion {
            alpha_bar: RVec::from(self.pipeline.alpha_bar.clone()),
        }
    }

    fn sample_p0(
        &mut self,
        n: usize,
        _seed: u64,
        mut kwargs: Kwargs,
    ) -> PluginResult<(Batch, Kwargs)> {
        let [c, h, w] = self.latent_shape;
        let x = Tensor::randn([n as i64, c, h, w], (Kind::Float, self.pipeline.device));
        match kwargs.get("prompt") {
            // Prompts the caller chose are kept.
            Some(_) => {
                Self::sample_prompts(&kwargs, n as i64)?;
            }
            None => {
                let len = self.prompts.len();
                let offset =
                    Tensor::randint(len as i64, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
                let prompts: RVec<RString> = (0..n)
                    .map(|i| RString::from(self.prompts[(offset as usize + i) % len].as_str()))
                    .collect();
                kwargs.insert("prompt", KwargValue::Strings(prompts));
            }
        }
        Ok((Batch::from_tch(DATA_TYPE, [("x", &x)])?, kwargs))
    }

    fn preprocess(&mut self, x: Batch, mut kwargs: Kwargs) -> PluginResult<Kwargs> {
        let n = x
            .require("x")?
            .shape()
            .first()
            .copied()
            .ok_or_else(|| PluginError::new("leaf `x` has no batch dimension"))?;
        let prompts = Self::sample_prompts(&kwargs, n)?;
        let cond = self.pipeline.encode_prompts(&prompts)?;
        kwargs.insert(
            "text_embeddings",
            KwargValue::Tensor(ManagedTensor::from_tch(&cond)?),
        );
        if self.guided() {
            let uncond = self.negative_embeddings(n)?;
            kwargs.insert(
                "negative_embeddings",
                KwargValue::Tensor(ManagedTensor::from_tch(&uncond)?),
            );
        } else {
            kwargs.remove("negative_embeddings");
        }
        Ok(kwargs)
    }

    fn forward(
        &mut self,
        mut x: Batch,
        t: ManagedTensor,
        mut kwargs: Kwargs,
    ) -> PluginResult<Batch> {
        let device = self.pipeline.device;
        let xs = x.take_tch("x")?.to_device(device).to_kind(Kind::Float);
        let n = self.check_latents(&xs)?;
        let k = t.into_tch()?.to_device(device).to_kind(Kind::Float);
        let numel = k.numel() as i64;
        if numel != n && numel != 1 {
            return Err(PluginError::new(format!(
                "{numel} times for {n} samples; expected one per sample"
            )));
        }
        let k = k.reshape([-1]).expand([n], false).contiguous();
        // Embeddings from preprocess; encoded here when it was not called.
        let cond = match self.embeddings(&mut kwargs, "text_embeddings", n)? {
            Some(cond) => cond,
            None => self
                .pipeline
                .encode_prompts(&Self::sample_prompts(&kwargs, n)?)?,
        };
        let eps = if self.guided() {
            let uncond = match self.embeddings(&mut kwargs, "negative_embeddings", n)? {
                Some(uncond) => uncond,
                None => self.negative_embeddings(n)?,
            };
            self.unet_rows += 2 * n as usize;
            self.pipeline
                .predict_guided(&xs, &k, &cond, &uncond, self.cfg_scale)
        } else {
            self.unet_rows += n as usize;
            self.pipeline.predict(&xs, &k, &cond)
        };
        self.unet_calls += 1;
        Batch::from_tch(DATA_TYPE, [("x", &eps)])
    }

    fn postprocess(&mut self, mut x: Batch, _kwargs: Kwargs) -> PluginResult<Option<Batch>> {
        let xs = x
            .take_tch("x")?
            .to_device(self.pipeline.device)
            .to_kind(Kind::Float);
        self.check_latents(&xs)?;
        let images = self.pipeline.decode(&xs, self.decode_chunk);
        Ok(Some(Batch::from_tch(DATA_TYPE, [("x", &images)])?))
    }
}

/// The leaves of the samples after postprocess.
fn image_leaves() -> Vec<LeafSpec> {
    vec![LeafSpec::new(
        "x",
        DType::F32,
        [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
    )
    .with_range(0.0, 1.0)]
}

register_base_model! {
    id: "images/sd2",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Stable Diffusion 2 base (stabilityai/stable-diffusion-2-base): text-to-image latent diffusion, 512x512 by default, epsilon prediction, classifier-free guidance",
    arguments: Sd2Args,
    leaves: image_leaves(),
    construct: |args: Sd2Args, ctx: &ConstructContext| SdModel::new(SdVersion::Sd2, args.into(), ctx),
}

register_base_model! {
    id: "images/sd1.5",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5): text-to-image latent diffusion, 512x512 by default, epsilon prediction, classifier-free guidance",
    arguments: Sd15Args,
    leaves: image_leaves(),
    construct: |args: Sd15Args, ctx: &ConstructContext| SdModel::new(SdVersion::Sd15, args.into(), ctx),
}
