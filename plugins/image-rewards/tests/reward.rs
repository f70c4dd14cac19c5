//! The reward's contract: registration, arguments, input checks, signs and strided input.

mod common;

use std::ffi::c_void;
use std::ptr::NonNull;

use flowgym_image_rewards::{JpegArgs, JpegSize};
use flowgym_plugin_api::tensor::{DLManagedTensorVersioned, DLTensor, DLPACK_VERSION};
use flowgym_plugin_api::{
    Arguments, Batch, ConstructContext, Constructor, DLDevice, DType, Dim, EntryKind,
    EntryRegistration, Kwargs, LeafSpec, ManagedTensor, Reward,
};

/// The registered entry `id`: its metadata and its reward, built from `args_json` the way the
/// host builds it.
fn construct(id: &str, args_json: &str) -> Result<Box<dyn Reward>, String> {
    let registration = flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("`{id}` is not registered"));
    match registration.constructor {
        Constructor::Reward(construct) => {
            construct(args_json, &ConstructContext::cpu()).map_err(|e| e.message().to_string())
        }
        Constructor::BaseModel(_) => panic!("`{id}` is registered as a base model"),
    }
}

fn score(reward: &mut dyn Reward, batch: Batch) -> Result<Vec<f32>, String> {
    let latent = Batch::new("images", Vec::new());
    let out = reward
        .reward(batch, latent, Kwargs::new())
        .map_err(|e| e.message().to_string())?;
    assert!(matches!(out.valid, abi_stable::std_types::ROption::RNone));
    assert_eq!(out.reward.dtype(), Some(DType::F32));
    Ok(out.reward.to_vec::<f32>().expect("f32 rewards"))
}

/// A deterministic image in [0, 1] with some structure.
fn image(height: usize, width: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..3 * height * width)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 1000) as f32 / 1000.0;
            let smooth = ((i % width) as f32 / width as f32
                + (i / width % height) as f32 / height as f32)
                / 2.0;
            (0.7 * smooth + 0.3 * noise).clamp(0.0, 1.0)
        })
        .collect()
}

#[test]
fn both_entries_are_registered_with_their_metadata() {
    let metas: Vec<_> = flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .map(|r| (r.meta)())
        .collect();
    let leaf = LeafSpec::new(
        "x",
        DType::F32,
        [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
    )
    .with_range(0.0, 1.0);
    for id in ["images/compression", "images/incompression"] {
        let meta = metas
            .iter()
            .find(|m| m.id.as_str() == id)
            .unwrap_or_else(|| panic!("`{id}` is not registered"));
        assert_eq!(meta.kind, EntryKind::Reward);
        assert_eq!(meta.data_type.name.as_str(), "images");
        assert_eq!(meta.data_type.version.as_str(), "1.0.0");
        assert_eq!(meta.leaves.as_slice(), std::slice::from_ref(&leaf));
        assert_eq!(meta.capabilities, Default::default());
        assert_eq!(meta.arguments.len(), 1);
        assert_eq!(meta.arguments[0].name.as_str(), "quality");
        assert_eq!(meta.arguments[0].default.as_str(), "85");
        assert_eq!(meta.arguments[0].accepted.as_str(), "from 1 to 100");
    }
}

#[test]
fn compression_is_minus_incompression() {
    let images = [image(32, 32, 1), image(32, 32, 2), image(32, 32, 3)];
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    for quality in [1, 30, 85, 100] {
        let args = format!(r#"{{"quality": {quality}}}"#);
        let mut compression = construct("images/compression", &args).unwrap();
        let mut incompression = construct("images/incompression", &args).unwrap();
        let c = score(compression.as_mut(), common::batch(&refs, 32, 32)).unwrap();
        let i = score(incompression.as_mut(), common::batch(&refs, 32, 32)).unwrap();
        assert_eq!(c.len(), 3);
        for (c, i) in c.iter().zip(&i) {
            assert!(*i > 0.0, "bits per pixel are positive, got {i}");
            assert_eq!(*c, -*i);
        }
    }
}

#[test]
fn higher_quality_and_noise_cost_more_bits() {
    let smooth: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 32) as f32 / 31.0).collect();
    let noisy = image(32, 32, 7);
    let batch = || common::batch(&[&smooth, &noisy], 32, 32);
    let mut low = construct("images/incompression", r#"{"quality": 30}"#).unwrap();
    let mut high = construct("images/incompression", r#"{"quality": 95}"#).unwrap();
    let low = score(low.as_mut(), batch()).unwrap();
    let high = score(high.as_mut(), batch()).unwrap();
    assert!(low[0] < low[1] && high[0] < high[1], "{low:?} {high:?}");
    assert!(low[0] < high[0] && low[1] < high[1], "{low:?} {high:?}");
}

#[test]
fn default_quality_is_85() {
    let reward = JpegSize::compression(JpegArgs::default(), &ConstructContext::cpu()).unwrap();
    assert_eq!(reward.quality(), 85);
    assert_eq!(JpegArgs::from_json("").unwrap().quality, 85);
    assert_eq!(JpegArgs::from_json(r#"{"quality": 1}"#).unwrap().quality, 1);
    assert_eq!(
        JpegArgs::from_json(r#"{"quality": 100}"#).unwrap().quality,
        100
    );
}

#[test]
fn bad_arguments_name_the_key_and_what_is_accepted() {
    let message = |json: &str| JpegArgs::from_json(json).unwrap_err().to_string();
    assert_eq!(
        message(r#"{"qualty": 50}"#),
        "unknown argument `qualty`; accepted: quality"
    );
    assert_eq!(
        message(r#"{"quality": 0}"#),
        "argument `quality` is 0, out of range (accepted: from 1 to 100)"
    );
    assert_eq!(
        message(r#"{"quality": 101}"#),
        "argument `quality` is 101, out of range (accepted: from 1 to 100)"
    );
    assert!(message(r#"{"quality": 300}"#).starts_with("argument `quality` expects u8, got 300"));
    assert!(message(r#"{"quality": "high"}"#).ends_with("(accepted: from 1 to 100)"));
    // Through the registered constructor, as the host sees it.
    assert_eq!(
        construct("images/compression", r#"{"quality": 0}"#)
            .err()
            .unwrap(),
        "argument `quality` is 0, out of range (accepted: from 1 to 100)"
    );
    // Arguments built in code are checked too.
    let err =
        JpegSize::incompression(JpegArgs { quality: 0 }, &ConstructContext::cpu()).unwrap_err();
    assert_eq!(
        err.message(),
        "argument `quality` is 0, out of range (accepted: from 1 to 100)"
    );
}

#[test]
fn values_outside_the_unit_interval_name_the_sample_and_range() {
    let good = image(16, 16, 1);
    let mut bad = image(16, 16, 2);
    bad[5] = -0.31;
    bad[700] = 1.2;
    let mut reward = construct("images/compression", "").unwrap();
    let err = score(
        reward.as_mut(),
        common::batch(&[&good, &good, &bad], 16, 16),
    )
    .unwrap_err();
    assert_eq!(
        err,
        "images/compression: sample 2 has values in [-0.31, 1.2], outside [0, 1]"
    );
    let mut slightly = image(16, 16, 3);
    slightly[0] = 1.000_001;
    let mut reward = construct("images/incompression", "").unwrap();
    let err = score(reward.as_mut(), common::batch(&[&slightly], 16, 16)).unwrap_err();
    assert!(
        err.starts_with("images/incompression: sample 0 has values in ["),
        "{err}"
    );
    assert!(err.ends_with("1.000001], outside [0, 1]"), "{err}");
}

#[test]
fn nan_is_refused_with_a_clear_message() {
    let mut bad = image(8, 8, 4);
    bad[3] = f32::NAN;
    bad[9] = f32::NAN;
    let mut reward = construct("images/compression", "").unwrap();
    let err = score(
        reward.as_mut(),
        common::batch(&[&image(8, 8, 1), &bad], 8, 8),
    )
    .unwrap_err();
    assert_eq!(
        err,
        "images/compression: sample 1 has 2 NaN value(s); images must have values in [0, 1]"
    );
}

#[test]
fn wrong_shapes_and_dtypes_are_refused() {
    let mut reward = construct("images/compression", "").unwrap();
    let gray = ManagedTensor::from_vec(vec![0.5f32; 2 * 16 * 16], &[2, 1, 16, 16]).unwrap();
    assert_eq!(
        score(reward.as_mut(), Batch::single("images", "x", gray)).unwrap_err(),
        "images/compression: leaf `x` has shape [2, 1, 16, 16]; \
         images must be float32 [n, 3, H, W] with values in [0, 1]"
    );
    let flat = ManagedTensor::from_vec(vec![0.5f32; 3 * 16], &[3, 16]).unwrap();
    assert_eq!(
        score(reward.as_mut(), Batch::single("images", "x", flat)).unwrap_err(),
        "images/compression: leaf `x` has shape [3, 16]; \
         images must be float32 [n, 3, H, W] with values in [0, 1]"
    );
    let empty = ManagedTensor::from_vec(Vec::<f32>::new(), &[1, 3, 0, 4]).unwrap();
    assert!(score(reward.as_mut(), Batch::single("images", "x", empty))
        .unwrap_err()
        .contains("has shape [1, 3, 0, 4]"));
    let doubles = ManagedTensor::from_vec(vec![0.5f64; 3 * 4 * 4], &[1, 3, 4, 4]).unwrap();
    assert_eq!(
        score(reward.as_mut(), Batch::single("images", "x", doubles)).unwrap_err(),
        "images/compression: leaf `x` is f64; \
         images must be float32 [n, 3, H, W] with values in [0, 1]"
    );
    let other = ManagedTensor::from_vec(vec![0.5f32; 3 * 4 * 4], &[1, 3, 4, 4]).unwrap();
    assert_eq!(
        score(reward.as_mut(), Batch::single("images", "pixels", other)).unwrap_err(),
        "images/compression: batch of `images` has no leaf `x` (leaves: pixels)"
    );
}

#[test]
fn an_empty_batch_has_no_rewards() {
    let mut reward = construct("images/incompression", "").unwrap();
    let x = ManagedTensor::from_vec(Vec::<f32>::new(), &[0, 3, 8, 8]).unwrap();
    assert_eq!(
        score(reward.as_mut(), Batch::single("images", "x", x)).unwrap(),
        Vec::<f32>::new()
    );
}

/// Owner of a channels-last buffer presented as `[n, 3, H, W]` through strides.
struct StridedOwner {
    _data: Vec<f32>,
    shape: [i64; 4],
    strides: [i64; 4],
}

unsafe extern "C" fn delete_strided(managed: *mut DLManagedTensorVersioned) {
    // SAFETY: `channels_last` boxed both and handed them to this deleter.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx as *mut StridedOwner));
    }
}

/// A non-contiguous `[n, 3, H, W]` view of `[n, H, W, 3]` storage with the same values.
fn channels_last(chw_images: &[&[f32]], height: usize, width: usize) -> ManagedTensor {
    let n = chw_images.len();
    let mut hwc = vec![0f32; n * 3 * height * width];
    for (s, image) in chw_images.iter().enumerate() {
        for c in 0..3 {
            for p in 0..height * width {
                hwc[(s * height * width + p) * 3 + c] = image[c * height * width + p];
            }
        }
    }
    let (h, w) = (height as i64, width as i64);
    let mut owner = Box::new(StridedOwner {
        _data: hwc,
        shape: [n as i64, 3, h, w],
        strides: [3 * h * w, 1, 3 * w, 3],
    });
    let dl_tensor = DLTensor {
        data: owner._data.as_mut_ptr() as *mut c_void,
        device: DLDevice::CPU,
        ndim: 4,
        dtype: DType::F32.to_dlpack(),
        shape: owner.shape.as_mut_ptr(),
        strides: owner.strides.as_mut_ptr(),
        byte_offset: 0,
    };
    let managed = Box::new(DLManagedTensorVersioned {
        version: DLPACK_VERSION,
        manager_ctx: Box::into_raw(owner) as *mut c_void,
        deleter: Some(delete_strided),
        flags: 0,
        dl_tensor,
    });
    // SAFETY: a valid struct whose ownership passes to the handle.
    unsafe { ManagedTensor::from_raw(NonNull::from(Box::leak(managed))) }.expect("DLPack 1.x")
}

#[test]
fn non_contiguous_input_scores_like_contiguous() {
    let images = [image(24, 40, 5), image(24, 40, 6)];
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let strided = channels_last(&refs, 24, 40);
    assert!(!strided.is_contiguous());
    let mut reward = construct("images/incompression", r#"{"quality": 50}"#).unwrap();
    let from_strided = score(reward.as_mut(), Batch::single("images", "x", strided)).unwrap();
    let from_contiguous = score(reward.as_mut(), common::batch(&refs, 24, 40)).unwrap();
    assert_eq!(from_strided, from_contiguous);
}
