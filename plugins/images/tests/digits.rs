//! The built-in pair: `images/digits` (the DDPM trained on scikit-learn's 8 x 8 digits) and
//! `images/digit` (the classifier reward), through their registrations as the host constructs
//! them; the classifier on the data set, and the base model's samples judged by it.

use flowgym_host::model::Model;
use flowgym_host::sde::{never_stop, sample, SampleRequest, SamplerOptions};
use flowgym_images::digit::{DigitArgs, DigitReward};
use flowgym_images::train::data::ImageData;
use flowgym_plugin_api::{
    Arguments, BaseModel, BaseModelAdapter, ConstructContext, Constructor, EntryRegistration,
    Kwargs, OutputType, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

fn registration(id: &str) -> &'static EntryRegistration {
    flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is registered"))
}

fn digits_model() -> Box<dyn BaseModel> {
    let Constructor::BaseModel(construct) = registration("images/digits").constructor else {
        panic!("images/digits is not a base model");
    };
    construct("{}", &ConstructContext::cpu()).unwrap_or_else(|e| panic!("{e}"))
}

fn reward(json: &str) -> DigitReward {
    let args = DigitArgs::from_json(json).unwrap_or_else(|e| panic!("{e}"));
    DigitReward::new(args, &ConstructContext::cpu()).unwrap_or_else(|e| panic!("{e}"))
}

/// Share of `images` the classifier puts in each class, and its mean top probability.
fn judge(images: &Tensor) -> (Vec<f64>, f64) {
    let log_probs = reward("{}").log_probs(images).unwrap();
    let top = log_probs.argmax(-1, false);
    let n = images.size()[0] as f64;
    let histogram = (0..10)
        .map(|c| {
            top.eq(c)
                .to_kind(Kind::Double)
                .sum(Kind::Double)
                .double_value(&[])
                / n
        })
        .collect();
    let confidence = log_probs
        .exp()
        .amax([-1], false)
        .mean(Kind::Double)
        .double_value(&[]);
    (histogram, confidence)
}

#[test]
fn the_classifier_knows_the_digits_and_scores_the_digit_asked_for() {
    let data = ImageData::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz"),
    )
    .unwrap();
    let labels = data.labels.as_ref().unwrap();
    let log_probs = reward("{}").log_probs(&data.images).unwrap();
    let accuracy = log_probs
        .argmax(-1, false)
        .eq_tensor(labels)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    // 98.05% on the 359 held-out images, more on the 1,438 it was trained on.
    assert!(accuracy > 0.97, "accuracy {accuracy}");

    let threes = data
        .images
        .index_select(0, &labels.eq(3).nonzero().squeeze_dim(1));
    let reward_of = |json: &str| -> Tensor {
        let mut r = reward(json);
        let sample = flowgym_plugin_api::Batch::from_tch("images", [("x", &threes)]).unwrap();
        let latent = flowgym_plugin_api::Batch::from_tch("images", [("x", &threes)]).unwrap();
        let out =
            flowgym_plugin_api::Reward::reward(&mut r, sample, latent, Kwargs::new()).unwrap();
        out.reward.into_tch().unwrap()
    };
    let log_p = reward_of(r#"{"digit": 3}"#);
    assert!(log_p.mean(Kind::Double).double_value(&[]) > 0.9f64.ln());
    let hits = reward_of(r#"{"digit": 3, "form": "hit"}"#);
    assert!(hits.mean(Kind::Double).double_value(&[]) > 0.95);
    let other = reward_of(r#"{"digit": 8, "form": "prob"}"#);
    assert!(other.mean(Kind::Double).double_value(&[]) < 0.05);
    // RGB images of another size are made grey and 8 x 8 first.
    let rgb = threes
        .upsample_nearest2d([32, 32], None, None)
        .repeat([1, 3, 1, 1]);
    let log_p_rgb = reward("{}").log_probs(&rgb).unwrap().select(1, 3);
    assert!((log_p_rgb - log_p).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn an_unknown_digit_names_the_accepted_range() {
    let Constructor::Reward(construct) = registration("images/digit").constructor else {
        panic!("images/digit is not a reward");
    };
    let err = construct(r#"{"digit": 12}"#, &ConstructContext::cpu())
        .err()
        .expect("digit 12")
        .to_string();
    assert!(
        err.contains("digit") && err.contains("0") && err.contains("9"),
        "{err}"
    );
    let err = construct(r#"{"form": "logit"}"#, &ConstructContext::cpu())
        .err()
        .expect("an unknown form")
        .to_string();
    assert!(err.contains("log_prob") && err.contains("hit"), "{err}");
}

/// 256 base samples of the built-in model, 50 steps of the host's sampler, judged by the
/// classifier: every digit appears (the training data hold each about 10%), and the classifier
/// is confident about them.
#[test]
fn base_samples_are_digits_of_every_class() {
    tch::set_num_threads(1);
    let mut inner = digits_model();
    assert_eq!(inner.output_type(), OutputType::Epsilon);
    let ScheduleSpec::DiscreteDiffusion { alpha_bar } = inner.schedule() else {
        panic!("not a discrete diffusion");
    };
    assert_eq!(alpha_bar.len(), 1000);
    let (mut x, _) = inner.sample_p0(2, 0).unwrap();
    assert_eq!(x.take_tch("x").unwrap().size(), vec![2, 1, 8, 8]);
    let adapter = BaseModelAdapter::new("images/digits", inner);
    let mut model = Model::new("images/digits", "images", adapter.into_box()).unwrap();
    let options = SamplerOptions {
        steps: 50,
        ..SamplerOptions::default()
    };
    let request = SampleRequest {
        n: 256,
        seed: 5,
        control: None,
        record: false,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    let trajectory = sample(&mut model, None, &options, &request).unwrap();
    let images = trajectory.sample.floating().next().unwrap().shallow_clone();
    assert_eq!(images.size(), vec![256, 1, 8, 8]);
    let (histogram, confidence) = judge(&images);
    eprintln!("classes {histogram:.3?}, mean confidence {confidence:.3}");
    for (digit, share) in histogram.iter().enumerate() {
        assert!((0.02..0.25).contains(share), "digit {digit}: share {share}");
    }
    assert!(confidence > 0.8, "mean confidence {confidence}");
}
