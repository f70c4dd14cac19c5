//! The CLIP tokenizer against transformers' `CLIPTokenizer` (fixtures from
//! `scripts/make_clip_fixtures.py`): exact token ids for varied prompts, both pad styles.

use std::path::PathBuf;

use flowgym_images::models::clip_tokenizer::{ClipTokenizer, TokenizerError};
use serde_json::Value;
use tch::Device;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_folder(folder: &str) {
    let cases = cases();
    let tokenizer = ClipTokenizer::from_dir(&fixtures().join(folder)).unwrap();
    let expected = &cases[folder];
    assert_eq!(
        tokenizer.pad_id() as u64,
        expected["pad_id"].as_u64().unwrap()
    );
    assert_eq!(
        tokenizer.settings().pad_token,
        expected["pad_token"].as_str().unwrap()
    );
    assert_eq!(tokenizer.max_length(), 77);
    let prompts = cases["prompts"].as_array().unwrap();
    for (prompt, ids) in prompts
        .iter()
        .zip(expected["input_ids"].as_array().unwrap())
    {
        let prompt = prompt.as_str().unwrap();
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tokenizer.encode(prompt).unwrap();
        assert_eq!(got, want, "{folder}: prompt {prompt:?}");
    }
}

#[test]
fn sd15_pads_with_endoftext_like_transformers() {
    check_folder("tokenizer_sd15");
}

#[test]
fn sd2_pads_with_exclamation_mark_like_transformers() {
    check_folder("tokenizer_sd2");
}

#[test]
fn tokenizer_json_gives_the_same_ids() {
    check_folder("tokenizer_json");
}

#[test]
fn long_prompts_keep_the_end_token_and_batches_are_tensors() {
    let tokenizer = ClipTokenizer::from_dir(&fixtures().join("tokenizer_sd2")).unwrap();
    let long = "a very long prompt about a lake ".repeat(30);
    let ids = tokenizer.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], tokenizer.bos_id());
    assert_eq!(ids[76], tokenizer.eos_id());
    let batch = tokenizer
        .encode_batch(&["", long.as_str()], Device::Cpu)
        .unwrap();
    assert_eq!(batch.size(), vec![2, 77]);
    assert_eq!(batch.int64_value(&[0, 0]), i64::from(tokenizer.bos_id()));
    assert_eq!(batch.int64_value(&[0, 1]), i64::from(tokenizer.eos_id()));
    assert_eq!(batch.int64_value(&[0, 2]), i64::from(tokenizer.pad_id()));
}

#[test]
fn a_folder_without_vocabulary_is_a_clear_error() {
    let err = ClipTokenizer::from_dir(&fixtures().join("vision")).unwrap_err();
    assert!(matches!(err, TokenizerError::NotATokenizer { .. }));
    assert!(err.to_string().contains("vocab.json"), "{err}");
}
