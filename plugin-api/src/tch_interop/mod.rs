//! Zero-copy conversions between [`ManagedTensor`] and `tch::Tensor` (feature `tch`).
//!
//! Both directions go through libtorch's own DLPack converter, so ownership is exact:
//! - [`ManagedTensor::from_tch`] exports a tensor; the handle holds a reference to its storage,
//!   which stays valid after the original `tch::Tensor` is dropped.
//! - [`ManagedTensor::into_tch`] imports a handle; the DLPack deleter runs when the last
//!   `tch::Tensor` sharing that memory (views included) is dropped, never before.
//!
//! A plugin that links libtorch shares the host's copy, so it must be built against the same
//! release ([`LIBTORCH_VERSION`](crate::LIBTORCH_VERSION) records it).

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use tch::{Device, Kind, Tensor};

use crate::data::Batch;
use crate::error::{PluginError, PluginResult};
use crate::tensor::{DLDevice, DLDeviceType, DLManagedTensorVersioned, DType, ManagedTensor};

extern "C" {
    fn flowgym_tensor_from_dlpack(
        src: *mut DLManagedTensorVersioned,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn flowgym_tensor_to_dlpack(
        tensor: *const c_void,
        error: *mut *mut c_char,
    ) -> *mut DLManagedTensorVersioned;
    fn flowgym_free_message(message: *mut c_char);
}

fn take_message(message: *mut c_char) -> String {
    if message.is_null() {
        return "unknown libtorch error".to_string();
    }
    // SAFETY: the bridge wrote a NUL-terminated copy that we own.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { flowgym_free_message(message) };
    text
}

impl ManagedTensor {
    /// Exports `tensor` without copying: the handle keeps its storage alive.
    pub fn from_tch(tensor: &Tensor) -> PluginResult<Self> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `as_ptr` is a valid `at::Tensor*` for the duration of the call.
        let raw = unsafe { flowgym_tensor_to_dlpack(tensor.as_ptr() as *const c_void, &mut error) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            PluginError::new(format!(
                "exporting a tensor to DLPack: {}",
                take_message(error)
            ))
        })?;
        // SAFETY: libtorch hands over a fresh DLPack struct that we now own.
        Ok(unsafe { ManagedTensor::from_raw(raw) }?)
    }

    /// Imports the handle without copying: the returned tensor (and every view of it) owns the
    /// DLPack memory, whose deleter runs when the last of them is dropped.
    pub fn into_tch(self) -> PluginResult<Tensor> {
        let raw = self.into_raw();
        let mut error = std::ptr::null_mut();
        // SAFETY: ownership of `raw` passes to libtorch.
        let tensor = unsafe { flowgym_tensor_from_dlpack(raw.as_ptr(), &mut error) };
        if tensor.is_null() {
            return Err(PluginError::new(format!(
                "importing a DLPack tensor into libtorch: {}",
                take_message(error)
            )));
        }
        // SAFETY: the bridge returns an `at::Tensor*` allocated with `new`, which tch frees.
        Ok(unsafe { Tensor::from_ptr(tensor as *mut torch_sys::C_tensor) })
    }
}

/// The tch kind of a [`DType`].
pub fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::U8 => Kind::Uint8,
        DType::I8 => Kind::Int8,
        DType::I16 => Kind::Int16,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::Bool => Kind::Bool,
    }
}

/// The [`DType`] of a tch kind, if it is one of ours.
pub fn dtype_of(kind: Kind) -> Option<DType> {
    Some(match kind {
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Uint8 => DType::U8,
        Kind::Int8 => DType::I8,
        Kind::Int16 => DType::I16,
        Kind::Int => DType::I32,
        Kind::Int64 => DType::I64,
        Kind::Bool => DType::Bool,
        _ => return None,
    })
}

/// The tch device of a DLPack device.
pub fn device_of(device: DLDevice) -> PluginResult<Device> {
    match device.device_type {
        DLDeviceType::CPU => Ok(Device::Cpu),
        DLDeviceType::CUDA => Ok(Device::Cuda(device.device_id as usize)),
        _ => Err(PluginError::new(format!(
            "libtorch cannot compute on {device}"
        ))),
    }
}

/// The DLPack device of a tch device.
pub fn dl_device_of(device: Device) -> PluginResult<DLDevice> {
    match device {
        Device::Cpu => Ok(DLDevice::CPU),
        Device::Cuda(index) => Ok(DLDevice::cuda(index as i32)),
        other => Err(PluginError::new(format!(
            "{other:?} has no DLPack device here"
        ))),
    }
}

impl Batch {
    /// Exports `(name, tensor)` leaves without copying.
    pub fn from_tch<'a>(
        data_type: &str,
        leaves: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    ) -> PluginResult<Self> {
        let leaves = leaves
            .into_iter()
            .map(|(name, tensor)| Ok((name.to_string(), ManagedTensor::from_tch(tensor)?)))
            .collect::<PluginResult<Vec<_>>>()?;
        Ok(Batch::new(data_type, leaves))
    }

    /// Imports every leaf without copying, in order.
    pub fn into_tch(self) -> PluginResult<Vec<(String, Tensor)>> {
        self.leaves
            .into_iter()
            .map(|leaf| Ok((leaf.name.into_string(), leaf.tensor.into_tch()?)))
            .collect()
    }

    /// Imports the leaf called `name` without copying.
    pub fn take_tch(&mut self, name: &str) -> PluginResult<Tensor> {
        self.take(name)?.into_tch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn tch_round_trip_shares_memory_and_keeps_dtype() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        let handle = ManagedTensor::from_tch(&t).unwrap();
        assert_eq!(handle.shape(), &[2, 3]);
        assert_eq!(handle.dtype(), Some(DType::F32));
        assert_eq!(
            handle.as_slice::<f32>().unwrap(),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let back = handle.into_tch().unwrap();
        assert_eq!(back.data_ptr(), t.data_ptr(), "no copy in either direction");
        assert_eq!(back.size(), vec![2, 3]);
    }

    #[test]
    fn exported_handle_outlives_the_tch_tensor() {
        let t = Tensor::arange(5, (Kind::Double, Device::Cpu)) * 2.0;
        let strided = t.slice(0, 0, 5, 2); // [0, 4, 8] with stride 2
        let handle = ManagedTensor::from_tch(&strided).unwrap();
        drop(strided);
        drop(t);
        assert_eq!(handle.to_vec::<f64>().unwrap(), vec![0.0, 4.0, 8.0]);
    }

    static DELETED: AtomicUsize = AtomicUsize::new(0);

    struct Owner {
        data: Vec<f32>,
        shape: [i64; 2],
        strides: [i64; 2],
    }

    unsafe extern "C" fn counting_delete(managed: *mut DLManagedTensorVersioned) {
        DELETED.fetch_add(1, Ordering::SeqCst);
        let managed = unsafe { Box::from_raw(managed) };
        drop(unsafe { Box::from_raw(managed.manager_ctx as *mut Owner) });
    }

    /// A 3x4 tensor 0..12 whose deleter counts its calls.
    fn counted_tensor() -> ManagedTensor {
        let mut owner = Box::new(Owner {
            data: (0..12).map(|v| v as f32).collect(),
            shape: [3, 4],
            strides: [4, 1],
        });
        let dl_tensor = crate::tensor::DLTensor {
            data: owner.data.as_mut_ptr() as *mut c_void,
            device: DLDevice::CPU,
            ndim: 2,
            dtype: DType::F32.to_dlpack(),
            shape: owner.shape.as_mut_ptr(),
            strides: owner.strides.as_mut_ptr(),
            byte_offset: 0,
        };
        let managed = Box::new(DLManagedTensorVersioned {
            version: crate::tensor::DLPACK_VERSION,
            manager_ctx: Box::into_raw(owner) as *mut c_void,
            deleter: Some(counting_delete),
            flags: 0,
            dl_tensor,
        });
        unsafe { ManagedTensor::from_raw(NonNull::from(Box::leak(managed))) }.unwrap()
    }

    #[test]
    fn views_keep_the_dlpack_memory_alive_until_the_last_one_is_dropped() {
        let before = DELETED.load(Ordering::SeqCst);
        let tensor = counted_tensor().into_tch().unwrap();
        let row = tensor.select(0, 2); // a view sharing the memory
        drop(tensor);
        assert_eq!(
            DELETED.load(Ordering::SeqCst),
            before,
            "a view still uses the memory"
        );
        assert_eq!(
            Vec::<f32>::try_from(&row).unwrap(),
            vec![8.0, 9.0, 10.0, 11.0]
        );
        drop(row);
        assert_eq!(
            DELETED.load(Ordering::SeqCst),
            before + 1,
            "deleted exactly once"
        );
    }

    #[test]
    fn batches_convert_leaf_by_leaf() {
        let x = Tensor::from_slice(&[0.5f32, -1.0]).reshape([2, 1]);
        let mask = Tensor::from_slice(&[true, false]);
        let batch = Batch::from_tch("1d", [("x", &x), ("mask", &mask)]).unwrap();
        assert_eq!(batch.leaf_names(), vec!["x", "mask"]);
        let leaves = batch.into_tch().unwrap();
        assert_eq!(leaves[1].1.kind(), Kind::Bool);
        assert_eq!(leaves[0].1.data_ptr(), x.data_ptr());
    }
}
