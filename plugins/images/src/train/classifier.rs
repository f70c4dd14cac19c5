//! `train-classifier`: the digit classifier of `images/digit`
//! ([`DigitClassifier`]) trained on a labelled image dataset, with a held-out share kept aside
//! to report its accuracy. Writes `config.json`, `model.safetensors` and `metrics.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::data::ImageData;
use super::{step_seed, write_json, write_safetensors, TrainError};
use crate::models::digit_classifier::{DigitClassifier, DigitClassifierConfig};
use crate::weights::Weights;

/// Settings of a classifier run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSettings {
    /// A labelled dataset (see [`ImageData`]).
    pub data: PathBuf,
    /// Passes over the training share.
    pub epochs: u64,
    /// Images per step.
    pub batch_size: i64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the split, the weights and the batches.
    pub seed: u64,
    /// Share of the images held out (never trained on) to measure the accuracy.
    pub held_out: f64,
}

/// What a classifier run measured (`metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierReport {
    /// Images trained on.
    pub train_images: i64,
    /// Images held out.
    pub held_out_images: i64,
    /// Accuracy on the held-out images.
    pub held_out_accuracy: f64,
    /// Accuracy on the training images.
    pub train_accuracy: f64,
    /// The settings.
    pub settings: ClassifierSettings,
}

/// Trains the classifier and writes it to `out`; `on_epoch(epoch, held-out accuracy)` after
/// each pass.
pub fn train_classifier(
    settings: &ClassifierSettings,
    out: &Path,
    on_epoch: &mut dyn FnMut(u64, f64),
) -> Result<ClassifierReport, TrainError> {
    if !(0.0..1.0).contains(&settings.held_out) || settings.epochs == 0 || settings.batch_size <= 0
    {
        return Err(TrainError::Config(
            "held-out share must be in [0, 1), epochs and batch size positive".to_string(),
        ));
    }
    let data = ImageData::load(&settings.data)?;
    let labels = data
        .labels
        .as_ref()
        .ok_or_else(|| TrainError::Config(format!("{} has no labels", settings.data.display())))?;
    let [c, h, w] = data.shape();
    if h != w || h % 4 != 0 {
        return Err(TrainError::Config(format!(
            "the classifier takes square images whose side is divisible by 4; {} holds {h} x {w}",
            settings.data.display()
        )));
    }
    let classes = labels.max().int64_value(&[]) + 1;
    let config = DigitClassifierConfig {
        in_channels: c,
        image_size: h,
        num_classes: classes.max(2),
        ..DigitClassifierConfig::default()
    };
    tch::manual_seed(step_seed(settings.seed, u64::MAX));
    let n = data.len();
    let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
    let held = ((n as f64) * settings.held_out).round() as i64;
    let (test_idx, train_idx) = (order.narrow(0, 0, held), order.narrow(0, held, n - held));
    let pick = |idx: &Tensor| {
        (
            data.images.index_select(0, idx),
            labels.index_select(0, idx),
        )
    };
    let (train_x, train_y) = pick(&train_idx);
    let (test_x, test_y) = pick(&test_idx);
    let weights = Weights::initialising(Kind::Float, Device::Cpu);
    let model = DigitClassifier::new(&weights.root(), &config);
    let (names, mut params): (Vec<String>, Vec<Tensor>) = weights.tensors().into_iter().unzip();
    let mut adam = Adam::new(&params, settings.lr);
    let steps_per_epoch = (train_x.size()[0] + settings.batch_size - 1) / settings.batch_size;
    for epoch in 0..settings.epochs {
        for step in 0..steps_per_epoch {
            tch::manual_seed(step_seed(settings.seed, epoch * 100_000 + step as u64));
            let idx = Tensor::randint(
                train_x.size()[0],
                [settings.batch_size],
                (Kind::Int64, Device::Cpu),
            );
            let x = augment(&train_x.index_select(0, &idx));
            let loss = model.log_probs(&x).nll_loss(&train_y.index_select(0, &idx));
            loss.backward();
            adam.step(&mut params);
        }
        on_epoch(epoch + 1, accuracy(&model, &test_x, &test_y));
    }
    let report = ClassifierReport {
        train_images: n - held,
        held_out_images: held,
        held_out_accuracy: accuracy(&model, &test_x, &test_y),
        train_accuracy: accuracy(&model, &train_x, &train_y),
        settings: settings.clone(),
    };
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let named: Vec<(String, Tensor)> = names.into_iter().zip(params).collect();
    write_safetensors(&out.join("model.safetensors"), &named)?;
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| TrainError::io(out, e));
    write_json(
        &out.join("config.json"),
        &json(serde_json::to_value(&config))?,
    )?;
    write_json(
        &out.join("metrics.json"),
        &json(serde_json::to_value(&report))?,
    )?;
    Ok(report)
}

/// A random shift of the whole batch by up to one pixel each way, and light noise: the
/// classifier must judge generated digits, which are neither centred nor clean as the data.
fn augment(x: &Tensor) -> Tensor {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let shift = Tensor::randint(3, [2], (Kind::Int64, Device::Cpu));
    let (dy, dx) = (shift.int64_value(&[0]), shift.int64_value(&[1]));
    let padded = x.constant_pad_nd([1, 1, 1, 1]);
    let shifted = padded.narrow(2, dy, h).narrow(3, dx, w);
    (shifted + x.randn_like() * 0.05).clamp(0.0, 1.0)
}

/// Share of `x` classified as `y`.
fn accuracy(model: &DigitClassifier, x: &Tensor, y: &Tensor) -> f64 {
    if x.size()[0] == 0 {
        return f64::NAN;
    }
    tch::no_grad(|| {
        let predicted = model.logits(x).argmax(-1, false);
        predicted
            .eq_tensor(y)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    })
}
