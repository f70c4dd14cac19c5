//! JPEG sizes of images, computed the way the Python reference computes them.
//!
//! The reference users compare against:
//!
//! ```python
//! u8 = (x * 255).round().clip(0, 255).astype(np.uint8)     # x: float32 [3, H, W] in [0, 1]
//! buf = io.BytesIO()
//! PIL.Image.fromarray(u8.transpose(1, 2, 0)).save(buf, format="JPEG", quality=q, optimize=True)
//! bits_per_pixel = len(buf.getvalue()) * 8 / (H * W)
//! ```
//!
//! # Encoder
//!
//! The JPEG is written by the pure-Rust [`jpeg_encoder`] crate, set up like Pillow's defaults
//! (libjpeg-turbo underneath): baseline, libjpeg's Annex K quantization tables scaled by
//! quality with libjpeg's formula, 4:2:0 chroma subsampling at every quality by libjpeg's box
//! average ([`ChromaSubsamplingMethod::Average`], its `h2v2_downsample` with the alternating
//! bias), the islow integer DCT, and Huffman tables optimized for each image (`optimize=True`).
//! Its sizes stay within 5% of Pillow's on the committed fixtures (checked by the tests in
//! `tests/`; measured ratios in the crate documentation).
//!
//! Why this encoder: it is plain Rust with no C build, so the reward's plugin file builds in
//! seconds on any platform and can be distributed on its own, which is the point of a reward
//! without libtorch. Bindings to libjpeg-turbo (`turbojpeg`), the library inside Pillow, would
//! give Pillow's bytes but need a C toolchain and CMake to build the library, or a system copy
//! at run time; `mozjpeg` needs the same and its defaults differ from libjpeg-turbo's anyway
//! (trellis quantization, other tables, progressive), so it would be both harder to build and
//! further from the reference. It needs Rust 1.87: version 0.7 is the first with the box-average
//! chroma subsampling, without which sizes run up to 13% over Pillow's.
//!
//! # One difference of layout, accounted for
//!
//! With optimized Huffman tables `jpeg_encoder` writes one scan per component (three scan
//! headers of 10 bytes) where libjpeg writes one interleaved scan (one header of 14 bytes). The
//! markers, tables and entropy-coded data are otherwise the same size to within a few bytes, but
//! those 16 bytes are 5% of the ~300-byte file of a flat 32 x 32 image, which is exactly where
//! the compression reward drives samples. [`jpeg_bytes`] therefore walks the file it wrote and
//! counts the scan headers as one interleaved header would be counted: the size of the file in
//! libjpeg's layout. What remains is the byte alignment at the end of each scan and the order in
//! which DC differences are coded (raster order per component instead of MCU order), a few bytes
//! either way.

use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};

/// Converts one value in `[0, 1]` to a byte exactly like the reference
/// `(x * 255).round().clip(0, 255)` on float32 numpy arrays (or torch tensors): the product is
/// taken in `f32`, and rounding is half to even (numpy's and torch's `round`), not half away
/// from zero (Rust's [`f32::round`]).
pub fn to_u8(value: f32) -> u8 {
    let scaled = (value * 255.0).round_ties_even();
    // After the clamp the value is an integer in [0, 255], so the cast is exact; NaN casts to 0
    // (the reward rejects NaN before it gets here).
    scaled.clamp(0.0, 255.0) as u8
}

/// The size in bytes of the JPEG of an RGB image given as interleaved bytes (`[H, W, 3]`, row
/// major), encoded at `quality` (1 to 100) with Pillow's settings (see the module docs).
pub fn jpeg_bytes(rgb: &[u8], width: usize, height: usize, quality: u8) -> Result<usize, String> {
    let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(format!(
                "a JPEG must be 1 to 65535 pixels on each side, got {height} x {width} (H x W)"
            ))
        }
    };
    if rgb.len() != width * height * 3 {
        return Err(format!(
            "an RGB image of {height} x {width} pixels has {} bytes, got {}",
            width * height * 3,
            rgb.len()
        ));
    }
    if !(1..=100).contains(&quality) {
        return Err(format!("JPEG quality must be from 1 to 100, got {quality}"));
    }
    let mut out = Vec::with_capacity(width * height / 2 + 1024);
    let mut encoder = Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(SamplingFactor::F_2_2);
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    encoder.set_optimized_huffman_tables(true);
    encoder
        .encode(rgb, w, h, ColorType::Rgb)
        .map_err(|err| format!("JPEG encoding failed: {err}"))?;
    in_interleaved_layout(&out)
}

/// The scans of a baseline JPEG file: `(components in the scan, bytes of its header with the
/// marker)`, in order.
fn scans(file: &[u8]) -> Result<Vec<(u8, usize)>, String> {
    let malformed =
        |what: &str, at: usize| format!("the encoder wrote a malformed JPEG: {what} at byte {at}");
    if file.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err(malformed("no start-of-image marker", 0));
    }
    let mut scans = Vec::new();
    let mut at = 2;
    loop {
        if file.get(at..at + 2) == Some(&[0xFF, 0xD9][..]) {
            return Ok(scans);
        }
        let (marker, length) = match file.get(at..at + 4) {
            Some(&[0xFF, marker, high, low]) => {
                (marker, usize::from(u16::from_be_bytes([high, low])))
            }
            _ => return Err(malformed("no marker", at)),
        };
        let end = at + 2 + length;
        if length < 2 || end > file.len() {
            return Err(malformed("a segment running past the end", at));
        }
        if marker != 0xDA {
            at = end;
            continue;
        }
        scans.push((file[at + 4], 2 + length));
        // Entropy-coded data runs to the next marker: 0xFF not followed by a stuffed 0x00 or a
        // restart marker.
        at = end;
        loop {
            match file.get(at..at + 2) {
                Some(&[0xFF, next]) if next != 0x00 && !(0xD0..=0xD7).contains(&next) => break,
                Some(_) => at += 1,
                None => return Err(malformed("no end-of-image marker", at)),
            }
        }
    }
}

/// The size of `file` with its per-component scans counted as the one interleaved scan libjpeg
/// writes (see the module docs).
fn in_interleaved_layout(file: &[u8]) -> Result<usize, String> {
    let scans = scans(file)?;
    let components: usize = scans.iter().map(|&(n, _)| usize::from(n)).sum();
    if scans.len() <= 1 || scans.iter().any(|&(n, _)| n != 1) {
        return Ok(file.len());
    }
    let headers: usize = scans.iter().map(|&(_, bytes)| bytes).sum();
    // Marker, length, component count, two bytes per component, spectral selection and
    // approximation.
    let interleaved = 2 + 2 + 1 + 2 * components + 3;
    Ok(file.len() - headers + interleaved)
}

/// JPEG size in bits per pixel: `bytes * 8 / (H * W)`.
pub fn bits_per_pixel(rgb: &[u8], width: usize, height: usize, quality: u8) -> Result<f64, String> {
    let bytes = jpeg_bytes(rgb, width, height, quality)?;
    Ok(bytes as f64 * 8.0 / (width * height) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_after_an_f32_product() {
        assert_eq!(to_u8(0.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.5), 128); // 127.5 -> 128 (even)
        assert_eq!(to_u8(-0.0), 0);
        assert_eq!(to_u8(1.5), 255);
        assert_eq!(to_u8(-1.0), 0);
    }

    #[test]
    fn refuses_bad_dimensions_and_quality() {
        assert!(jpeg_bytes(&[], 0, 4, 85)
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(jpeg_bytes(&[0; 11], 2, 2, 85)
            .unwrap_err()
            .contains("has 12 bytes, got 11"));
        assert!(jpeg_bytes(&[0; 12], 2, 2, 0)
            .unwrap_err()
            .contains("from 1 to 100"));
        assert!(jpeg_bytes(&[0; 12], 2, 2, 85).unwrap() > 100);
    }

    #[test]
    fn scan_headers_count_as_one_interleaved_scan() {
        // A flat 32 x 32 image: Pillow writes 287 bytes, headers and one interleaved scan.
        let rgb = [128u8; 32 * 32 * 3];
        let mut file = Vec::new();
        let mut encoder = Encoder::new(&mut file, 30);
        encoder.set_sampling_factor(SamplingFactor::F_2_2);
        encoder.set_optimized_huffman_tables(true);
        encoder.encode(&rgb, 32, 32, ColorType::Rgb).unwrap();
        assert_eq!(scans(&file).unwrap(), vec![(1, 10), (1, 10), (1, 10)]);
        assert_eq!(in_interleaved_layout(&file).unwrap(), file.len() - 16);
        assert_eq!(jpeg_bytes(&rgb, 32, 32, 30).unwrap(), 287);
        // Without optimized tables the encoder interleaves itself: nothing to account for.
        let mut plain = Vec::new();
        let mut encoder = Encoder::new(&mut plain, 30);
        encoder.set_sampling_factor(SamplingFactor::F_2_2);
        encoder.encode(&rgb, 32, 32, ColorType::Rgb).unwrap();
        assert_eq!(scans(&plain).unwrap(), vec![(3, 14)]);
        assert_eq!(in_interleaved_layout(&plain).unwrap(), plain.len());
        // Truncated files are reported, not miscounted.
        assert!(scans(&file[..file.len() - 2])
            .unwrap_err()
            .contains("no end-of-image"));
        assert!(scans(&file[2..]).unwrap_err().contains("no start-of-image"));
    }
}
