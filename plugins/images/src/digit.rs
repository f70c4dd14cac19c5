//! `images/digit`: how much a digit classifier believes an image shows a given digit.
//!
//! The classifier ([`DigitClassifier`]) is the project's own, trained by
//! `flowgym-host train-classifier` on scikit-learn's 8 x 8 digits (held-out accuracy in
//! `plugins/images/weights/digit-classifier/metrics.json` of the source repository) and compiled
//! into the plugin. Images of any size and channel count are first turned grey (channel mean)
//! and resized to 8 x 8 (area averaging, or bilinear when smaller).

use std::path::{Path, PathBuf};

use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_reward, Batch, Capabilities, ConstructContext, DType, Dim, Kwargs,
    LeafSpec, ManagedTensor, PluginError, PluginResult, Reward, RewardOutput,
};
use tch::{Device, Kind, Tensor};

use crate::models::digit_classifier::{DigitClassifier, DigitClassifierConfig};
use crate::weights::Weights;

/// The built-in classifier's config.
pub const CONFIG: &str = include_str!("../weights/digit-classifier/config.json");
/// The built-in classifier's weights (safetensors).
pub const WEIGHTS: &[u8] = include_bytes!("../weights/digit-classifier/model.safetensors");

arguments! {
    /// Arguments of `images/digit`.
    pub struct DigitArgs {
        /// The digit to reward.
        digit: u8 = 3 => range(0, 9);
        /// `log_prob`: log p(digit | image); `prob`: p(digit | image); `hit`: 1 when the digit is the classifier's top class, else 0.
        form: String = "log_prob".to_string() => one_of("log_prob", "prob", "hit");
        /// A folder with the classifier's config.json and model.safetensors, instead of the built-in one.
        weights: String = String::new();
    }
}

/// The reward.
#[derive(Debug)]
pub struct DigitReward {
    classifier: DigitClassifier,
    digit: i64,
    form: String,
    device: Device,
}

impl DigitReward {
    /// Constructs the reward: the built-in classifier, or the one in `args.weights`.
    pub fn new(args: DigitArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        let classifier = if args.weights.is_empty() {
            let tensors = crate::safetensors_file::read_bytes(WEIGHTS).map_err(PluginError::new)?;
            let config = serde_json::from_str(CONFIG)
                .map_err(|e| PluginError::new(format!("built-in classifier config: {e}")))?;
            build(
                &config,
                tensors,
                "the built-in images/digit classifier",
                device,
            )?
        } else {
            load_folder(Path::new(&args.weights), device)?
        };
        let classes = classifier.config().num_classes;
        if i64::from(args.digit) >= classes {
            return Err(PluginError::new(format!(
                "digit {} is not a class of the classifier (0 to {})",
                args.digit,
                classes - 1
            )));
        }
        Ok(Self {
            classifier,
            digit: i64::from(args.digit),
            form: args.form,
            device,
        })
    }

    /// The classifier's log-probabilities `[n, classes]` of images `[n, C, H, W]` in `[0, 1]`.
    pub fn log_probs(&self, images: &Tensor) -> PluginResult<Tensor> {
        let size = images.size();
        if size.len() != 4 || size[1] < 1 {
            return Err(PluginError::new(format!(
                "leaf `x` has shape {size:?}; expected [n, C, H, W]"
            )));
        }
        let side = self.classifier.config().image_size;
        let grey =
            images
                .to_device(self.device)
                .to_kind(Kind::Float)
                .mean_dim(1, true, Kind::Float);
        let grey = if size[2] == side && size[3] == side {
            grey
        } else if size[2] >= side && size[3] >= side {
            grey.adaptive_avg_pool2d([side, side])
        } else {
            grey.upsample_bilinear2d([side, side], false, None, None)
        };
        Ok(tch::no_grad(|| self.classifier.log_probs(&grey)))
    }
}

/// The classifier of `config` from `tensors` (all of which it must use).
fn build(
    config: &DigitClassifierConfig,
    tensors: Vec<(String, Tensor)>,
    source: &str,
    device: Device,
) -> PluginResult<DigitClassifier> {
    if config.image_size % 4 != 0 || config.image_size <= 0 {
        return Err(PluginError::new(format!(
            "{source}: `image_size` = {} must be a positive multiple of 4",
            config.image_size
        )));
    }
    let weights = Weights::from_tensors(source, tensors.into_iter().collect(), Kind::Float, device);
    let classifier = DigitClassifier::new(&weights.root(), config);
    weights
        .finish()
        .map_err(|e| PluginError::new(e.to_string()))?;
    Ok(classifier)
}

/// The classifier in `folder` (`config.json`, `model.safetensors`).
fn load_folder(folder: &Path, device: Device) -> PluginResult<DigitClassifier> {
    let config_path: PathBuf = folder.join("config.json");
    let config: DigitClassifierConfig = std::fs::read_to_string(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| PluginError::new(format!("cannot read {}: {e}", config_path.display())))?;
    let weights_path = folder.join("model.safetensors");
    let tensors = crate::safetensors_file::read(&weights_path)
        .map_err(|e| PluginError::new(format!("cannot read {}: {e}", weights_path.display())))?;
    build(
        &config,
        tensors,
        &weights_path.display().to_string(),
        device,
    )
}

impl Reward for DigitReward {
    fn reward(
        &mut self,
        mut sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let images = sample.take_tch("x")?;
        let log_probs = self.log_probs(&images)?;
        let target = log_probs.select(1, self.digit);
        let reward = match self.form.as_str() {
            "prob" => target.exp(),
            "hit" => log_probs
                .argmax(1, false)
                .eq(self.digit)
                .to_kind(Kind::Float),
            _ => target,
        };
        Ok(RewardOutput::all_valid(ManagedTensor::from_tch(
            &reward.contiguous(),
        )?))
    }
}

register_reward! {
    id: "images/digit",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Log-probability (or probability, or top-class hit) of a digit under the project's 8x8 digit classifier (built in; 98% held-out accuracy); any image size, made grey and 8x8",
    arguments: DigitArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Any, Dim::Any, Dim::Any])
        .with_range(0.0, 1.0)],
    capabilities: Capabilities {
        max_batch: 0,
        cpu_only: false,
    },
    construct: DigitReward::new,
}
