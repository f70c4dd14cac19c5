//! The CLIP byte-level BPE tokenizer, as transformers' `CLIPTokenizer` runs it.
//!
//! Reads the `tokenizer/` folder of the Stable Diffusion repositories: `vocab.json` and
//! `merges.txt` (or `tokenizer.json`, the serialised fast tokenizer, when present), with
//! `tokenizer_config.json` and `special_tokens_map.json` for the special tokens and the maximum
//! length. The pipeline is the one transformers builds (on the `tokenizers` crate, as transformers
//! itself does):
//!
//! - normalisation: Unicode NFC, every run of whitespace to one space, lower case;
//! - pre-tokenisation: CLIP's regex (`<|startoftext|>`, `<|endoftext|>`, the English
//!   contractions, runs of letters, single digits, runs of other non-space characters; whitespace
//!   is dropped), then the GPT-2 byte-to-unicode mapping;
//! - BPE with the end-of-word suffix `</w>`;
//! - `<|startoftext|>` ... `<|endoftext|>` around the tokens, truncated to `model_max_length`
//!   (77) with the end token kept, padded to it with the pad token.
//!
//! The special tokens (begin, end, unknown and pad) are matched in the raw text before
//! normalisation, as transformers does. Stable Diffusion 1.5 pads with `<|endoftext|>`; Stable
//! Diffusion 2 pads with `!` (id 0), which its `special_tokens_map.json` sets (that file takes
//! precedence over `tokenizer_config.json`, as in transformers), so a `!` in a prompt is a token
//! of its own there, exactly as with transformers.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::utils::{Lowercase, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// CLIP's pre-tokenisation pattern (transformers `CLIPTokenizer`, OpenAI `clip/simple_tokenizer.py`).
pub const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The context length of every published CLIP text encoder, used when `tokenizer_config.json`
/// gives no `model_max_length`.
pub const CLIP_MAX_LENGTH: usize = 77;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file is missing or unreadable.
    #[error("cannot read the CLIP tokenizer file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tokenizer folder has neither `tokenizer.json` nor `vocab.json` + `merges.txt`.
    #[error(
        "{dir} is not a CLIP tokenizer folder: it needs `vocab.json` and `merges.txt` (or \
         `tokenizer.json`), as in the `tokenizer/` folder of a Stable Diffusion repository"
    )]
    NotATokenizer {
        /// The folder.
        dir: PathBuf,
    },
    /// The files do not make a working tokenizer.
    #[error("invalid CLIP tokenizer in {source_name}: {message}")]
    Invalid {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// Encoding a text failed.
    #[error("cannot tokenize {text:?}: {message}")]
    Encode {
        /// The text.
        text: String,
        /// What went wrong.
        message: String,
    },
}

/// The special tokens and length, from `tokenizer_config.json` and `special_tokens_map.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerSettings {
    /// Begin of text, `<|startoftext|>`.
    pub bos_token: String,
    /// End of text, `<|endoftext|>`.
    pub eos_token: String,
    /// Unknown token, `<|endoftext|>`.
    pub unk_token: String,
    /// Padding: `<|endoftext|>` (SD 1.x) or `!` (SD 2.x).
    pub pad_token: String,
    /// The length every encoding is truncated and padded to.
    pub model_max_length: usize,
    /// Further added tokens (`added_tokens_decoder` of newer configs): (content, special).
    pub added_tokens: Vec<(String, bool)>,
}

impl Default for TokenizerSettings {
    /// transformers' `CLIPTokenizer` defaults, with CLIP's context length.
    fn default() -> Self {
        Self {
            bos_token: "<|startoftext|>".to_string(),
            eos_token: "<|endoftext|>".to_string(),
            unk_token: "<|endoftext|>".to_string(),
            pad_token: "<|endoftext|>".to_string(),
            model_max_length: CLIP_MAX_LENGTH,
            added_tokens: Vec::new(),
        }
    }
}

impl TokenizerSettings {
    /// Reads `tokenizer_config.json`, then `special_tokens_map.json` (which takes precedence),
    /// from `dir`; either may be absent.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let mut settings = Self::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if path.is_file() {
                settings.apply(&path, &read_json(&path)?)?;
            }
        }
        Ok(settings)
    }

    fn apply(&mut self, path: &Path, json: &Value) -> Result<(), TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            source_name: path.display().to_string(),
            message,
        };
        for (key, slot) in [
            ("bos_token", &mut self.bos_token),
            ("eos_token", &mut self.eos_token),
            ("unk_token", &mut self.unk_token),
            ("pad_token", &mut self.pad_token),
        ] {
            match json.get(key) {
                None | Some(Value::Null) => {}
                Some(value) => {
                    *slot = token_content(value)
                        .ok_or_else(|| invalid(format!("`{key}` is not a token: {value}")))?;
                }
            }
        }
        if let Some(value) = json.get("model_max_length") {
            // transformers writes a huge number when a tokenizer has no limit; CLIP has 77.
            match value.as_f64() {
                Some(length) if (2.0..=1e6).contains(&length) => {
                    self.model_max_length = length as usize;
                }
                Some(_) => {}
                None => return Err(invalid(format!("`model_max_length` is {value}"))),
            }
        }
        if let Some(Value::Object(decoder)) = json.get("added_tokens_decoder") {
            for value in decoder.values() {
                let content = token_content(value)
                    .ok_or_else(|| invalid(format!("an added token is not a token: {value}")))?;
                let special = value
                    .get("special")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if !self.added_tokens.iter().any(|(c, _)| *c == content) {
                    self.added_tokens.push((content, special));
                }
            }
        }
        Ok(())
    }
}

/// A token given as `"text"` or as `{"content": "text", ...}` (an `AddedToken`).
fn token_content(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Read {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// The CLIP tokenizer: text to `model_max_length` token ids.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    settings: TokenizerSettings,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
    source: String,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("settings", &self.settings)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Reads a tokenizer folder (`tokenizer/` of a Stable Diffusion repository): `tokenizer.json`
    /// when present, else `vocab.json` + `merges.txt`; special tokens and length from the
    /// config files.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let settings = TokenizerSettings::from_dir(dir)?;
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = Tokenizer::from_file(&json).map_err(|e| TokenizerError::Read {
                path: json.clone(),
                message: e.to_string(),
            })?;
            return Self::with_pipeline(inner, settings, json.display().to_string());
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.is_file() || !merges.is_file() {
            return Err(TokenizerError::NotATokenizer {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_vocab_and_merges(&vocab, &merges, settings)
    }

    /// Builds the CLIP pipeline on a BPE vocabulary (`vocab.json`) and its merges (`merges.txt`).
    pub fn from_vocab_and_merges(
        vocab: &Path,
        merges: &Path,
        settings: TokenizerSettings,
    ) -> Result<Self, TokenizerError> {
        let source = vocab.display().to_string();
        let invalid = |message: String| TokenizerError::Invalid {
            source_name: source.clone(),
            message,
        };
        let utf8 = |path: &Path| {
            path.to_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::Read {
                    path: path.to_path_buf(),
                    message: "the path is not valid UTF-8".to_string(),
                })
        };
        for path in [vocab, merges] {
            if !path.is_file() {
                return Err(TokenizerError::Read {
                    path: path.to_path_buf(),
                    message: "no such file".to_string(),
                });
            }
        }
        let bpe = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(settings.unk_token.clone())
            .fuse_unk(false)
            .build()
            .map_err(|e| {
                invalid(format!(
                    "{e} (reading {} and {})",
                    vocab.display(),
                    merges.display()
                ))
            })?;
        let mut inner = Tokenizer::new(bpe);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
            .map_err(|e| invalid(e.to_string()))?;
        inner.with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.to_string()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| invalid(e.to_string()))?;
        inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        Self::with_pipeline(inner, settings, source)
    }

    /// Adds the special tokens, the begin / end post-processing, truncation and padding.
    fn with_pipeline(
        mut inner: Tokenizer,
        settings: TokenizerSettings,
        source: String,
    ) -> Result<Self, TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            source_name: source.clone(),
            message,
        };
        // transformers adds every special token (normalized: false) and the config's extra
        // added tokens; those already in the vocabulary keep their ids.
        let mut specials: Vec<AddedToken> = Vec::new();
        for token in [
            &settings.pad_token,
            &settings.bos_token,
            &settings.eos_token,
            &settings.unk_token,
        ] {
            if !specials.iter().any(|t| t.content == *token) {
                specials.push(AddedToken::from(token.clone(), true));
            }
        }
        inner.add_special_tokens(&specials);
        let extra: Vec<AddedToken> = settings
            .added_tokens
            .iter()
            .filter(|(content, _)| !specials.iter().any(|t| t.content == *content))
            .map(|(content, special)| AddedToken::from(content.clone(), *special))
            .collect();
        if !extra.is_empty() {
            inner.add_tokens(&extra);
        }
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| invalid(format!("the token {token:?} has no id")))
        };
        let (bos_id, eos_id, pad_id) = (
            id(&settings.bos_token)?,
            id(&settings.eos_token)?,
            id(&settings.pad_token)?,
        );
        inner.with_post_processor(Some(
            RobertaProcessing::new(
                (settings.eos_token.clone(), eos_id),
                (settings.bos_token.clone(), bos_id),
            )
            .trim_offsets(false)
            .add_prefix_space(false),
        ));
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: settings.model_max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| invalid(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(settings.model_max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: settings.pad_token.clone(),
        }));
        Ok(Self {
            inner,
            settings,
            pad_id,
            bos_id,
            eos_id,
            source,
        })
    }

    /// The token ids of `text`: begin token, text, end token, truncated and padded to
    /// [`max_length`](Self::max_length), like
    /// `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_string(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The token ids of several texts as an int64 tensor `[n, max_length]` on `device`.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        device: Device,
    ) -> Result<Tensor, TokenizerError> {
        let mut ids: Vec<i64> = Vec::with_capacity(texts.len() * self.max_length());
        for text in texts {
            ids.extend(self.encode(text.as_ref())?.into_iter().map(i64::from));
        }
        Ok(Tensor::from_slice(&ids)
            .to_kind(Kind::Int64)
            .reshape([texts.len() as i64, self.max_length() as i64])
            .to_device(device))
    }

    /// The length of every encoding (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.settings.model_max_length
    }

    /// The id of the pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The special tokens and length in use.
    pub fn settings(&self) -> &TokenizerSettings {
        &self.settings
    }
}
