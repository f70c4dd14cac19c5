//! A restricted reader of PyTorch zip checkpoints holding a state dict
//! (`torch.save(model.state_dict())`, the format `torch.save` has written since PyTorch 1.6).
//!
//! Such a file is a zip archive with a pickle, `<root>/data.pkl`, describing nested dictionaries
//! of tensors, and one raw storage per tensor, `<root>/data/<key>`. A pickle is a program for a
//! small stack machine that may call any Python function it names; this reader is not a Python
//! interpreter and executes nothing. It interprets only the opcodes of protocols 2 to 5 that
//! build dicts, tuples, lists, strings and numbers, and it recognises only the few callables a
//! state dict names: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and
//! `_rebuild_parameter`, and the `torch.*Storage` types of persistent ids. Each is replaced by
//! the value it would build (an empty dict, a reference to a storage slice); any other callable,
//! and any other opcode, is refused with an error. This gives the guarantee of
//! `torch.load(weights_only=True)`: reading a file cannot run code from it.
//!
//! The opcodes are named as in CPython's `pickletools` and `Lib/pickle.py`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

/// The pickle opcodes this reader interprets, by their names in CPython's `pickle` module.
mod op {
    /// Protocol version (protocol 2+): one byte, ignored.
    pub const PROTO: u8 = 0x80;
    /// Frame length (protocol 4+): eight bytes, ignored (frames only group the bytes).
    pub const FRAME: u8 = 0x95;
    /// End of the pickle: the value on top of the stack is the result.
    pub const STOP: u8 = b'.';
    /// Push a mark, the start of the items of the next `TUPLE`, `LIST`, `DICT`, ...
    pub const MARK: u8 = b'(';
    /// Push an empty dict.
    pub const EMPTY_DICT: u8 = b'}';
    /// Push an empty list.
    pub const EMPTY_LIST: u8 = b']';
    /// Push an empty tuple.
    pub const EMPTY_TUPLE: u8 = b')';
    /// Push `None`.
    pub const NONE: u8 = b'N';
    /// Push `True`.
    pub const NEWTRUE: u8 = 0x88;
    /// Push `False`.
    pub const NEWFALSE: u8 = 0x89;
    /// Push an unsigned one-byte integer.
    pub const BININT1: u8 = b'K';
    /// Push an unsigned two-byte little-endian integer.
    pub const BININT2: u8 = b'M';
    /// Push a signed four-byte little-endian integer.
    pub const BININT: u8 = b'J';
    /// Push a little-endian two's-complement integer of a one-byte length.
    pub const LONG1: u8 = 0x8a;
    /// Push a big-endian IEEE 754 double.
    pub const BINFLOAT: u8 = b'G';
    /// Push a UTF-8 string of a four-byte length.
    pub const BINUNICODE: u8 = b'X';
    /// Push a UTF-8 string of a one-byte length.
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    /// Push a byte string of a four-byte length (read as text here).
    pub const BINSTRING: u8 = b'T';
    /// Push a byte string of a one-byte length (read as text here).
    pub const SHORT_BINSTRING: u8 = b'U';
    /// Push the global `module.name`, both given as newline-terminated lines.
    pub const GLOBAL: u8 = b'c';
    /// Push the global named by the two strings on top of the stack (protocol 4+).
    pub const STACK_GLOBAL: u8 = 0x93;
    /// Store the top of the stack in the memo under a one-byte index.
    pub const BINPUT: u8 = b'q';
    /// Store the top of the stack in the memo under a four-byte index.
    pub const LONG_BINPUT: u8 = b'r';
    /// Store the top of the stack in the memo under the next free index (protocol 4+).
    pub const MEMOIZE: u8 = 0x94;
    /// Push the memo entry of a one-byte index.
    pub const BINGET: u8 = b'h';
    /// Push the memo entry of a four-byte index.
    pub const LONG_BINGET: u8 = b'j';
    /// Replace the items down to the mark by a tuple of them.
    pub const TUPLE: u8 = b't';
    /// Replace the top item by a 1-tuple.
    pub const TUPLE1: u8 = 0x85;
    /// Replace the top two items by a 2-tuple.
    pub const TUPLE2: u8 = 0x86;
    /// Replace the top three items by a 3-tuple.
    pub const TUPLE3: u8 = 0x87;
    /// Replace the items down to the mark by a list of them.
    pub const LIST: u8 = b'l';
    /// Replace the items down to the mark (key, value, key, value, ...) by a dict of them.
    pub const DICT: u8 = b'd';
    /// Pop a key and a value and set them in the dict below.
    pub const SETITEM: u8 = b's';
    /// Pop the keys and values down to the mark and set them in the dict below.
    pub const SETITEMS: u8 = b'u';
    /// Pop an item and append it to the list below.
    pub const APPEND: u8 = b'a';
    /// Pop the items down to the mark and append them to the list below.
    pub const APPENDS: u8 = b'e';
    /// Pop an argument tuple and a callable and push the call's result.
    pub const REDUCE: u8 = b'R';
    /// Pop a state and set it on the object below (`__setstate__`).
    pub const BUILD: u8 = b'b';
    /// Pop a persistent id and push the object it names (here: a tensor storage).
    pub const BINPERSID: u8 = b'Q';
}

/// A value on the unpickler's stack (payloads that a state dict does not use are kept for the
/// error messages, which print values with `Debug`).
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

/// A tensor as the pickle describes it: a strided view of the storage `data/<key>`.
struct TensorRef {
    key: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The element type of the storage class `torch.<name>`.
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

/// The stack machine, restricted to the opcodes of [`op`].
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    tensors: Vec<TensorRef>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            tensors: Vec::new(),
        }
    }

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

    fn push(&mut self, value: Value) {
        self.stack.push(value);
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

    /// Runs the pickle to its `STOP` and returns the value it built.
    fn run(&mut self) -> Result<Value, String> {
        loop {
            let opcode = self.u8()?;
            if opcode == op::STOP {
                return self.pop();
            }
            self.step(opcode)?;
        }
    }

    /// Executes one opcode (other than `STOP`).
    fn step(&mut self, opcode: u8) -> Result<(), String> {
        match opcode {
            op::PROTO => {
                self.u8()?;
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => self.push(Value::Mark),
            op::EMPTY_DICT => self.push(Value::Dict(Vec::new())),
            op::EMPTY_LIST => self.push(Value::List(Vec::new())),
            op::EMPTY_TUPLE => self.push(Value::Tuple(Vec::new())),
            op::NONE => self.push(Value::None),
            op::NEWTRUE => self.push(Value::Bool(true)),
            op::NEWFALSE => self.push(Value::Bool(false)),
            op::BININT1 | op::BININT2 | op::BININT | op::LONG1 | op::BINFLOAT => {
                let number = self.number(opcode)?;
                self.push(number);
            }
            op::BINUNICODE | op::SHORT_BINUNICODE | op::BINSTRING | op::SHORT_BINSTRING => {
                let length = match opcode {
                    op::SHORT_BINUNICODE | op::SHORT_BINSTRING => self.u8()? as usize,
                    _ => self.u32()? as usize,
                };
                let text = self.string(length)?;
                self.push(text);
            }
            op::BINPUT | op::LONG_BINPUT | op::MEMOIZE | op::BINGET | op::LONG_BINGET => {
                self.memo_op(opcode)?
            }
            op::TUPLE | op::TUPLE1 | op::TUPLE2 | op::TUPLE3 | op::LIST | op::DICT => {
                self.collection(opcode)?
            }
            op::SETITEM | op::SETITEMS | op::APPEND | op::APPENDS => self.fill(opcode)?,
            op::GLOBAL | op::STACK_GLOBAL | op::REDUCE | op::BUILD | op::BINPERSID => {
                self.object(opcode)?
            }
            other => {
                return Err(format!(
                    "pickle opcode 0x{other:02x} at byte {} is not part of a state dict",
                    self.pos - 1
                ))
            }
        }
        Ok(())
    }

    /// The number of `BININT1`, `BININT2`, `BININT`, `LONG1` or `BINFLOAT`.
    fn number(&mut self, opcode: u8) -> Result<Value, String> {
        Ok(match opcode {
            op::BININT1 => Value::Int(self.u8()?.into()),
            op::BININT2 => Value::Int(self.u16()?.into()),
            op::BININT => Value::Int((self.u32()? as i32).into()),
            op::LONG1 => {
                let n = self.u8()? as usize;
                Value::Int(twos_complement(self.take(n)?)?)
            }
            _ => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(self.take(8)?);
                Value::Float(f64::from_be_bytes(raw))
            }
        })
    }

    /// `BINPUT`, `LONG_BINPUT`, `MEMOIZE` (store the top) or `BINGET`, `LONG_BINGET` (push).
    fn memo_op(&mut self, opcode: u8) -> Result<(), String> {
        let index = match opcode {
            op::BINPUT | op::BINGET => self.u8()? as u32,
            op::LONG_BINPUT | op::LONG_BINGET => self.u32()?,
            _ => self.memo.len() as u32,
        };
        if matches!(opcode, op::BINGET | op::LONG_BINGET) {
            let value = self.memo.get(&index).cloned().ok_or("unknown memo entry")?;
            self.push(value);
        } else {
            let value = self.top()?.clone();
            self.memo.insert(index, value);
        }
        Ok(())
    }

    /// `TUPLE`, `TUPLE1` to `TUPLE3`, `LIST` or `DICT`: collects items into a new value.
    fn collection(&mut self, opcode: u8) -> Result<(), String> {
        match opcode {
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (opcode - op::TUPLE1 + 1) as usize;
                if self.stack.len() < n {
                    return Err("the pickle stack is too short".to_string());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items));
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            _ => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()));
                self.set_items(items)?;
            }
        }
        Ok(())
    }

    /// `SETITEM`, `SETITEMS`, `APPEND` or `APPENDS`: adds items to the dict or list below them.
    fn fill(&mut self, opcode: u8) -> Result<(), String> {
        match opcode {
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)
            }
            op::APPEND => {
                let item = self.pop()?;
                self.append(vec![item])
            }
            _ => {
                let items = self.pop_mark()?;
                self.append(items)
            }
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
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

    /// `GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `BUILD` or `BINPERSID`: the opcodes that would name,
    /// call or load Python objects, each restricted to what a state dict needs.
    fn object(&mut self, opcode: u8) -> Result<(), String> {
        match opcode {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(module, name));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL without names".to_string());
                };
                self.push(Value::Global(module, name));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.reduce(callable, args)?;
                self.push(value);
            }
            op::BUILD => {
                // The state of an OrderedDict is its `_metadata`; not needed.
                self.pop()?;
            }
            _ => {
                let pid = self.pop()?;
                let storage = persistent_storage(pid)?;
                self.push(storage);
            }
        }
        Ok(())
    }

    /// The value a call to one of the recognised callables builds; any other is refused.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let Value::Global(module, name) = &callable else {
            return Err(format!("cannot call {callable:?}"));
        };
        let Value::Tuple(args) = args else {
            return Err(format!("{module}.{name} called without an argument tuple"));
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2") => self.rebuild_tensor(&args),
            ("torch._utils", "_rebuild_parameter") => match args.first() {
                Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
                _ => Err(format!("unexpected parameter arguments {args:?}")),
            },
            _ => Err(format!(
                "refusing to call `{module}.{name}`: only tensors in dictionaries are read"
            )),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: records the view.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Result<Value, String> {
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
}

/// The little-endian two's-complement integer of `LONG1` (at most eight bytes).
fn twos_complement(bytes: &[u8]) -> Result<i64, String> {
    let n = bytes.len();
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
    Ok(value)
}

/// The storage a `BINPERSID` names: `("storage", torch.<Kind>Storage, key, location, numel)`.
fn persistent_storage(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err(format!("unexpected persistent id {pid:?}"));
    };
    match &items[..] {
        [Value::Str(tag), Value::Global(module, name), Value::Str(key), ..]
            if tag == "storage" && module == "torch" =>
        {
            let kind =
                storage_kind(name).ok_or_else(|| format!("unsupported storage torch.{name}"))?;
            Ok(Value::Storage {
                key: key.clone(),
                kind,
            })
        }
        _ => Err(format!("unexpected persistent id {items:?}")),
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

/// The zip archive of a checkpoint and the folder inside it that holds `data.pkl`.
struct Checkpoint {
    archive: zip::ZipArchive<File>,
    /// The folder of `data.pkl`, with its trailing `/`.
    root: String,
}

impl Checkpoint {
    fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let archive = zip::ZipArchive::new(file).map_err(|_| {
            "not a zip-format PyTorch checkpoint (files written with \
             `_use_new_zipfile_serialization=False` or before PyTorch 1.6 are not read)"
                .to_string()
        })?;
        let root = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or("the archive has no data.pkl")?
            .strip_suffix("data.pkl")
            .unwrap_or_default()
            .to_string();
        Ok(Self { archive, root })
    }

    /// Whether the archive has the entry `<root><name>`.
    fn has(&self, name: &str) -> bool {
        let name = format!("{}{name}", self.root);
        self.archive.file_names().any(|n| n == name)
    }

    /// The bytes of the entry `<root><name>`.
    fn read(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let name = format!("{}{name}", self.root);
        let mut entry = self
            .archive
            .by_name(&name)
            .map_err(|e| format!("{name}: {e}"))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(bytes)
    }
}

/// The tensor `name` that `t` describes, copied out of its storage's bytes.
fn materialise(name: &str, t: &TensorRef, bytes: &[u8]) -> Result<Tensor, String> {
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
    let storage =
        Tensor::f_from_data_size(bytes, &[numel], t.kind).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(storage
        .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
        .map_err(|e| format!("`{name}`: {e}"))?
        .contiguous())
}

/// Reads every tensor of a `torch.save`d state dict (a dict of tensors, possibly nested, as in
/// `{"state_dict": {...}}`), by name, on the CPU.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let mut checkpoint = Checkpoint::open(path)?;
    if checkpoint.has("byteorder") {
        let order = checkpoint.read("byteorder")?;
        if order != b"little" {
            return Err("big-endian checkpoints are not read".to_string());
        }
    }
    let pickle = checkpoint.read("data.pkl")?;
    let mut unpickler = Unpickler::new(&pickle);
    let value = unpickler.run()?;
    let mut named = Vec::new();
    flatten(value, "", &mut named)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(named.len());
    for (name, index) in named {
        let t = &unpickler.tensors[index];
        if !storages.contains_key(&t.key) {
            let bytes = checkpoint.read(&format!("data/{}", t.key))?;
            storages.insert(t.key.clone(), bytes);
        }
        let tensor = materialise(&name, t, &storages[&t.key])?;
        out.push((name, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `os.system("echo")`: what `pickle.dumps` writes for an object
    /// whose `__reduce__` returns `(os.system, ("echo",))`.
    fn os_system_pickle() -> Vec<u8> {
        let mut bytes = vec![op::PROTO, 2, op::GLOBAL];
        bytes.extend_from_slice(b"os\nsystem\n");
        bytes.extend_from_slice(&[op::SHORT_BINUNICODE, 4]);
        bytes.extend_from_slice(b"echo");
        bytes.extend_from_slice(&[op::TUPLE1, op::REDUCE, op::STOP]);
        bytes
    }

    #[test]
    fn a_call_to_anything_but_the_state_dict_callables_is_refused() {
        let err = Unpickler::new(&os_system_pickle()).run().unwrap_err();
        assert_eq!(
            err,
            "refusing to call `os.system`: only tensors in dictionaries are read"
        );
    }

    #[test]
    fn opcodes_outside_a_state_dict_are_refused_by_position() {
        // INST (`i`), the protocol-0 way to build an object, is not interpreted.
        let err = Unpickler::new(&[op::PROTO, 2, b'i']).run().unwrap_err();
        assert_eq!(
            err,
            "pickle opcode 0x69 at byte 2 is not part of a state dict"
        );
    }

    #[test]
    fn long1_reads_little_endian_twos_complement() {
        assert_eq!(twos_complement(&[]), Ok(0));
        assert_eq!(twos_complement(&[0xff]), Ok(-1));
        assert_eq!(twos_complement(&[0x00, 0x80]), Ok(-32768));
        assert_eq!(twos_complement(&[0xff, 0x7f]), Ok(32767));
        assert_eq!(
            twos_complement(&[0x01; 9]),
            Err("integer too large".to_string())
        );
    }

    #[test]
    fn a_dict_of_ints_and_memoised_values_is_built() {
        // {"a": 1, "b": <memo 0>} where memo 0 is the string "x" stored with BINPUT.
        let mut bytes = vec![op::PROTO, 2, op::EMPTY_DICT, op::MARK];
        bytes.extend_from_slice(&[op::SHORT_BINUNICODE, 1, b'a', op::BININT1, 1]);
        bytes.extend_from_slice(&[op::SHORT_BINUNICODE, 1, b'x', op::BINPUT, 0, op::BINGET, 0]);
        bytes.extend_from_slice(&[op::SETITEMS, op::STOP]);
        let Value::Dict(items) = Unpickler::new(&bytes).run().unwrap() else {
            panic!("not a dict");
        };
        let items: Vec<String> = items.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect();
        assert_eq!(items, [r#"Str("a")=Int(1)"#, r#"Str("x")=Str("x")"#]);
    }
}
