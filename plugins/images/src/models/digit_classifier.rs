//! The digit classifier of `images/digit`: a small convolutional network on grey 8 x 8 images
//! in `[0, 1]` (scikit-learn's digits), trained by `flowgym-host train-classifier`.
//!
//! `conv1` (3x3, `channels[0]`), `conv2` (3x3, `channels[0]`), 2x2 max-pool, `conv3` (3x3,
//! `channels[1]`), 2x2 max-pool, `fc1` (`hidden`), `fc2` (`num_classes`); ReLU between, inputs
//! mapped to `[-1, 1]` first. Weights are stored by these names in `model.safetensors`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::nn::{Conv2d, Linear};
use crate::weights::WeightPath;

/// `config.json` of the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitClassifierConfig {
    /// Channels of the input images.
    pub in_channels: i64,
    /// Side of the (square) input images; must be divisible by 4.
    pub image_size: i64,
    /// Channels of the two convolution stages.
    pub channels: [i64; 2],
    /// Width of the hidden layer.
    pub hidden: i64,
    /// Number of classes.
    pub num_classes: i64,
}

impl Default for DigitClassifierConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: 8,
            channels: [32, 64],
            hidden: 128,
            num_classes: 10,
        }
    }
}

/// The classifier.
#[derive(Debug)]
pub struct DigitClassifier {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
    config: DigitClassifierConfig,
}

impl DigitClassifier {
    /// Builds the network, taking its weights from `p`.
    pub fn new(p: &WeightPath, config: &DigitClassifierConfig) -> Self {
        let [c1, c2] = config.channels;
        let flat = c2 * (config.image_size / 4) * (config.image_size / 4);
        Self {
            conv1: Conv2d::new(&p.pp("conv1"), config.in_channels, c1, 3, 1, 1),
            conv2: Conv2d::new(&p.pp("conv2"), c1, c1, 3, 1, 1),
            conv3: Conv2d::new(&p.pp("conv3"), c1, c2, 3, 1, 1),
            fc1: Linear::new(&p.pp("fc1"), flat, config.hidden, true),
            fc2: Linear::new(&p.pp("fc2"), config.hidden, config.num_classes, true),
            config: config.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DigitClassifierConfig {
        &self.config
    }

    /// Class logits `[n, num_classes]` of images `[n, in_channels, size, size]` in `[0, 1]`.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let x = x * 2.0 - 1.0;
        let x = self.conv1.forward(&x).relu();
        let x = self
            .conv2
            .forward(&x)
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let x = self
            .conv3
            .forward(&x)
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let x = self.fc1.forward(&x.flatten(1, -1)).relu();
        self.fc2.forward(&x)
    }

    /// Log-probabilities `[n, num_classes]`.
    pub fn log_probs(&self, x: &Tensor) -> Tensor {
        self.logits(x).log_softmax(-1, Kind::Float)
    }
}
