//! Tensors in the DLPack layout (`DLManagedTensorVersioned`, DLPack 1.x).
//!
//! DLPack is the exchange format of PyTorch, JAX and CuPy: a data pointer, a device, a dtype,
//! a shape, strides (in elements), a byte offset, and a deleter that the last owner calls. The
//! structs below mirror `dlpack.h` field for field, so a [`ManagedTensor`] can be handed to any
//! DLPack consumer (libtorch's `at::fromDLPackVersioned` among them) without a copy.
//!
//! A plugin that does not link libtorch builds tensors from a `Vec` ([`ManagedTensor::from_vec`])
//! and reads CPU tensors as slices ([`ManagedTensor::as_slice`], [`ManagedTensor::to_vec`]).
//! Views borrow the handle, so none can outlive the memory it owns:
//!
//! ```compile_fail
//! use flowgym_plugin_api::ManagedTensor;
//! let view: &[f32] = {
//!     let tensor = ManagedTensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
//!     tensor.as_slice::<f32>().unwrap()
//! }; // error: `tensor` does not live long enough
//! println!("{view:?}");
//! ```

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use abi_stable::StableAbi;

/// The DLPack ABI version these structs follow.
pub const DLPACK_VERSION: DLPackVersion = DLPackVersion { major: 1, minor: 1 };

/// `DLPackVersion`: the DLPack ABI version a producer filled the struct in with.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLPackVersion {
    /// Incompatible when it differs from the consumer's.
    pub major: u32,
    /// Backwards-compatible additions.
    pub minor: u32,
}

/// `DLDeviceType`: the kind of memory a tensor lives in (a C `enum`, so an `i32`).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DLDeviceType(pub i32);

impl DLDeviceType {
    /// Host memory.
    pub const CPU: Self = Self(1);
    /// CUDA device memory.
    pub const CUDA: Self = Self(2);
    /// Pinned host memory allocated through CUDA.
    pub const CUDA_HOST: Self = Self(3);
    /// Apple Metal.
    pub const METAL: Self = Self(8);
    /// AMD ROCm device memory.
    pub const ROCM: Self = Self(10);
    /// CUDA managed (unified) memory.
    pub const CUDA_MANAGED: Self = Self(13);
}

/// `DLDevice`: device type and ordinal.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DLDevice {
    /// Kind of memory.
    pub device_type: DLDeviceType,
    /// Ordinal of the device (0 for the CPU).
    pub device_id: i32,
}

impl DLDevice {
    /// Host memory.
    pub const CPU: Self = Self {
        device_type: DLDeviceType::CPU,
        device_id: 0,
    };

    /// CUDA device `index`.
    pub const fn cuda(index: i32) -> Self {
        Self {
            device_type: DLDeviceType::CUDA,
            device_id: index,
        }
    }

    /// Whether the CPU can read this memory directly.
    pub fn is_host_accessible(&self) -> bool {
        matches!(
            self.device_type,
            DLDeviceType::CPU | DLDeviceType::CUDA_HOST | DLDeviceType::CUDA_MANAGED
        )
    }
}

impl fmt::Display for DLDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device_type {
            DLDeviceType::CPU => write!(f, "cpu"),
            DLDeviceType::CUDA => write!(f, "cuda:{}", self.device_id),
            DLDeviceType::CUDA_HOST => write!(f, "cuda_host:{}", self.device_id),
            DLDeviceType::METAL => write!(f, "metal:{}", self.device_id),
            DLDeviceType::ROCM => write!(f, "rocm:{}", self.device_id),
            DLDeviceType::CUDA_MANAGED => write!(f, "cuda_managed:{}", self.device_id),
            DLDeviceType(other) => write!(f, "device_type {other}:{}", self.device_id),
        }
    }
}

/// `DLDataType`: type code, bits per lane, lanes.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DLDataType {
    /// `kDLInt` = 0, `kDLUInt` = 1, `kDLFloat` = 2, `kDLBfloat` = 4, `kDLBool` = 6, ...
    pub code: u8,
    /// Bits of one lane.
    pub bits: u8,
    /// Lanes (1 for scalars).
    pub lanes: u16,
}

/// `DLTensor`: the non-owning description of a strided array.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DLTensor {
    /// Start of the allocation (add `byte_offset` for the first element).
    pub data: *mut c_void,
    /// Where the memory lives.
    pub device: DLDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// Element type.
    pub dtype: DLDataType,
    /// `ndim` extents.
    pub shape: *mut i64,
    /// `ndim` strides in elements; null means compact row-major.
    pub strides: *mut i64,
    /// Bytes from `data` to the first element.
    pub byte_offset: u64,
}

/// The deleter of a [`DLManagedTensorVersioned`]: releases everything the producer owns.
pub type DLDeleter = unsafe extern "C" fn(*mut DLManagedTensorVersioned);

/// `DLManagedTensorVersioned`: a [`DLTensor`] with its owner and deleter (DLPack 1.x).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DLManagedTensorVersioned {
    /// DLPack ABI version the producer filled in.
    pub version: DLPackVersion,
    /// Producer's private context (the owner of the memory).
    pub manager_ctx: *mut c_void,
    /// Called exactly once by the last consumer; may be null.
    #[sabi(unsafe_opaque_field)]
    pub deleter: Option<DLDeleter>,
    /// `DLPACK_FLAG_BITMASK_READ_ONLY` (1), `..._IS_COPIED` (2), ...
    pub flags: u64,
    /// The array itself.
    pub dl_tensor: DLTensor,
}

/// Element types a tensor can hold.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean stored in one byte.
    Bool,
}

impl DType {
    /// Floating types take part in arithmetic, noise and gradients; the others pass through.
    pub fn is_floating(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The DLPack code of this type.
    pub fn to_dlpack(self) -> DLDataType {
        let (code, bits) = match self {
            DType::F16 => (2, 16),
            DType::BF16 => (4, 16),
            DType::F32 => (2, 32),
            DType::F64 => (2, 64),
            DType::U8 => (1, 8),
            DType::I8 => (0, 8),
            DType::I16 => (0, 16),
            DType::I32 => (0, 32),
            DType::I64 => (0, 64),
            DType::Bool => (6, 8),
        };
        DLDataType {
            code,
            bits,
            lanes: 1,
        }
    }

    /// The type a DLPack code stands for, if it is one of ours.
    pub fn from_dlpack(dtype: DLDataType) -> Option<Self> {
        if dtype.lanes != 1 {
            return None;
        }
        Some(match (dtype.code, dtype.bits) {
            (2, 16) => DType::F16,
            (4, 16) => DType::BF16,
            (2, 32) => DType::F32,
            (2, 64) => DType::F64,
            (1, 8) => DType::U8,
            (0, 8) => DType::I8,
            (0, 16) => DType::I16,
            (0, 32) => DType::I32,
            (0, 64) => DType::I64,
            (6, 8) => DType::Bool,
            _ => return None,
        })
    }

    /// Lower-case name (`f32`, `bool`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Rust types that can be read from and written to tensors of the matching [`DType`].
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype of this element type.
    const DTYPE: DType;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($ty:ty => $dtype:ident),*) => {$(
        impl sealed::Sealed for $ty {}
        impl Element for $ty {
            const DTYPE: DType = DType::$dtype;
        }
    )*};
}
element!(f32 => F32, f64 => F64, u8 => U8, i8 => I8, i16 => I16, i32 => I32, i64 => I64, bool => Bool);

/// What can go wrong building or reading a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorError {
    /// The element count of the data does not match the shape.
    ShapeMismatch {
        /// Elements given.
        elements: usize,
        /// Shape asked for.
        shape: Vec<usize>,
    },
    /// The tensor holds another element type than the one asked for.
    DType {
        /// The tensor's dtype (or its raw DLPack code when unknown).
        found: String,
        /// The dtype asked for.
        expected: DType,
    },
    /// The memory is not readable from the CPU.
    NotOnHost(DLDevice),
    /// A slice view needs compact row-major memory.
    NotContiguous,
    /// The producer filled in a DLPack major version this crate does not read.
    Version(DLPackVersion),
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::ShapeMismatch { elements, shape } => write!(
                f,
                "{elements} elements do not fill a tensor of shape {shape:?}"
            ),
            TensorError::DType { found, expected } => {
                write!(f, "tensor holds {found}, expected {expected}")
            }
            TensorError::NotOnHost(device) => write!(
                f,
                "tensor lives on {device}; move it to the CPU before reading it"
            ),
            TensorError::NotContiguous => write!(f, "tensor is not contiguous"),
            TensorError::Version(v) => write!(
                f,
                "DLPack version {}.{} is not supported (this crate reads {}.x)",
                v.major, v.minor, DLPACK_VERSION.major
            ),
        }
    }
}

impl std::error::Error for TensorError {}

/// An owning handle to a `DLManagedTensorVersioned`: dropping it calls the producer's deleter.
///
/// It is the one tensor type that crosses the plugin boundary. It is `Send`: DLPack memory is
/// owned by its producer and released only through the deleter, on whichever thread drops it.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct ManagedTensor {
    raw: NonNull<DLManagedTensorVersioned>,
}

// SAFETY: the handle is the unique owner of the DLPack struct; producers in this project
// (Vec-backed tensors, libtorch) free from any thread.
unsafe impl Send for ManagedTensor {}
// SAFETY: shared access only reads the immutable description and the data.
unsafe impl Sync for ManagedTensor {}

struct VecOwner<T> {
    // Kept alive until the deleter runs; read through the DLTensor's pointer.
    _data: Vec<T>,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

unsafe extern "C" fn delete_vec_owner<T>(managed: *mut DLManagedTensorVersioned) {
    // SAFETY: `from_vec` created both boxes and handed ownership to this deleter.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx as *mut VecOwner<T>));
    }
}

impl ManagedTensor {
    /// A compact row-major CPU tensor that owns `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self, TensorError> {
        let elements: usize = shape.iter().product();
        if elements != data.len() {
            return Err(TensorError::ShapeMismatch {
                elements: data.len(),
                shape: shape.to_vec(),
            });
        }
        let shape_i64: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let strides = contiguous_strides(&shape_i64);
        let mut owner = Box::new(VecOwner {
            _data: data,
            shape: shape_i64,
            strides,
        });
        let data_ptr = owner._data.as_mut_ptr() as *mut c_void;
        let shape_ptr = owner.shape.as_mut_ptr();
        let strides_ptr = owner.strides.as_mut_ptr();
        let managed = Box::new(DLManagedTensorVersioned {
            version: DLPACK_VERSION,
            manager_ctx: Box::into_raw(owner) as *mut c_void,
            deleter: Some(delete_vec_owner::<T>),
            flags: 0,
            dl_tensor: DLTensor {
                data: data_ptr,
                device: DLDevice::CPU,
                ndim: shape.len() as i32,
                dtype: T::DTYPE.to_dlpack(),
                shape: shape_ptr,
                strides: strides_ptr,
                byte_offset: 0,
            },
        });
        Ok(Self {
            raw: NonNull::from(Box::leak(managed)),
        })
    }

    /// A CPU scalar-per-sample vector of shape `[n]`.
    pub fn from_slice<T: Element>(values: &[T]) -> Self {
        Self::from_vec(values.to_vec(), &[values.len()]).expect("a vector fills its own length")
    }

    /// Takes ownership of a DLPack struct produced elsewhere.
    ///
    /// # Safety
    /// `raw` must point to a valid `DLManagedTensorVersioned` whose ownership passes to the
    /// handle: nothing else may call its deleter.
    pub unsafe fn from_raw(raw: NonNull<DLManagedTensorVersioned>) -> Result<Self, TensorError> {
        let handle = Self { raw };
        let version = handle.managed().version;
        if version.major != DLPACK_VERSION.major {
            // DLPack: a consumer that cannot read the major version still calls the deleter.
            return Err(TensorError::Version(version));
        }
        Ok(handle)
    }

    /// Gives up ownership; the caller must eventually call the deleter (or `from_raw` again).
    pub fn into_raw(self) -> NonNull<DLManagedTensorVersioned> {
        let raw = self.raw;
        std::mem::forget(self);
        raw
    }

    fn managed(&self) -> &DLManagedTensorVersioned {
        // SAFETY: the handle owns a valid struct until it is dropped.
        unsafe { self.raw.as_ref() }
    }

    /// The raw DLPack description (for consumers such as libtorch).
    pub fn dl_tensor(&self) -> &DLTensor {
        &self.managed().dl_tensor
    }

    /// Extents of each dimension.
    pub fn shape(&self) -> &[i64] {
        let t = self.dl_tensor();
        if t.ndim == 0 {
            return &[];
        }
        // SAFETY: DLPack guarantees `ndim` readable extents.
        unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) }
    }

    /// Strides in elements (compact row-major when the producer gave none).
    pub fn strides(&self) -> Vec<i64> {
        let t = self.dl_tensor();
        if t.strides.is_null() || t.ndim == 0 {
            return contiguous_strides(self.shape());
        }
        // SAFETY: DLPack guarantees `ndim` readable strides when the pointer is not null.
        unsafe { std::slice::from_raw_parts(t.strides, t.ndim as usize) }.to_vec()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().map(|&d| d.max(0) as usize).product()
    }

    /// Length of dimension 0 (1 for a scalar).
    pub fn len(&self) -> usize {
        self.shape().first().map_or(1, |&d| d.max(0) as usize)
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.numel() == 0
    }

    /// The element type, or `None` for a DLPack type this crate does not name.
    pub fn dtype(&self) -> Option<DType> {
        DType::from_dlpack(self.dl_tensor().dtype)
    }

    fn dtype_name(&self) -> String {
        match self.dtype() {
            Some(dtype) => dtype.to_string(),
            None => format!("{:?}", self.dl_tensor().dtype),
        }
    }

    /// Where the memory lives.
    pub fn device(&self) -> DLDevice {
        self.dl_tensor().device
    }

    /// Whether the elements are compact and row-major.
    pub fn is_contiguous(&self) -> bool {
        let shape = self.shape();
        let strides = self.strides();
        let mut expected = 1i64;
        for (&extent, &stride) in shape.iter().zip(&strides).rev() {
            if extent != 1 && stride != expected {
                return false;
            }
            expected *= extent;
        }
        true
    }

    fn check_readable<T: Element>(&self) -> Result<(), TensorError> {
        if self.dtype() != Some(T::DTYPE) {
            return Err(TensorError::DType {
                found: self.dtype_name(),
                expected: T::DTYPE,
            });
        }
        if !self.device().is_host_accessible() {
            return Err(TensorError::NotOnHost(self.device()));
        }
        Ok(())
    }

    fn first_element<T: Element>(&self) -> *const T {
        let t = self.dl_tensor();
        // SAFETY: DLPack: the first element lives `byte_offset` bytes after `data`.
        unsafe { (t.data as *const u8).add(t.byte_offset as usize) as *const T }
    }

    /// Borrows the elements of a contiguous CPU tensor.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], TensorError> {
        self.check_readable::<T>()?;
        if !self.is_contiguous() {
            return Err(TensorError::NotContiguous);
        }
        let n = self.numel();
        if n == 0 {
            return Ok(&[]);
        }
        // SAFETY: dtype, device and contiguity are checked; the borrow ties the slice to `self`.
        Ok(unsafe { std::slice::from_raw_parts(self.first_element::<T>(), n) })
    }

    /// Copies the elements of a CPU tensor out in row-major order, following its strides.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if let Ok(slice) = self.as_slice::<T>() {
            return Ok(slice.to_vec());
        }
        self.check_readable::<T>()?;
        let shape = self.shape();
        let strides = self.strides();
        let n = self.numel();
        let first = self.first_element::<T>();
        let mut out = Vec::with_capacity(n);
        let mut index = vec![0i64; shape.len()];
        for _ in 0..n {
            let offset: i64 = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
            // SAFETY: every index is inside the shape, so the offset is inside the allocation.
            out.push(unsafe { *first.offset(offset as isize) });
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

impl Drop for ManagedTensor {
    fn drop(&mut self) {
        if let Some(deleter) = self.managed().deleter {
            // SAFETY: the handle is the unique owner; DLPack says the owner calls the deleter once.
            unsafe { deleter(self.raw.as_ptr()) }
        }
    }
}

impl fmt::Debug for ManagedTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedTensor")
            .field("shape", &self.shape())
            .field("dtype", &self.dtype_name())
            .field("device", &self.device().to_string())
            .finish()
    }
}

/// Row-major strides (in elements) of a compact tensor of this shape.
pub fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1].max(1);
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn vec_tensor_describes_its_data() {
        let t = ManagedTensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.strides(), vec![3, 1]);
        assert_eq!(t.dtype(), Some(DType::F32));
        assert_eq!(t.device(), DLDevice::CPU);
        assert_eq!(t.len(), 2);
        assert!(t.is_contiguous());
        assert_eq!(t.as_slice::<f32>().unwrap()[4], 5.0);
        assert_eq!(
            t.as_slice::<f64>().unwrap_err().to_string(),
            "tensor holds f32, expected f64"
        );
    }

    #[test]
    fn wrong_element_count_is_refused() {
        let err = ManagedTensor::from_vec(vec![1i64, 2, 3], &[2, 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "3 elements do not fill a tensor of shape [2, 2]"
        );
    }

    static DELETED: AtomicUsize = AtomicUsize::new(0);
    static mut STRIDED_SHAPE: [i64; 2] = [2, 2];
    static mut STRIDED_STRIDES: [i64; 2] = [1, 2];

    unsafe extern "C" fn count_delete(managed: *mut DLManagedTensorVersioned) {
        DELETED.fetch_add(1, Ordering::SeqCst);
        unsafe { drop(Box::from_raw(managed)) };
    }

    #[test]
    fn strided_tensor_is_read_through_its_strides_and_deleted_once() {
        // A column-major 2x2 view of [1, 2, 3, 4]: row-major reading gives 1, 3, 2, 4.
        let data: &'static mut [f64; 4] = Box::leak(Box::new([1.0, 2.0, 3.0, 4.0]));
        let managed = Box::new(DLManagedTensorVersioned {
            version: DLPACK_VERSION,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(count_delete),
            flags: 0,
            dl_tensor: DLTensor {
                data: data.as_mut_ptr() as *mut c_void,
                device: DLDevice::CPU,
                ndim: 2,
                dtype: DType::F64.to_dlpack(),
                shape: std::ptr::addr_of_mut!(STRIDED_SHAPE) as *mut i64,
                strides: std::ptr::addr_of_mut!(STRIDED_STRIDES) as *mut i64,
                byte_offset: 0,
            },
        });
        let t = unsafe { ManagedTensor::from_raw(NonNull::from(Box::leak(managed))) }.unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(t.as_slice::<f64>().unwrap_err(), TensorError::NotContiguous);
        assert_eq!(t.to_vec::<f64>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
        let before = DELETED.load(Ordering::SeqCst);
        drop(t);
        assert_eq!(DELETED.load(Ordering::SeqCst), before + 1);
    }

    #[test]
    fn dtype_codes_round_trip() {
        for dtype in [
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
            DType::U8,
            DType::I8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::Bool,
        ] {
            assert_eq!(DType::from_dlpack(dtype.to_dlpack()), Some(dtype));
        }
    }
}
