//! The memory an isolated reward shares with the host: a file in the worker's private directory
//! that both processes map. The host writes a batch into it once; the worker reads the batch
//! in place and writes the rewards after it.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::MmapMut;
use tch::{Device, Tensor};

use super::protocol::{byte_len, kind_name, kind_of, TensorSlot};

/// A mapped shared file.
pub struct Region {
    file: File,
    map: MmapMut,
}

impl Region {
    /// Creates the file at `path` (owner-only) with `len` bytes and maps it.
    pub fn create(path: &Path, len: usize) -> Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .with_context(|| format!("cannot create the shared region {}", path.display()))?;
        file.set_len(len as u64)?;
        Self::map(file)
    }

    /// Opens and maps the existing file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open the shared region {}", path.display()))?;
        Self::map(file)
    }

    fn map(file: File) -> Result<Self> {
        // SAFETY: the file is private to the host and its worker; the host writes only while
        // the worker waits for a request, and the worker only while the host waits for the
        // answer, so neither reads memory the other is writing. Its length changes only
        // through `grow`, and the worker maps it again before it reads past its old end.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Self { file, map })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Makes it at least `len` bytes long (the host's side).
    pub fn grow(&mut self, len: usize) -> Result<()> {
        if len <= self.len() {
            return Ok(());
        }
        let len = len.max(self.len() * 2);
        self.file.set_len(len as u64)?;
        self.remap()
    }

    /// Maps the file again after the other side grew it (the worker's side).
    pub fn follow(&mut self, len: usize) -> Result<()> {
        if len != self.len() {
            self.remap()?;
        }
        if self.len() < len {
            bail!("the shared region is {} bytes, expected {len}", self.len());
        }
        Ok(())
    }

    fn remap(&mut self) -> Result<()> {
        // SAFETY: as in `map`; the old mapping is dropped when replaced.
        self.map = unsafe { MmapMut::map_mut(&self.file)? };
        Ok(())
    }

    /// A tensor viewing the bytes a slot describes (no copy). It stays valid while the region
    /// is neither grown nor dropped.
    pub fn view(&mut self, slot: &TensorSlot) -> Result<Tensor> {
        let kind =
            kind_of(&slot.kind).with_context(|| format!("unknown element type `{}`", slot.kind))?;
        if slot.shape.iter().any(|&d| d < 0) {
            bail!("negative shape {:?}", slot.shape);
        }
        slot.offset
            .checked_add(byte_len(kind, &slot.shape))
            .filter(|&end| end <= self.len())
            .with_context(|| format!("a tensor at {} lies outside the region", slot.offset))?;
        let ptr = self.map[slot.offset..].as_mut_ptr();
        // SAFETY: the bytes lie inside the mapping (checked above) and are aligned for every
        // element type (offsets are multiples of 64, the mapping is page-aligned).
        Ok(unsafe { Tensor::from_blob(ptr, &slot.shape, &[], kind, Device::Cpu) })
    }

    /// Copies `tensor` (from any device, any layout) into the region at `offset`, the one copy
    /// a batch makes on its way to the worker; returns its slot.
    pub fn write(&mut self, offset: usize, tensor: &Tensor) -> Result<TensorSlot> {
        let kind = kind_name(tensor.kind()).with_context(|| {
            format!(
                "element type {:?} cannot be sent to an isolated reward",
                tensor.kind()
            )
        })?;
        let slot = TensorSlot {
            kind: kind.to_string(),
            shape: tensor.size(),
            offset,
        };
        let mut view = self.view(&slot)?;
        if tensor.numel() == 0 {
            return Ok(slot);
        }
        if tensor.device() == Device::Cpu && tensor.is_contiguous() {
            let bytes = byte_len(tensor.kind(), &slot.shape);
            // SAFETY: the source is a contiguous CPU tensor of exactly `bytes` bytes, and
            // `view` checked that the destination range lies inside the mapping; the two
            // cannot overlap (the tensor is the host's own memory).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    tensor.data_ptr() as *const u8,
                    self.map[offset..].as_mut_ptr(),
                    bytes,
                );
            }
        } else {
            view.copy_(tensor);
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn tensors_of_any_layout_cross_the_region_unchanged() {
        let dir = std::env::temp_dir().join(format!("flowgym-region-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("region");
        let mut host = Region::create(&path, 256).unwrap();
        let mut worker = Region::open(&path).unwrap();
        let images = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        // A transposed view is not contiguous: it goes through libtorch's copy.
        let transposed = images.transpose(2, 3);
        let flags = Tensor::from_slice(&[true, false, true]);
        let bytes = super::super::protocol::align(images.numel() * 4);
        host.grow(3 * bytes).unwrap();
        let a = host.write(0, &images).unwrap();
        let b = host.write(bytes, &transposed).unwrap();
        let c = host.write(2 * bytes, &flags).unwrap();
        assert_eq!(
            (a.kind.as_str(), a.shape.clone()),
            ("f32", vec![2, 3, 4, 5])
        );
        worker.follow(host.len()).unwrap();
        assert!(worker.view(&a).unwrap().equal(&images));
        assert!(worker.view(&b).unwrap().equal(&transposed));
        assert!(worker.view(&c).unwrap().equal(&flags));
        let outside = TensorSlot {
            offset: host.len() - 4,
            ..a
        };
        let err = worker.view(&outside).unwrap_err().to_string();
        assert!(err.ends_with("lies outside the region"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
