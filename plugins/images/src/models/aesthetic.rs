//! The LAION aesthetic predictor: a head on the L2-normalised CLIP ViT-L/14 image embedding.
//!
//! Two published heads are recognised by their weight names:
//! - LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`: one `Linear(768, 1)` (keys
//!   `weight`, `bias`);
//! - christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth` (the one
//!   DDPO and TRL use, also published as `aesthetic-model.pth` in trl-lib/ddpo-aesthetic-predictor):
//!   `layers.0` Linear(768, 1024), `layers.2` Linear(1024, 128), `layers.4` Linear(128, 64),
//!   `layers.6` Linear(64, 16), `layers.7` Linear(16, 1), with dropouts (identity at inference)
//!   in between and no nonlinearity. The widths are read from the file.
//!
//! Heads load from `.safetensors` or straight from the published `.pth` files: libtorch's loaders
//! that tch exposes cannot read a `torch.save`d state dict (`load_multi` wants a TorchScript
//! module, `loadz_multi` fails on the pickled `OrderedDict`), so [`pth`] reads PyTorch's zip
//! checkpoint format itself, accepting nothing but tensors in (ordered) dictionaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::models::clip::{ClipError, ClipVisionModelWithProjection};
use crate::nn::Linear;
use crate::preprocess::{clip_preprocess, PreprocessError};
use crate::weights::{Weights, WeightsError};

/// Why the aesthetic predictor could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum AestheticError {
    /// The CLIP model.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The head's weights.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The images.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// A head file that cannot be read.
    #[error("cannot read the aesthetic head {path}: {message}")]
    Head {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The Python line that converts a `.pth` state dict to safetensors.
pub const PTH_TO_SAFETENSORS: &str = "python -c \"import sys, torch, safetensors.torch as st; \
st.save_file({k: v.float().contiguous() for k, v in torch.load(sys.argv[1], map_location='cpu', \
weights_only=True).items()}, sys.argv[2])\" HEAD.pth HEAD.safetensors";

/// Reads the tensors of a head file: `.safetensors`, or a PyTorch checkpoint (`.pth`, `.pt`,
/// `.bin`, `.ckpt`) in the zip format `torch.save` has written since PyTorch 1.6.
pub fn read_head_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, AestheticError> {
    let error = |message: String| AestheticError::Head {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(error("no such file".to_string()));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let tensors = if extension == "safetensors" {
        Tensor::read_safetensors(path).map_err(|e| error(e.to_string()))?
    } else {
        pth::read_state_dict(path).map_err(|e| {
            error(format!(
                "{e}. Convert it to safetensors with PyTorch and pass that file instead:\n  \
                 {PTH_TO_SAFETENSORS}"
            ))
        })?
    };
    Ok(tensors.into_iter().collect())
}

/// The head on the normalised image embedding.
#[derive(Debug)]
pub enum AestheticHead {
    /// LAION-AI/aesthetic-predictor: `Linear(dim, 1)`.
    Linear(Linear),
    /// improved-aesthetic-predictor: five linear layers `layers.{0,2,4,6,7}`, no nonlinearity.
    Mlp(Vec<Linear>),
}

impl AestheticHead {
    /// Builds the head from its tensors (moved to `device`), recognising the layout by its
    /// names; `dim` is the width of the CLIP image embedding.
    pub fn from_tensors(
        source: &str,
        tensors: BTreeMap<String, Tensor>,
        dim: i64,
        device: Device,
    ) -> Result<Self, AestheticError> {
        let shape = |name: &str| tensors.get(name).map(Tensor::size);
        let is_mlp = tensors.contains_key("layers.0.weight");
        let is_linear = tensors.contains_key("weight");
        let widths: Option<Vec<i64>> = is_mlp.then(|| {
            [0, 2, 4, 6]
                .iter()
                .map(|i| match shape(&format!("layers.{i}.weight")).as_deref() {
                    Some([out, _]) => *out,
                    _ => 0,
                })
                .collect()
        });
        let weights = Weights::from_tensors(source, tensors, Kind::Float, device);
        let root = weights.root();
        let head = match widths {
            Some(widths) => {
                let p = root.pp("layers");
                let mut layers = Vec::new();
                let mut input = dim;
                for (index, width) in [0, 2, 4, 6].into_iter().zip(widths) {
                    layers.push(Linear::new(&p.pp(index), input, width, true));
                    input = width;
                }
                layers.push(Linear::new(&p.pp(7), input, 1, true));
                AestheticHead::Mlp(layers)
            }
            None if is_linear => AestheticHead::Linear(Linear::new(&root, dim, 1, true)),
            None => {
                return Err(AestheticError::Head {
                    path: PathBuf::from(source),
                    message: "neither a linear head (`weight`, `bias`) nor the MLP head \
                              (`layers.0.weight`, ..., `layers.7.bias`)"
                        .to_string(),
                })
            }
        };
        weights.finish()?;
        Ok(head)
    }

    /// Reads a head file (see [`read_head_tensors`]).
    pub fn load(path: &Path, dim: i64, device: Device) -> Result<Self, AestheticError> {
        let tensors = read_head_tensors(path)?;
        Self::from_tensors(&path.display().to_string(), tensors, dim, device)
    }

    /// Scores `[n, dim]` normalised embeddings: `[n]`.
    pub fn forward(&self, embeddings: &Tensor) -> Tensor {
        let out = match self {
            AestheticHead::Linear(linear) => linear.forward(embeddings),
            AestheticHead::Mlp(layers) => layers
                .iter()
                .fold(embeddings.shallow_clone(), |x, layer| layer.forward(&x)),
        };
        out.squeeze_dim(1)
    }
}

/// CLIP image embedding, L2-normalised, then the head.
#[derive(Debug)]
pub struct AestheticPredictor {
    clip: ClipVisionModelWithProjection,
    head: AestheticHead,
}

impl AestheticPredictor {
    /// The predictor from its two parts.
    pub fn new(clip: ClipVisionModelWithProjection, head: AestheticHead) -> Self {
        Self { clip, head }
    }

    /// Loads the CLIP folder (transformers layout) and the head file onto `device`.
    pub fn load(clip_dir: &Path, head: &Path, device: Device) -> Result<Self, AestheticError> {
        let clip = ClipVisionModelWithProjection::load(clip_dir, device)?;
        let head = AestheticHead::load(head, clip.config().projection_dim, device)?;
        Ok(Self::new(clip, head))
    }

    /// The CLIP model.
    pub fn clip(&self) -> &ClipVisionModelWithProjection {
        &self.clip
    }

    /// The L2-normalised image embeddings `[n, dim]` of normalised pixels.
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor, AestheticError> {
        let embeds = self.clip.forward(pixel_values)?;
        let norm = embeds.norm_scalaropt_dim(2, [-1], true);
        Ok(embeds / norm)
    }

    /// Aesthetic scores `[n]` (float32, on the model's device) of RGB images `[n, 3, h, w]` in
    /// `[0, 1]`: values outside are clamped (as rounding to 8 bits does in the reference
    /// pipelines), then the images go through [`clip_preprocess`] at the model's `image_size`.
    pub fn score(&self, images: &Tensor) -> Result<Tensor, AestheticError> {
        let _guard = tch::no_grad_guard();
        let device = self.clip.device();
        let images = images
            .to_device(device)
            .to_kind(Kind::Float)
            .clamp(0.0, 1.0);
        let pixels = clip_preprocess(&images, self.clip.config().image_size)?;
        Ok(self.head.forward(&self.embed(&pixels)?))
    }
}

/// A reader of PyTorch zip checkpoints holding a state dict (`torch.save(model.state_dict())`).
///
/// Only what a state dict needs is understood: the pickle opcodes of protocols 2 to 5 that build
/// dicts, tuples, lists, strings and numbers, `collections.OrderedDict`,
/// `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and the `torch.*Storage` types whose
/// bytes lie in `*/data/<key>`. Any other global is refused, so nothing in the file is executed
/// (the same guarantee as `torch.load(weights_only=True)`).
pub mod pth {
    use std::collections::HashMap;
    use std::io::Read;
    use std::path::Path;

    use tch::{Kind, Tensor};

    /// A value on the unpickler's stack (payloads that a state dict does not use are kept for
    /// the error messages, which print values with `Debug`).
    #[derive(Debug, Clone)]
    #[allow(dead_code)]
    enum Value {
        None,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
        Tuple(Vec<Value>),
        List(Vec<Value>),
        Dict(Vec<(Value, Value)>),
        Global(String, String),
        Storage { key: String, kind: Kind },
        Tensor(usize),
        Mark,
    }

    struct TensorRef {
        key: String,
        kind: Kind,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    }

    fn storage_kind(name: &str) -> Option<Kind> {
        Some(match name {
            "FloatStorage" => Kind::Float,
            "DoubleStorage" => Kind::Double,
            "HalfStorage" => Kind::Half,
            "BFloat16Storage" => Kind::BFloat16,
            "LongStorage" => Kind::Int64,
            "IntStorage" => Kind::Int,
            "ShortStorage" => Kind::Int16,
            "CharStorage" => Kind::Int8,
            "ByteStorage" => Kind::Uint8,
            "BoolStorage" => Kind::Bool,
            _ => return None,
        })
    }

    fn ints(value: &Value, what: &str) -> Result<Vec<i64>, String> {
        match value {
            Value::Tuple(items) | Value::List(items) => items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    other => Err(format!("{what} holds {other:?}, not integers")),
                })
                .collect(),
            other => Err(format!("{what} is {other:?}, not a tuple")),
        }
    }

    struct Unpickler<'a> {
        data: &'a [u8],
        pos: usize,
        stack: Vec<Value>,
        memo: HashMap<u32, Value>,
        tensors: Vec<TensorRef>,
    }

    impl<'a> Unpickler<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
            let end = end.ok_or("the pickle ends early")?;
            let bytes = &self.data[self.pos..end];
            self.pos = end;
            Ok(bytes)
        }

        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }

        fn u16(&mut self) -> Result<u16, String> {
            let b = self.take(2)?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        }

        fn u32(&mut self) -> Result<u32, String> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn line(&mut self) -> Result<String, String> {
            let rest = &self.data[self.pos..];
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("unterminated line")?;
            let text = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.pos += end + 1;
            Ok(text)
        }

        fn string(&mut self, n: usize) -> Result<Value, String> {
            let bytes = self.take(n)?;
            Ok(Value::Str(String::from_utf8_lossy(bytes).into_owned()))
        }

        fn pop(&mut self) -> Result<Value, String> {
            self.stack
                .pop()
                .ok_or_else(|| "the pickle stack is empty".to_string())
        }

        fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
            let mark = self
                .stack
                .iter()
                .rposition(|v| matches!(v, Value::Mark))
                .ok_or("no mark on the pickle stack")?;
            let items = self.stack.split_off(mark + 1);
            self.stack.pop();
            Ok(items)
        }

        fn top(&mut self) -> Result<&mut Value, String> {
            self.stack
                .last_mut()
                .ok_or_else(|| "the pickle stack is empty".to_string())
        }

        fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
            let pairs = items.len() / 2;
            if pairs * 2 != items.len() {
                return Err("odd number of dict items".to_string());
            }
            let Value::Dict(map) = self.top()? else {
                return Err("dict items set on a value that is no dict".to_string());
            };
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                map.push((k, v));
            }
            Ok(())
        }

        fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
            match self.top()? {
                Value::List(list) => {
                    list.extend(items);
                    Ok(())
                }
                _ => Err("items appended to a value that is no list".to_string()),
            }
        }

        fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, String> {
            let Value::Global(module, name) = &callable else {
                return Err(format!("cannot call {callable:?}"));
            };
            let Value::Tuple(args) = args else {
                return Err(format!("{module}.{name} called without an argument tuple"));
            };
            match (module.as_str(), name.as_str()) {
                ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
                ("torch._utils", "_rebuild_tensor_v2") => {
                    let (
                        Some(Value::Storage { key, kind }),
                        Some(Value::Int(offset)),
                        Some(size),
                        Some(stride),
                    ) = (args.first(), args.get(1), args.get(2), args.get(3))
                    else {
                        return Err(format!("unexpected tensor arguments {args:?}"));
                    };
                    self.tensors.push(TensorRef {
                        key: key.clone(),
                        kind: *kind,
                        offset: *offset,
                        size: ints(size, "a tensor size")?,
                        stride: ints(stride, "a tensor stride")?,
                    });
                    Ok(Value::Tensor(self.tensors.len() - 1))
                }
                ("torch._utils", "_rebuild_parameter") => match args.first() {
                    Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
                    _ => Err(format!("unexpected parameter arguments {args:?}")),
                },
                _ => Err(format!(
                    "refusing to call `{module}.{name}`: only tensors in dictionaries are read"
                )),
            }
        }

        fn run(&mut self) -> Result<Value, String> {
            loop {
                let op = self.u8()?;
                match op {
                    0x80 => {
                        self.u8()?; // PROTO
                    }
                    0x95 => {
                        self.take(8)?; // FRAME
                    }
                    b'.' => return self.pop(),
                    b'(' => self.stack.push(Value::Mark),
                    b'}' => self.stack.push(Value::Dict(Vec::new())),
                    b']' => self.stack.push(Value::List(Vec::new())),
                    b')' => self.stack.push(Value::Tuple(Vec::new())),
                    b'N' => self.stack.push(Value::None),
                    0x88 => self.stack.push(Value::Bool(true)),
                    0x89 => self.stack.push(Value::Bool(false)),
                    b'K' => {
                        let v = self.u8()?;
                        self.stack.push(Value::Int(v.into()));
                    }
                    b'M' => {
                        let v = self.u16()?;
                        self.stack.push(Value::Int(v.into()));
                    }
                    b'J' => {
                        let v = self.u32()? as i32;
                        self.stack.push(Value::Int(v.into()));
                    }
                    0x8a => {
                        let n = self.u8()? as usize;
                        let bytes = self.take(n)?;
                        if n > 8 {
                            return Err("integer too large".to_string());
                        }
                        let mut value: i64 = 0;
                        for (i, b) in bytes.iter().enumerate() {
                            value |= (*b as i64) << (8 * i);
                        }
                        if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                            value -= 1i64 << (8 * n);
                        }
                        self.stack.push(Value::Int(value));
                    }
                    b'G' => {
                        let b = self.take(8)?;
                        let mut raw = [0u8; 8];
                        raw.copy_from_slice(b);
                        self.stack.push(Value::Float(f64::from_be_bytes(raw)));
                    }
                    b'X' => {
                        let n = self.u32()? as usize;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    0x8c | b'U' => {
                        let n = self.u8()? as usize;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    b'T' => {
                        let n = self.u32()? as usize;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    b'c' => {
                        let module = self.line()?;
                        let name = self.line()?;
                        self.stack.push(Value::Global(module, name));
                    }
                    0x93 => {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (module, name) {
                            (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                            _ => return Err("STACK_GLOBAL without names".to_string()),
                        }
                    }
                    b'q' => {
                        let i = self.u8()? as u32;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    b'r' => {
                        let i = self.u32()?;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    0x94 => {
                        let i = self.memo.len() as u32;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    b'h' | b'j' => {
                        let i = if op == b'h' {
                            self.u8()? as u32
                        } else {
                            self.u32()?
                        };
                        let v = self.memo.get(&i).cloned().ok_or("unknown memo entry")?;
                        self.stack.push(v);
                    }
                    b't' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::Tuple(items));
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        if self.stack.len() < n {
                            return Err("the pickle stack is too short".to_string());
                        }
                        let items = self.stack.split_off(self.stack.len() - n);
                        self.stack.push(Value::Tuple(items));
                    }
                    b'l' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::List(items));
                    }
                    b'd' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::Dict(Vec::new()));
                        self.set_items(items)?;
                    }
                    b's' => {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        self.set_items(vec![k, v])?;
                    }
                    b'u' => {
                        let items = self.pop_mark()?;
                        self.set_items(items)?;
                    }
                    b'a' => {
                        let v = self.pop()?;
                        self.append(vec![v])?;
                    }
                    b'e' => {
                        let items = self.pop_mark()?;
                        self.append(items)?;
                    }
                    b'R' => {
                        let args = self.pop()?;
                        let callable = self.pop()?;
                        let v = self.reduce(callable, args)?;
                        self.stack.push(v);
                    }
                    b'b' => {
                        // BUILD: the state of an OrderedDict is its `_metadata`; not needed.
                        self.pop()?;
                    }
                    b'Q' => {
                        let pid = self.pop()?;
                        let v = match pid {
                            Value::Tuple(items) => match &items[..] {
                                [Value::Str(tag), Value::Global(module, name), Value::Str(key), ..]
                                    if tag == "storage" && module == "torch" =>
                                {
                                    let kind = storage_kind(name).ok_or_else(|| {
                                        format!("unsupported storage torch.{name}")
                                    })?;
                                    Value::Storage {
                                        key: key.clone(),
                                        kind,
                                    }
                                }
                                _ => return Err(format!("unexpected persistent id {items:?}")),
                            },
                            other => return Err(format!("unexpected persistent id {other:?}")),
                        };
                        self.stack.push(v);
                    }
                    other => {
                        return Err(format!(
                            "pickle opcode 0x{other:02x} at byte {} is not part of a state dict",
                            self.pos - 1
                        ))
                    }
                }
            }
        }
    }

    /// Collects `prefix.name -> tensor` from nested dicts.
    fn flatten(value: Value, prefix: &str, out: &mut Vec<(String, usize)>) -> Result<(), String> {
        match value {
            Value::Tensor(index) => {
                out.push((prefix.to_string(), index));
                Ok(())
            }
            Value::Dict(items) => {
                for (key, value) in items {
                    let Value::Str(key) = key else {
                        return Err(format!("a state dict key is {key:?}, not a string"));
                    };
                    let name = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(value, &name, out)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads every tensor of a `torch.save`d state dict (a dict of tensors, possibly nested, as
    /// in `{"state_dict": {...}}`), by name, on the CPU.
    pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut archive = zip::ZipArchive::new(file).map_err(|_| {
            "not a zip-format PyTorch checkpoint (files written with \
             `_use_new_zipfile_serialization=False` or before PyTorch 1.6 are not read)"
                .to_string()
        })?;
        let names: Vec<String> = archive.file_names().map(str::to_string).collect();
        let pickle_name = names
            .iter()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or("the archive has no data.pkl")?
            .clone();
        let root = pickle_name.trim_end_matches("data.pkl").to_string();
        let mut read = |name: &str| -> Result<Vec<u8>, String> {
            let mut entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            Ok(bytes)
        };
        if names.contains(&format!("{root}byteorder")) {
            let order = read(&format!("{root}byteorder"))?;
            if order != b"little" {
                return Err("big-endian checkpoints are not read".to_string());
            }
        }
        let pickle = read(&pickle_name)?;
        let mut unpickler = Unpickler {
            data: &pickle,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            tensors: Vec::new(),
        };
        let value = unpickler.run()?;
        let mut named = Vec::new();
        flatten(value, "", &mut named)?;
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        let mut out = Vec::new();
        for (name, index) in named {
            let t = &unpickler.tensors[index];
            if !storages.contains_key(&t.key) {
                let bytes = read(&format!("{root}data/{}", t.key))?;
                storages.insert(t.key.clone(), bytes);
            }
            let bytes = &storages[&t.key];
            let element = t.kind.elt_size_in_bytes();
            let numel = bytes.len() / element;
            if numel * element != bytes.len() {
                return Err(format!(
                    "storage {} of `{name}` has a partial element",
                    t.key
                ));
            }
            let numel = numel as i64;
            let last = t.offset
                + t.size
                    .iter()
                    .zip(&t.stride)
                    .map(|(s, st)| (s - 1).max(0) * st)
                    .sum::<i64>();
            if t.size.len() != t.stride.len()
                || t.offset < 0
                || (t.size.iter().product::<i64>() > 0 && last >= numel)
            {
                return Err(format!("tensor `{name}` lies outside its storage"));
            }
            let storage = Tensor::f_from_data_size(bytes, &[numel], t.kind)
                .map_err(|e| format!("`{name}`: {e}"))?;
            let tensor = storage
                .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
                .map_err(|e| format!("`{name}`: {e}"))?
                .contiguous();
            out.push((name, tensor));
        }
        Ok(out)
    }
}
