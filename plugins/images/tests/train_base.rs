//! `train-base` (and `train-classifier`) on tiny data: the folder it writes is the one diffusers
//! loaded in `scripts/make_train_fixtures.py` (same config keys, tensor names and shapes; the
//! committed copy gives diffusers' outputs), training resumes exactly where it stopped, and bad
//! input is refused before training.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use common::{
    get, max_abs, max_abs_diff, read_tensors, rounding_tolerance, unet_2d_depth, unet_terms,
    TempDir,
};
use flowgym_images::ddpm::{DdpmFiles, DdpmModel, LoadOptions};
use flowgym_images::models::unet_2d::UNet2DConfig;
use flowgym_images::train::base::{default_scheduler, BaseSettings, BaseTrainer};
use flowgym_images::train::classifier::{train_classifier, ClassifierSettings};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global, and training seeds it at every step: two tests
/// training at once would draw from each other's seeds, and a resumed run would differ from
/// the whole one by when the other test happened to seed.
static ONE_TRAINING_AT_A_TIME: Mutex<()> = Mutex::new(());

fn training_turn() -> MutexGuard<'static, ()> {
    ONE_TRAINING_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train")
        .join(name)
}

/// The UNet of `unet.json` over the defaults, as `flowgym-train base --unet-config` builds it.
fn tiny_unet() -> UNet2DConfig {
    let mut config =
        serde_json::to_value(flowgym_images::train::base::default_unet([1, 8, 8])).unwrap();
    let text = std::fs::read_to_string(fixture("unet.json")).unwrap();
    let serde_json::Value::Object(keys) = serde_json::from_str(&text).unwrap() else {
        panic!("unet.json is not an object");
    };
    for (key, value) in keys {
        config[key] = value;
    }
    serde_json::from_value(config).unwrap()
}

/// The settings of the committed fixture (`make_train_fixtures.py`'s command line).
fn settings(data: PathBuf) -> BaseSettings {
    BaseSettings {
        data,
        steps: 6,
        batch_size: 4,
        lr: 1e-3,
        seed: 1,
        ema_decay: 0.999,
        checkpoint_every: 6,
        unet: tiny_unet(),
        scheduler: default_scheduler(),
    }
}

fn load(folder: &Path) -> DdpmModel {
    let files = DdpmFiles::in_root(folder, &mut Default::default()).expect("a complete folder");
    DdpmModel::load(
        &files,
        &LoadOptions::default().with_clip_argument("false"),
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_written_folder_is_what_diffusers_loads() {
    let _turn = training_turn();
    // The committed folder, written by train-base, against diffusers' forward pass on it.
    let model = load(&fixture("model"));
    let io = read_tensors(&fixture("model_io.safetensors"));
    let out = tch::no_grad(|| model.unet().forward(get(&io, "x"), get(&io, "timesteps")));
    let c = model.unet().config();
    let tolerance = rounding_tolerance(
        unet_2d_depth(c),
        unet_terms(&c.block_out_channels, 4, 64),
        max_abs(get(&io, "out")),
    );
    let error = max_abs_diff(&out, get(&io, "out"));
    assert!(
        error < tolerance,
        "max abs error {error} (tolerance {tolerance})"
    );
    let theirs = Vec::<f32>::try_from(get(&io, "alphas_cumprod")).unwrap();
    let ours: Vec<f32> = model.alpha_bar().iter().map(|v| *v as f32).collect();
    assert_eq!(ours, theirs);

    // A folder written now has the same files, config and tensor names and shapes.
    let tmp = TempDir::new("train-written");
    let out = tmp.path().join("model");
    let mut trainer = BaseTrainer::new(
        settings(fixture("images.safetensors")),
        &out,
        false,
        Device::Cpu,
    )
    .unwrap();
    trainer.run(&mut |_, _| {}, &|| false).unwrap();
    for file in ["config.json", "scheduler_config.json"] {
        let read = |dir: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
        };
        assert_eq!(read(&out), read(&fixture("model")), "{file}");
    }
    let shapes = |dir: &Path| -> Vec<(String, Vec<i64>)> {
        read_tensors(&dir.join("diffusion_pytorch_model.safetensors"))
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect()
    };
    assert_eq!(shapes(&out), shapes(&fixture("model")));
    let _ = load(&out);
}

#[test]
fn training_lowers_the_loss_and_resumes_exactly() {
    let _turn = training_turn();
    tch::set_num_threads(1);
    let data = fixture("images.safetensors");
    let tmp = TempDir::new("train-resume");
    let run = |out: &Path, stop_at: Option<u64>, resume: bool| -> (BaseTrainer, Vec<f64>) {
        let mut s = settings(data.clone());
        s.steps = 8;
        s.checkpoint_every = 100;
        let mut trainer = BaseTrainer::new(s, out, resume, Device::Cpu).unwrap();
        let mut losses = Vec::new();
        let step = std::cell::Cell::new(trainer.step());
        trainer
            .run(
                &mut |done, loss| {
                    losses.push(loss);
                    step.set(done);
                },
                &|| stop_at == Some(step.get()),
            )
            .unwrap();
        (trainer, losses)
    };
    let (whole, losses) = run(&tmp.path().join("whole"), None, false);
    assert_eq!(whole.step(), 8);
    assert!(losses.iter().all(|l| l.is_finite()));
    let (first, _) = run(&tmp.path().join("parts"), Some(3), false);
    assert_eq!(first.step(), 3);
    let err = BaseTrainer::new(
        settings(data.clone()),
        &tmp.path().join("parts"),
        false,
        Device::Cpu,
    )
    .expect_err("a folder with a checkpoint needs --resume")
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    let (second, _) = run(&tmp.path().join("parts"), None, true);
    assert_eq!(second.step(), 8);
    let weights = |dir: &str| {
        read_tensors(
            &tmp.path()
                .join(dir)
                .join("diffusion_pytorch_model.safetensors"),
        )
    };
    let (a, b) = (weights("whole"), weights("parts"));
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs after resuming");
    }
    // Changing anything but the number of steps is refused on resume.
    let mut other = settings(data);
    other.lr = 5e-4;
    let err = BaseTrainer::new(other, &tmp.path().join("parts"), true, Device::Cpu)
        .expect_err("other settings")
        .to_string();
    assert!(err.contains("lr"), "{err}");
}

fn trainer_error(settings: BaseSettings) -> String {
    let tmp = TempDir::new("train-bad");
    BaseTrainer::new(settings, &tmp.path().join("out"), false, Device::Cpu)
        .expect_err("refused")
        .to_string()
}

#[test]
fn bad_datasets_and_sizes_are_refused_before_training() {
    let tmp = TempDir::new("train-data");
    let err = trainer_error(settings(tmp.path().join("missing.safetensors")));
    assert!(
        err.contains("missing.safetensors") && err.contains("no such file"),
        "{err}"
    );

    let garbled = tmp.path().join("garbled.safetensors");
    std::fs::write(&garbled, b"not a tensor file at all").unwrap();
    let err = trainer_error(settings(garbled));
    assert!(err.contains("garbled.safetensors"), "{err}");

    let empty = tmp.path().join("empty.safetensors");
    let none = Tensor::zeros([0, 1, 8, 8], (Kind::Uint8, Device::Cpu));
    Tensor::write_safetensors(&[("images", &none)], &empty).unwrap();
    let err = trainer_error(settings(empty));
    assert!(err.contains("holds no images"), "{err}");

    let wrong = tmp.path().join("wrong.safetensors");
    let pixels = Tensor::zeros([4, 8, 8], (Kind::Uint8, Device::Cpu));
    Tensor::write_safetensors(&[("pixels", &pixels)], &wrong).unwrap();
    let err = trainer_error(settings(wrong));
    assert!(
        err.contains("no `images` tensor") && err.contains("pixels"),
        "{err}"
    );

    // 6 x 6 images cannot be halved twice by a three-level UNet.
    let odd = tmp.path().join("odd.safetensors");
    let images = Tensor::zeros([4, 1, 6, 6], (Kind::Uint8, Device::Cpu));
    Tensor::write_safetensors(&[("images", &images)], &odd).unwrap();
    let mut s = settings(odd);
    s.unet = flowgym_images::train::base::default_unet([1, 8, 8]);
    s.unet.sample_size = None;
    let err = trainer_error(s);
    assert!(
        err.contains("sample_size") && err.contains("divisible by 4"),
        "{err}"
    );
}

#[test]
fn time_embeddings_a_ddpm_cannot_train_are_refused() {
    let mut s = settings(fixture("images.safetensors"));
    s.unet.time_embedding_type = "fourier".into();
    let err = trainer_error(s);
    assert!(err.contains("time_embedding_type"), "{err}");

    // One row short of the schedule's 1000 steps.
    let mut s = settings(fixture("images.safetensors"));
    s.unet.time_embedding_type = "learned".into();
    s.unet.num_train_timesteps = Some(999);
    let err = trainer_error(s);
    assert!(
        err.contains("num_train_timesteps") && err.contains("1000"),
        "{err}"
    );
}

#[test]
fn the_classifier_trains_and_reports_its_held_out_accuracy() {
    let _turn = training_turn();
    let tmp = TempDir::new("train-classifier");
    let settings = ClassifierSettings {
        data: fixture("images.safetensors"),
        epochs: 2,
        batch_size: 8,
        lr: 1e-3,
        seed: 0,
        held_out: 0.25,
    };
    let report = train_classifier(&settings, tmp.path(), &mut |_, _| {}).unwrap();
    assert_eq!((report.train_images, report.held_out_images), (12, 4));
    for file in ["config.json", "model.safetensors", "metrics.json"] {
        assert!(tmp.path().join(file).is_file(), "{file}");
    }
}
