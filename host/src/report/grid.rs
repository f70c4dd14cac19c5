//! PNG grids of image samples, with each image's prompt written under it.

use std::path::Path;

use anyhow::{bail, Result};
use image::{ImageFormat, RgbImage};
use plotters::prelude::*;
use tch::{Device, Kind, Tensor};

use super::plot::{ensure_font, FONT};
use crate::atomic_file::write_atomically;

const GAP: u32 = 4;

/// Wraps `text` into at most `max_lines` lines of at most `width` characters.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let candidate = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
        };
        if candidate.chars().count() <= width || current.is_empty() {
            current = candidate;
        } else {
            lines.push(std::mem::replace(&mut current, word.to_string()));
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    for line in &mut lines {
        if line.chars().count() > width {
            *line = line
                .chars()
                .take(width.saturating_sub(1))
                .collect::<String>()
                + "…";
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        let last = &mut lines[max_lines - 1];
        let kept: String = last.chars().take(width.saturating_sub(1)).collect();
        *last = kept + "…";
    }
    lines
}

/// Images smaller than this many pixels a side are enlarged (nearest neighbour, by a whole
/// factor) so that their pixels can be seen.
const MIN_SIDE: i64 = 64;

/// Writes `images` (`[n, 3, H, W]` RGB or `[n, 1, H, W]` grey, in `[0, 1]`, any device) as a
/// grid of `columns` columns, with `captions[i]` under image `i` when given. Images under
/// 64 pixels a side are enlarged by a whole factor.
pub fn image_grid(
    path: &Path,
    images: &Tensor,
    captions: Option<&[String]>,
    columns: usize,
) -> Result<()> {
    let size = images.size();
    if size.len() != 4 || !matches!(size[1], 1 | 3) {
        bail!("an image grid needs [n, 3, H, W] or [n, 1, H, W] samples, got {size:?}");
    }
    let images = images.detach().to_device(Device::Cpu).to_kind(Kind::Float);
    let images = if size[1] == 1 {
        images.expand([size[0], 3, size[2], size[3]], false)
    } else {
        images
    };
    let side = size[2].min(size[3]).max(1);
    let factor = ((MIN_SIDE + side - 1) / side).max(1);
    let images = if factor > 1 {
        images.upsample_nearest2d([size[2] * factor, size[3] * factor], None, None)
    } else {
        images
    };
    let size = images.size();
    let (n, h, w) = (size[0] as u32, size[2] as u32, size[3] as u32);
    if n == 0 {
        bail!("no images to draw");
    }
    let pixels: Vec<u8> = Vec::try_from(
        (images
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .clamp(0.0, 1.0)
            * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .view([-1]),
    )?;
    let columns = (columns.max(1) as u32).min(n);
    let rows = n.div_ceil(columns);
    let font_px = (w / 16).clamp(10, 24);
    let caption_lines = 3;
    let caption_h = if captions.is_some() {
        font_px * caption_lines + 8
    } else {
        0
    };
    let cell_w = w + GAP;
    let cell_h = h + caption_h + GAP;
    let (width, height) = (columns * cell_w + GAP, rows * cell_h + GAP);
    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (x0, y0) = (GAP + (i % columns) * cell_w, GAP + (i / columns) * cell_h);
        let base = (i * h * w * 3) as usize;
        for y in 0..h {
            for x in 0..w {
                let p = base + ((y * w + x) * 3) as usize;
                canvas.put_pixel(
                    x0 + x,
                    y0 + y,
                    image::Rgb([pixels[p], pixels[p + 1], pixels[p + 2]]),
                );
            }
        }
    }
    if let Some(captions) = captions {
        ensure_font();
        let chars = ((w as f64) / (font_px as f64 * 0.55)).floor().max(4.0) as usize;
        let area = BitMapBackend::with_buffer(&mut canvas, (width, height)).into_drawing_area();
        for (i, caption) in captions.iter().take(n as usize).enumerate() {
            let i = i as u32;
            let (x0, y0) = (
                GAP + (i % columns) * cell_w,
                GAP + (i / columns) * cell_h + h + 4,
            );
            for (line_no, line) in wrap(caption, chars, caption_lines as usize)
                .iter()
                .enumerate()
            {
                area.draw_text(
                    line,
                    &(FONT, font_px as f64).into_text_style(&area).color(&BLACK),
                    (x0 as i32, (y0 + line_no as u32 * font_px) as i32),
                )
                .map_err(|e| anyhow::anyhow!("drawing captions failed: {e}"))?;
            }
        }
        area.present()
            .map_err(|e| anyhow::anyhow!("drawing captions failed: {e}"))?;
    }
    write_atomically(path, |tmp| {
        canvas.save_with_format(tmp, ImageFormat::Png)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_to_the_tile() {
        assert_eq!(
            wrap("a photo of a cat on a mat", 10, 3),
            vec!["a photo of", "a cat on a", "mat"]
        );
        assert_eq!(
            wrap("one two three four five six", 7, 2),
            vec!["one two", "three…"]
        );
        assert_eq!(wrap("supercalifragilistic", 6, 2), vec!["super…"]);
    }

    #[test]
    fn grids_are_written_with_tiles_in_place() {
        let dir = std::env::temp_dir().join(format!("flowgym-grid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grid.png");
        // Image 0 red, image 1 green, 64x64 each, two columns.
        let images = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let _ = images.get(0).get(0).fill_(1.0);
        let _ = images.get(1).get(1).fill_(1.0);
        image_grid(&path, &images, None, 2).unwrap();
        let png = image::open(&path).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (2 * (64 + GAP) + GAP, 64 + 2 * GAP));
        assert_eq!(png.get_pixel(GAP + 1, GAP + 1).0, [255, 0, 0]);
        assert_eq!(png.get_pixel(GAP + 64 + GAP + 1, GAP + 1).0, [0, 255, 0]);
        // Grey 8x8 images are drawn grey and enlarged 8 times: a white pixel is an 8x8 block.
        let grey = Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu));
        let _ = grey.get(0).get(0).get(1).get(2).fill_(1.0);
        image_grid(&path, &grey, None, 1).unwrap();
        let png = image::open(&path).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (64 + 2 * GAP, 64 + 2 * GAP));
        assert_eq!(png.get_pixel(GAP + 2 * 8 + 7, GAP + 8).0, [255, 255, 255]);
        assert_eq!(png.get_pixel(GAP + 2 * 8 - 1, GAP + 8).0, [0, 0, 0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
