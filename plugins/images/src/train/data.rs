//! Image datasets for training: a safetensors file with an `images` tensor `[N, C, H, W]`
//! (`uint8` 0..=255, or floating in `[0, 1]`) and optional integer `labels` `[N]`; or a CSV
//! file (optionally gzipped, `.csv.gz`) of one image per row, `side * side` grey pixel values
//! then the label, as scikit-learn ships its 8 x 8 digits (values 0..=16, scaled by the largest
//! value in the file).

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

/// A dataset that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file is missing or unreadable.
    #[error("cannot read the dataset {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is readable but not a dataset of the accepted forms.
    #[error("the dataset {path} is malformed: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No images.
    #[error("the dataset {0} holds no images")]
    Empty(PathBuf),
}

/// Images and their labels, on the CPU.
#[derive(Debug)]
pub struct ImageData {
    /// `[N, C, H, W]` float32 in `[0, 1]`.
    pub images: Tensor,
    /// `[N]` int64 class labels, when the file has them.
    pub labels: Option<Tensor>,
}

impl ImageData {
    /// Reads a dataset by its extension (`.safetensors`, `.csv`, `.csv.gz`).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let read = |message: String| DataError::Read {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(read("no such file".to_string()));
        }
        let name = path.to_string_lossy().to_lowercase();
        let data = if name.ends_with(".safetensors") {
            from_safetensors(path)?
        } else if name.ends_with(".csv") || name.ends_with(".csv.gz") {
            let mut text = String::new();
            let file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
            if name.ends_with(".gz") {
                flate2::read::GzDecoder::new(file).read_to_string(&mut text)
            } else {
                std::io::BufReader::new(file).read_to_string(&mut text)
            }
            .map_err(|e| read(e.to_string()))?;
            from_csv(path, &text)?
        } else {
            return Err(read(
                "unknown format; accepted: .safetensors (an `images` tensor [N, C, H, W], \
                 optional `labels` [N]), .csv or .csv.gz (one image per row: side x side \
                 pixel values, then the label)"
                    .to_string(),
            ));
        };
        if data.is_empty() {
            return Err(DataError::Empty(path.to_path_buf()));
        }
        Ok(data)
    }

    /// Number of images.
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]`.
    pub fn shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }
}

fn malformed(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn from_safetensors(path: &Path) -> Result<ImageData, DataError> {
    let tensors = crate::safetensors_file::read(path).map_err(|message| DataError::Read {
        path: path.to_path_buf(),
        message,
    })?;
    let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let images = find("images").ok_or_else(|| {
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        malformed(
            path,
            format!("no `images` tensor (it has: {})", names.join(", ")),
        )
    })?;
    let size = images.size();
    if size.len() != 4 {
        return Err(malformed(
            path,
            format!("`images` has shape {size:?}; expected [N, C, H, W]"),
        ));
    }
    if size[0] == 0 {
        return Err(DataError::Empty(path.to_path_buf()));
    }
    let images = match images.kind() {
        Kind::Uint8 => images.to_kind(Kind::Float) / 255.0,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => images.to_kind(Kind::Float),
        other => {
            return Err(malformed(
                path,
                format!("`images` is {other:?}; expected uint8 (0..=255) or floating ([0, 1])"),
            ))
        }
    };
    let (low, high) = (
        images.min().double_value(&[]),
        images.max().double_value(&[]),
    );
    if !(low >= 0.0 && high <= 1.0) {
        return Err(malformed(
            path,
            format!("floating `images` range over [{low}, {high}]; expected [0, 1]"),
        ));
    }
    let labels = match find("labels") {
        None => None,
        Some(labels) if labels.size() == [size[0]] && !labels.is_floating_point() => {
            Some(labels.to_kind(Kind::Int64))
        }
        Some(labels) => {
            return Err(malformed(
                path,
                format!(
                    "`labels` has shape {:?} and kind {:?}; expected integers [{}]",
                    labels.size(),
                    labels.kind(),
                    size[0]
                ),
            ))
        }
    };
    Ok(ImageData { images, labels })
}

fn from_csv(path: &Path, text: &str) -> Result<ImageData, DataError> {
    let mut pixels: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut width = None;
    for (row, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let values: Result<Vec<f32>, _> = line.split(',').map(|v| v.trim().parse()).collect();
        let values = values.map_err(|e| malformed(path, format!("line {}: {e}", row + 1)))?;
        if *width.get_or_insert(values.len()) != values.len() {
            return Err(malformed(
                path,
                format!(
                    "line {} has {} values; the first line has {}",
                    row + 1,
                    values.len(),
                    width.unwrap_or(0)
                ),
            ));
        }
        let (label, image) = values.split_last().expect("at least one value");
        if label.fract() != 0.0 || *label < 0.0 {
            return Err(malformed(
                path,
                format!("line {}: the label {label} is not a class index", row + 1),
            ));
        }
        labels.push(*label as i64);
        pixels.extend_from_slice(image);
    }
    let n = labels.len() as i64;
    let per_image = width.unwrap_or(1) as i64 - 1;
    let side = (per_image as f64).sqrt().round() as i64;
    if n > 0 && (side * side != per_image || side == 0) {
        return Err(malformed(
            path,
            format!("{per_image} pixels per row do not make a square image"),
        ));
    }
    let max = pixels.iter().copied().fold(0.0f32, f32::max);
    if pixels.iter().any(|p| *p < 0.0) {
        return Err(malformed(path, "negative pixel values"));
    }
    let scale = if max > 0.0 { max } else { 1.0 };
    let images = Tensor::from_slice(&pixels).to_kind(Kind::Float) / f64::from(scale);
    Ok(ImageData {
        images: images
            .reshape([n, 1, side.max(1), side.max(1)])
            .to_device(Device::Cpu),
        labels: Some(Tensor::from_slice(&labels)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_square_images_and_a_label() {
        let data = from_csv(Path::new("d.csv"), "0,16,8,4,3\n16,0,0,0,7\n").unwrap();
        assert_eq!(data.shape(), [1, 2, 2]);
        assert_eq!(data.len(), 2);
        let first = Vec::<f32>::try_from(data.images.get(0).reshape([-1])).unwrap();
        assert_eq!(first, [0.0, 1.0, 0.5, 0.25]);
        let labels = Vec::<i64>::try_from(data.labels.unwrap()).unwrap();
        assert_eq!(labels, [3, 7]);
    }

    #[test]
    fn malformed_csv_is_named() {
        let err = from_csv(Path::new("d.csv"), "0,1,2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("square"), "{err}");
        let err = from_csv(Path::new("d.csv"), "0,1,2,3,4\n1,2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2 has 2 values"), "{err}");
        let err = from_csv(Path::new("d.csv"), "0,1,x,3,4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
