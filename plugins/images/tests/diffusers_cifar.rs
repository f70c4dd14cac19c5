//! `images/cifar` against diffusers: the tiny `UNet2DModel` of
//! `tests/fixtures/diffusers/cifar-tiny` (same block types as `google/ddpm-cifar10-32`, random
//! weights) and the fixtures `scripts/make_diffusers_fixtures.py` wrote with diffusers 0.42.1 /
//! torch 2.13.0; and the host's sampler driving the plugin, against the sampling path the script
//! computes from docs/mathematics.md.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use common::{
    copy_dir, fixture, get, max_abs, max_abs_diff, phantom_weights, published, read_tensors,
    rounding_tolerance, unet_2d_depth, unet_terms, with_legacy_attention_names, write_tensors,
    TempDir, F32_UNIT_ROUNDOFF,
};
use flowgym_host::model::Model;
use flowgym_host::sde::{never_stop, sample, Interpolant, SampleRequest, SamplerOptions, TimeGrid};
use flowgym_host::state::State;
use flowgym_images::cifar::{self, CifarArgs};
use flowgym_images::ddpm::DdpmModel;
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::{HubCache, LoadError};
use flowgym_images::models::scheduler::SchedulerConfig;
use flowgym_images::models::unet_2d::{UNet2DConfig, UNet2DModel};
use flowgym_plugin_api::{
    Arguments, BaseModel, BaseModelAdapter, Batch, ConstructContext, Constructor,
    EntryRegistration, Kwargs, ManagedTensor, OutputType, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

fn args(weights: &str) -> CifarArgs {
    CifarArgs {
        weights: weights.to_string(),
        ..CifarArgs::default()
    }
}

/// `images/cifar` without clipping: the raw UNet output, as the fixtures recorded it (the
/// fixture's scheduler config, google/ddpm-cifar10-32's, sets `clip_sample`).
fn unclipped() -> CifarArgs {
    CifarArgs {
        clip_sample: "false".to_string(),
        ..CifarArgs::default()
    }
}

fn tiny_dir() -> PathBuf {
    fixture("cifar-tiny")
}

fn load(dir: &std::path::Path) -> Result<DdpmModel, LoadError> {
    let files = cifar::locate(
        &args(dir.to_str().unwrap()),
        &[],
        &HubSettings::offline(HubCache::at("/nonexistent")),
    )?;
    cifar::load(&files, &unclipped(), Device::Cpu)
}

fn tiny() -> DdpmModel {
    load(&tiny_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// The forward error of `model` on `cifar_forward.safetensors`.
fn forward_error(model: &DdpmModel) -> f64 {
    let io = read_tensors(&fixture("io/cifar_forward.safetensors"));
    let eps = model.predict(get(&io, "x"), get(&io, "timesteps")).unwrap();
    max_abs_diff(&eps, get(&io, "eps"))
}

/// The largest forward error rounding explains (see [`rounding_tolerance`]): the UNet's longest
/// chain of sums on the fixture's 32 x 32 samples, at the magnitude of the reference's noise
/// predictions.
fn forward_tolerance(model: &DdpmModel) -> f64 {
    let io = read_tensors(&fixture("io/cifar_forward.safetensors"));
    let c = model.unet().config();
    let groups = c.norm_num_groups.unwrap();
    let terms = unet_terms(&c.block_out_channels, groups, 32 * 32);
    rounding_tolerance(unet_2d_depth(c), terms, max_abs(get(&io, "eps")))
}

#[test]
fn forward_matches_diffusers() {
    let model = tiny();
    let (error, tolerance) = (forward_error(&model), forward_tolerance(&model));
    eprintln!("cifar forward: max abs error {error:.3e} (tolerance {tolerance:.3e})");
    assert!(error < tolerance, "max abs error {error}");
}

#[test]
fn schedules_equal_diffusers_alphas_cumprod() {
    let reference = read_tensors(&fixture("io/schedules.safetensors"));
    for (schedule, start, end) in [
        ("linear", 1e-4, 0.02),
        ("scaled_linear", 0.00085, 0.012),
        ("squaredcos_cap_v2", 1e-4, 0.02),
    ] {
        let json = format!(
            r#"{{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                "beta_start": {start}, "beta_end": {end}, "beta_schedule": "{schedule}",
                "clip_sample": true, "variance_type": "fixed_small"}}"#
        );
        let config: SchedulerConfig = serde_json::from_str(&json).unwrap();
        let ours = config.alphas_cumprod().unwrap();
        let theirs = Vec::<f32>::try_from(get(&reference, schedule)).unwrap();
        assert_eq!(ours.len(), 1000);
        for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(*a, f64::from(*b), "{schedule}: alphas_cumprod[{k}]");
        }
    }
    // The fixture's own scheduler_config.json (the published one of google/ddpm-cifar10-32).
    let model = tiny();
    let linear = Vec::<f32>::try_from(get(&reference, "linear")).unwrap();
    let linear: Vec<f64> = linear.into_iter().map(f64::from).collect();
    assert_eq!(model.alpha_bar(), linear.as_slice());
}

#[test]
fn unsupported_schedules_are_named() {
    let config: SchedulerConfig =
        serde_json::from_str(r#"{"beta_schedule": "quadratic"}"#).unwrap();
    let err = config.alphas_cumprod().unwrap_err().to_string();
    assert!(err.contains("`beta_schedule` = \"quadratic\""), "{err}");
    assert!(err.contains("scaled_linear"), "{err}");
}

#[test]
fn published_config_builds_exactly_the_published_parameters() {
    let (config, parameters) = published("google/ddpm-cifar10-32");
    let config: UNet2DConfig = serde_json::from_value(config).unwrap();
    assert_eq!(config.attention_head_dim, None);
    assert_eq!(config.downsample_padding, 0);
    assert_eq!(config.mid_block_type.as_deref(), Some("UNetMidBlock2D"));
    let weights = phantom_weights(&parameters);
    let _unet = UNet2DModel::new(&weights.root(), &config).unwrap();
    weights.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parameters.len(), 328, "published parameter count changed");
}

#[test]
fn pipeline_layout_and_hub_cache_load() {
    let tmp = TempDir::new("cifar-layouts");
    // Pipeline layout: unet/ and scheduler/.
    let pipeline = tmp.path().join("pipeline");
    copy_dir(&tiny_dir(), &pipeline.join("unet"));
    std::fs::create_dir_all(pipeline.join("scheduler")).unwrap();
    std::fs::rename(
        pipeline.join("unet/scheduler_config.json"),
        pipeline.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let model = load(&pipeline).unwrap();
    let error = forward_error(&model);
    assert!(
        error < forward_tolerance(&model),
        "pipeline layout: max abs error {error}"
    );

    // Hugging Face cache layout, snapshot chosen by refs/main.
    let hub = tmp.path().join("hub");
    let repo = hub.join("models--google--ddpm-cifar10-32");
    copy_dir(&tiny_dir(), &repo.join("snapshots/0123abc"));
    std::fs::create_dir_all(repo.join("snapshots/older")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abc").unwrap();
    let files = cifar::locate(&args(""), &[], &HubSettings::offline(HubCache::at(&hub))).unwrap();
    assert_eq!(files.unet.dir, repo.join("snapshots/0123abc"));
    let model = cifar::load(&files, &unclipped(), Device::Cpu).unwrap();
    let error = forward_error(&model);
    assert!(
        error < forward_tolerance(&model),
        "hub cache: max abs error {error}"
    );

    // A host weight directory holding `ddpm-cifar10-32/` is searched before the cache.
    let weights_dir = tmp.path().join("weights");
    copy_dir(&tiny_dir(), &weights_dir.join("ddpm-cifar10-32"));
    let files = cifar::locate(
        &args(""),
        std::slice::from_ref(&weights_dir),
        &HubSettings::offline(HubCache::at(&hub)),
    )
    .unwrap();
    assert_eq!(files.unet.dir, weights_dir.join("ddpm-cifar10-32"));
}

#[test]
fn deprecated_attention_names_load() {
    // Checkpoints saved before diffusers renamed the attention projections (the DDPM repositories
    // date from diffusers 0.0.4) may name them `query`, `key`, `value`, `proj_attn`; diffusers
    // renames them on load, and so do we.
    let tmp = TempDir::new("cifar-legacy");
    copy_dir(&tiny_dir(), tmp.path());
    let file = tmp.path().join("diffusion_pytorch_model.safetensors");
    let renamed = with_legacy_attention_names(read_tensors(&file));
    assert!(renamed
        .keys()
        .any(|k| k.ends_with("attentions.0.query.weight")));
    write_tensors(&renamed, &file);
    let model = load(tmp.path()).unwrap();
    let error = forward_error(&model);
    assert!(error < forward_tolerance(&model), "max abs error {error}");
}

/// An edit of a weight file's tensors.
type Edit = fn(&mut BTreeMap<String, Tensor>);

#[test]
fn weight_mismatches_are_all_listed() {
    let tmp = TempDir::new("cifar-mismatch");
    let cases: [(&str, Edit, &str); 3] = [
        (
            "deleted",
            |t| {
                t.remove("mid_block.resnets.1.conv2.weight");
            },
            "missing (1):\n    mid_block.resnets.1.conv2.weight\n",
        ),
        (
            "extra",
            |t| {
                t.insert(
                    "up_blocks.9.extra.weight".into(),
                    Tensor::zeros([2], (Kind::Float, Device::Cpu)),
                );
            },
            "unused (1):\n    up_blocks.9.extra.weight\n",
        ),
        (
            "reshaped",
            |t| {
                t.insert(
                    "conv_in.bias".into(),
                    Tensor::zeros([9], (Kind::Float, Device::Cpu)),
                );
            },
            "wrong shape (1):\n    conv_in.bias: file has [9], expected [8]\n",
        ),
    ];
    for (name, edit, expected) in cases {
        let dir = tmp.path().join(name);
        copy_dir(&tiny_dir(), &dir);
        let file = dir.join("diffusion_pytorch_model.safetensors");
        let mut tensors = read_tensors(&file);
        edit(&mut tensors);
        write_tensors(&tensors, &file);
        let err = load(&dir).unwrap_err();
        assert!(matches!(err, LoadError::Weights(_)), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("the weights in {} do not fit", file.display())),
            "{message}"
        );
        assert!(message.contains(expected), "{name}: {message}");
    }
}

#[test]
fn missing_weights_say_where_and_how() {
    let tmp = TempDir::new("cifar-missing");
    let folder = tmp.path().join("no-such-folder");
    let err = cifar::locate(
        &args(folder.to_str().unwrap()),
        &[],
        &HubSettings::offline(HubCache::at("/x")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("no weights found for `images/cifar` (google/ddpm-cifar10-32)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} (does not exist)", folder.display())),
        "{err}"
    );
    assert!(
        err.contains(
            "hf download google/ddpm-cifar10-32 --include \"config.json\" --include \
             \"diffusion_pytorch_model.safetensors\" --include \"scheduler_config.json\""
        ),
        "{err}"
    );
    assert!(err.contains(r#"{"weights": "/path/to/folder"}"#), "{err}");

    // No argument: the host's weight directories, then the cache, are all listed.
    let hub = tmp.path().join("hub");
    let dirs = [tmp.path().join("weights")];
    let err = cifar::locate(&args(""), &dirs, &HubSettings::offline(HubCache::at(&hub)))
        .unwrap_err()
        .to_string();
    for place in [
        dirs[0].join("google/ddpm-cifar10-32"),
        dirs[0].join("ddpm-cifar10-32"),
        hub.join("models--google--ddpm-cifar10-32/snapshots"),
    ] {
        assert!(
            err.contains(&place.display().to_string()),
            "{place:?} not in: {err}"
        );
    }

    // A folder with a config but no weights says which files it looked for.
    let dir = tmp.path().join("no-weights");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(tiny_dir().join("config.json"), dir.join("config.json")).unwrap();
    let offline = HubSettings::offline(HubCache::at("/x"));
    let err = cifar::locate(&args(dir.to_str().unwrap()), &[], &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "has config.json but no diffusion_pytorch_model.safetensors (nor .fp16.safetensors, \
             .bin, .fp16.bin)"
        ),
        "{err}"
    );

    // A `.bin` file that is not a PyTorch checkpoint is named when it is read.
    std::fs::copy(
        tiny_dir().join("scheduler_config.json"),
        dir.join("scheduler_config.json"),
    )
    .unwrap();
    let bin = dir.join("diffusion_pytorch_model.bin");
    std::fs::write(&bin, b"").unwrap();
    let files = cifar::locate(&args(dir.to_str().unwrap()), &[], &offline).unwrap();
    let err = cifar::load(&files, &unclipped(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot read weights from {}: not a zip-format PyTorch checkpoint",
            bin.display()
        )),
        "{err}"
    );
}

#[test]
fn other_unet_shapes_are_refused() {
    let tmp = TempDir::new("cifar-shape");
    copy_dir(&tiny_dir(), tmp.path());
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"sample_size\": 32", "\"sample_size\": 256"),
    )
    .unwrap();
    let err = load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("sample_size"), "{err}");
    assert!(err.contains("256"), "{err}");
}

/// libtorch's random number generator is one per process: the tests that draw from it take
/// turns, so that the sampling test sees exactly the draws its seed gives.
static GENERATOR: Mutex<()> = Mutex::new(());

/// The `images/cifar` registration.
fn registration() -> &'static EntryRegistration {
    flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == "images/cifar")
        .expect("images/cifar is registered")
}

/// `images/cifar` on the tiny weights, constructed through its registration as the host does.
fn construct_tiny() -> Box<dyn BaseModel> {
    let Constructor::BaseModel(construct) = registration().constructor else {
        panic!("images/cifar is not a base model");
    };
    // The reference path is the unclipped SDE of docs/mathematics.md.
    let json = serde_json::json!({ "weights": tiny_dir(), "clip_sample": "false" }).to_string();
    construct(&json, &ConstructContext::cpu()).unwrap_or_else(|e| panic!("{e}"))
}

/// The single floating leaf `x` of a host state.
fn leaf(state: &State) -> &Tensor {
    state.floating().next().expect("a floating leaf")
}

/// How far libtorch's normal draws may differ from the reference's: the same generator gives
/// the same uniforms, which libtorch's AVX2 kernel and its default one turn into normals through
/// float32 logarithms, square roots, sines and products a few units in the last place apart
/// (bit for bit the same on one kernel; 3.7e-7 of the largest draw apart across the two):
/// 16 u of the largest draw.
const DRAW_TOLERANCE: f64 = 16.0 * F32_UNIT_ROUNDOFF;

/// The host's own sampler (`flowgym_host::sde::sample`: memoryless SDE, 100 steps from
/// t0 = 0.02, the endpoint estimate as the last step) on the plugin, against the path
/// `make_diffusers_fixtures.py` computes from docs/mathematics.md with diffusers' UNet and
/// the same libtorch random numbers (the seed is the fixture's).
///
/// Tolerances, relative to the largest reference value compared with:
/// - the noise `y_0`: [`DRAW_TOLERANCE`];
/// - `eps` at the reference's states: the forward tolerance of [`forward_matches_diffusers`];
/// - the states `y_k` and `x_final`: `4 R + DRAW_TOLERANCE`, with `R` the float32 rounding
///   error of the reference at that point of the path, measured by the script against the same
///   path in float64. The host's path is another float32 evaluation of the same operations, so
///   it lies about `R` from the exact path too, and the two at most `2 R` apart; twice that
///   allows the host's UNet (other kernels, blocking, threads) a rounding error twice the
///   reference's. `R` grows from 7e-8 after one step to 7e-7 at the end; the draws' rounding
///   may shift every state as it shifts `y_0`. Mistakes move `x_final` by far more (measured
///   on the script's path): an Euler-Maruyama step in place of the endpoint estimate by 4e-4
///   to 5e-4, the model's step index off by one by 1.6e-3, a 1% error in `s` by 7.6e-3.
#[test]
fn base_sampling_path_matches_diffusers() {
    let _generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    let f = read_tensors(&fixture("io/cifar_sampling.safetensors"));
    let adapter = BaseModelAdapter::new("images/cifar", construct_tiny());
    let mut model = Model::new("images/cifar", "images", adapter.into_box()).unwrap();
    let Interpolant::Discrete { alpha_bar } = &model.interpolant else {
        panic!("not a discrete schedule: {:?}", model.interpolant);
    };
    let ab_ref = Vec::<f64>::try_from(get(&f, "alpha_bar")).unwrap();
    assert_eq!(alpha_bar, &ab_ref);

    let x_ref = get(&f, "x_final");
    let options = SamplerOptions {
        steps: 100,
        // The reference trajectory was computed on the uniform grid.
        grid: TimeGrid::Uniform,
        ..SamplerOptions::default()
    };
    let request = SampleRequest {
        n: x_ref.size()[0] as usize,
        seed: get(&f, "seed").int64_value(&[0]) as u64,
        control: None,
        record: true,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    let trajectory = sample(&mut model, None, &options, &request).unwrap();

    // The grid, the model's times and the diffusion coefficient, in float64.
    let t_ref = Vec::<f64>::try_from(get(&f, "t")).unwrap();
    let k_ref = Vec::<i64>::try_from(get(&f, "k")).unwrap();
    let s_ref = Vec::<f64>::try_from(get(&f, "s")).unwrap();
    assert_eq!(trajectory.times, t_ref);
    for (j, (&t, &k)) in t_ref.iter().zip(&k_ref).enumerate() {
        assert_eq!(
            model.interpolant.model_time(t),
            k as f64,
            "model time at step {j}"
        );
    }
    assert_eq!(trajectory.diffusion.len(), s_ref.len());
    for (j, (ours, theirs)) in trajectory.diffusion.iter().zip(&s_ref).enumerate() {
        assert!(
            (ours - theirs).abs() <= 1e-12 * theirs.abs(),
            "s at step {j}: {ours} vs {theirs}"
        );
    }

    // The network along the reference's path, called by the host at the model's times.
    let state_steps = Vec::<i64>::try_from(get(&f, "state_steps")).unwrap();
    let states_ref = get(&f, "states");
    let eps_steps = Vec::<i64>::try_from(get(&f, "eps_steps")).unwrap();
    let eps_ref = get(&f, "eps");
    let forward_io = read_tensors(&fixture("io/cifar_forward.safetensors"));
    let forward_relative = forward_tolerance(&tiny()) / max_abs(get(&forward_io, "eps"));
    let mut worst_eps: f64 = 0.0;
    for (i, &j) in eps_steps.iter().enumerate() {
        let index = state_steps.iter().position(|&s| s == j).unwrap() as i64;
        let y = State::new("images", vec![("x".into(), states_ref.get(index))]);
        let eps = model
            .forward(&y, t_ref[j as usize], &trajectory.kwargs)
            .unwrap();
        let reference = eps_ref.get(i as i64);
        let error = max_abs_diff(leaf(&eps), &reference) / max_abs(&reference);
        worst_eps = worst_eps.max(error);
        assert!(
            error < forward_relative,
            "eps at step {j}: relative error {error:.3e} (tolerance {forward_relative:.3e})"
        );
    }

    // The noise, the states and the final samples.
    assert_eq!(trajectory.states.len(), options.steps);
    let rounding = Vec::<f64>::try_from(get(&f, "states_rounding")).unwrap();
    let mut report = Vec::new();
    for (i, &j) in state_steps.iter().enumerate() {
        let reference = states_ref.get(i as i64);
        let error =
            max_abs_diff(leaf(&trajectory.states[j as usize]), &reference) / max_abs(&reference);
        let tolerance = 4.0 * rounding[i] + DRAW_TOLERANCE;
        report.push(format!("y_{j} {error:.1e} ({tolerance:.1e})"));
        assert!(
            error <= tolerance,
            "y_{j}: relative error {error:.3e} (tolerance {tolerance:.3e})"
        );
    }
    let error = max_abs_diff(leaf(&trajectory.final_state), x_ref) / max_abs(x_ref);
    let tolerance = 4.0 * get(&f, "x_final_rounding").double_value(&[0]) + DRAW_TOLERANCE;
    eprintln!(
        "cifar sampling through the host: eps max rel error {worst_eps:.3e} (tolerance {forward_relative:.3e}); states (tolerance) {}; x_final max rel error {error:.3e} (tolerance {tolerance:.3e}, |x_final| up to {:.0})",
        report.join(", "),
        max_abs(x_ref)
    );
    assert!(
        error <= tolerance,
        "x_final: relative error {error:.3e} (tolerance {tolerance:.3e})"
    );
}

#[test]
fn entry_runs_through_the_plugin_contract() {
    let _generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    let meta = (registration().meta)();
    assert_eq!(meta.data_type.name.as_str(), "images");
    assert_eq!(meta.leaves.len(), 1);
    assert_eq!(meta.leaves[0].name.as_str(), "x");
    let names: Vec<String> = meta.arguments.iter().map(|a| a.name.to_string()).collect();
    assert_eq!(names, ["weights", "repo_id", "clip_sample", "dtype"]);
    assert_eq!(
        CifarArgs::from_json("").unwrap().repo_id,
        "google/ddpm-cifar10-32"
    );

    let mut model = construct_tiny();
    let tolerance = forward_tolerance(&tiny());
    assert_eq!(model.output_type(), OutputType::Epsilon);
    let ScheduleSpec::DiscreteDiffusion { alpha_bar } = model.schedule() else {
        panic!("not a discrete diffusion");
    };
    assert_eq!(alpha_bar.len(), 1000);
    assert!(alpha_bar[0] > alpha_bar[999]);

    let (x, _) = model.sample_p0(3, 0).unwrap();
    assert_eq!(x.data_type.as_str(), "images");
    assert_eq!(x.require("x").unwrap().shape(), &[3, 3, 32, 32]);

    let io = read_tensors(&fixture("io/cifar_forward.safetensors"));
    let batch = Batch::from_tch("images", [("x", get(&io, "x"))]).unwrap();
    let t = ManagedTensor::from_tch(get(&io, "timesteps")).unwrap();
    let mut out = model.forward(batch, t, Kwargs::new()).unwrap();
    let eps = out.take_tch("x").unwrap();
    assert!(max_abs_diff(&eps, get(&io, "eps")) < tolerance);

    let x = Tensor::from_slice(&[-3.0f32, -1.0, 0.0, 0.5, 1.0, 2.0]).reshape([1, 1, 2, 3]);
    let batch = Batch::from_tch("images", [("x", &x)]).unwrap();
    let mut images = model.postprocess(batch, Kwargs::new()).unwrap().unwrap();
    let images = Vec::<f32>::try_from(&images.take_tch("x").unwrap().reshape([-1])).unwrap();
    assert_eq!(images, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]);

    // Wrong input shapes are errors, not panics.
    let batch = Batch::from_tch(
        "images",
        [(
            "x",
            &Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu)),
        )],
    )
    .unwrap();
    let t = ManagedTensor::from_tch(&Tensor::zeros([2], (Kind::Float, Device::Cpu))).unwrap();
    let err = model
        .forward(batch, t, Kwargs::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [n, 3, 32, 32]"), "{err}");
}
