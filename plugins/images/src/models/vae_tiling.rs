//! Tiled VAE decoding, as diffusers' `AutoencoderKL.tiled_decode` (`enable_vae_tiling`): the
//! latents are cut into overlapping square tiles, each decoded alone, and neighbouring tiles
//! are blended linearly over their overlap (`blend_v`, `blend_h`), so the decoder's memory is
//! that of one tile whatever the image size. The result differs from decoding the whole image
//! (each tile's attention and group norms see only that tile), most near the seams.

use tch::Tensor;

/// diffusers' `tile_overlap_factor`: neighbouring tiles share a quarter of a tile.
pub const TILE_OVERLAP_FACTOR: f64 = 0.25;

/// The tile sizes of diffusers' `AutoencoderKL` (`tile_sample_min_size`,
/// `tile_latent_min_size`, `tile_overlap_factor`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// Edge of a decoded tile, in pixels.
    pub tile_sample_min_size: i64,
    /// Edge of a latent tile: `tile_sample_min_size / scale_factor`, rounded down.
    pub tile_latent_min_size: i64,
    /// Share of a tile that overlaps its neighbour.
    pub tile_overlap_factor: f64,
}

impl VaeTiling {
    /// Tiles of `tile_sample_min_size` pixels for a VAE that up-samples `scale_factor` times
    /// (diffusers sets `tile_sample_min_size` to the config's `sample_size` and
    /// `tile_latent_min_size` to `int(sample_size / 2 ** (levels - 1))`).
    pub fn new(tile_sample_min_size: i64, scale_factor: i64) -> Self {
        Self {
            tile_sample_min_size,
            tile_latent_min_size: tile_sample_min_size / scale_factor,
            tile_overlap_factor: TILE_OVERLAP_FACTOR,
        }
    }

    /// Whether the tiles fit together into an image of exactly `scale_factor` times the
    /// latents: the stride between tiles (three quarters of a latent tile, rounded down, in
    /// pixels) must equal the part of a tile kept (`tile - tile / 4`), which holds when the tile
    /// is a multiple of `4 * scale_factor` pixels (diffusers does not check; other sizes give
    /// images of the wrong size).
    pub fn fits(tile_sample_min_size: i64, scale_factor: i64) -> bool {
        tile_sample_min_size > 0 && tile_sample_min_size % (4 * scale_factor) == 0
    }

    /// Whether latents `[n, c, h, w]` are decoded in tiles: when `h` or `w` exceeds a latent
    /// tile, as diffusers' `_decode` decides.
    pub fn applies_to(&self, z: &Tensor) -> bool {
        let size = z.size();
        size[2] > self.tile_latent_min_size || size[3] > self.tile_latent_min_size
    }

    /// diffusers' `tiled_decode`: decodes `z` `[n, c, h, w]` tile by tile with `decode` (which
    /// maps a latent tile to its image) and blends the tiles into `[n, c', h f, w f]`.
    pub fn decode(&self, z: &Tensor, decode: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let latent = self.tile_latent_min_size;
        // Python's int() of a positive float rounds down, as `as` does.
        let overlap_size = ((latent as f64 * (1.0 - self.tile_overlap_factor)) as i64).max(1);
        let blend_extent = (self.tile_sample_min_size as f64 * self.tile_overlap_factor) as i64;
        let row_limit = self.tile_sample_min_size - blend_extent;
        let size = z.size();
        let (height, width) = (size[2], size[3]);
        let tile = |i: i64, j: i64| {
            let rows = z.narrow(2, i, latent.min(height - i));
            decode(&rows.narrow(3, j, latent.min(width - j)))
        };
        let mut rows: Vec<Vec<Tensor>> = (0..height)
            .step_by(overlap_size as usize)
            .map(|i| {
                (0..width)
                    .step_by(overlap_size as usize)
                    .map(|j| tile(i, j))
                    .collect()
            })
            .collect();
        // In place, in order, as diffusers does: a tile is blended with its upper and left
        // neighbours after they were blended themselves.
        let mut result_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut result_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].shallow_clone();
                if i > 0 {
                    tile = blend(&rows[i - 1][j], &tile, blend_extent, 2);
                }
                if j > 0 {
                    tile = blend(&rows[i][j - 1], &tile, blend_extent, 3);
                }
                result_row.push(crop(&tile, row_limit));
                rows[i][j] = tile;
            }
            result_rows.push(Tensor::cat(&result_row, 3));
        }
        Tensor::cat(&result_rows, 2)
    }
}

/// The first `limit` rows and columns of `tile` (fewer where it is smaller).
fn crop(tile: &Tensor, limit: i64) -> Tensor {
    let size = tile.size();
    tile.narrow(2, 0, limit.min(size[2]))
        .narrow(3, 0, limit.min(size[3]))
}

/// diffusers' `blend_v` (`dim` 2) and `blend_h` (`dim` 3): the first `extent` rows (columns)
/// of `b` become `a[-extent + y] * (1 - y / extent) + b[y] * (y / extent)`, with `extent` at
/// most the size of either along `dim`; the rest of `b` is kept.
pub fn blend(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Tensor {
    let extent = extent
        .min(a.size()[dim as usize])
        .min(b.size()[dim as usize]);
    if extent <= 0 {
        return b.shallow_clone();
    }
    let mut shape = [1i64; 4];
    shape[dim as usize] = extent;
    // The weights in double precision, then in the tile's format, as Python's floats are.
    let as_weights = |values: Vec<f64>| {
        Tensor::from_slice(&values)
            .to_kind(b.kind())
            .to_device(b.device())
            .view(shape)
    };
    let weight = as_weights((0..extent).map(|y| y as f64 / extent as f64).collect());
    let keep = as_weights(
        (0..extent)
            .map(|y| 1.0 - y as f64 / extent as f64)
            .collect(),
    );
    let length_a = a.size()[dim as usize];
    let from_a = a.narrow(dim, length_a - extent, extent);
    let head = b.narrow(dim, 0, extent);
    let blended = from_a * keep + head * weight;
    let rest = b.narrow(dim, extent, b.size()[dim as usize] - extent);
    Tensor::cat(&[blended, rest], dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn blend_ramps_from_the_upper_tile_to_the_lower_over_the_extent() {
        let a = Tensor::full([1, 1, 4, 2], 10.0, (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([1, 1, 3, 2], (Kind::Float, tch::Device::Cpu));
        let out = blend(&a, &b, 2, 2);
        // Row y < 2: 10 (1 - y / 2); row 2 kept.
        let column: Vec<f32> = out.select(3, 0).reshape([-1]).try_into().unwrap();
        assert_eq!(column, [10.0, 5.0, 0.0]);
        // An extent larger than either tile is cut to the smaller (3 here).
        let out = blend(&a, &b, 9, 2);
        let column: Vec<f32> = out.select(3, 1).reshape([-1]).try_into().unwrap();
        assert_eq!(
            column,
            [
                10.0,
                10.0 * (1.0 - 1.0 / 3.0) as f32,
                10.0 * (1.0 - 2.0 / 3.0) as f32
            ]
        );
    }

    #[test]
    fn small_latents_are_decoded_whole_and_large_ones_cover_the_image() {
        let tiling = VaeTiling::new(32, 8);
        assert_eq!(tiling.tile_latent_min_size, 4);
        let small = Tensor::zeros([1, 4, 4, 4], (Kind::Float, tch::Device::Cpu));
        assert!(!tiling.applies_to(&small));
        let large = Tensor::ones([1, 4, 5, 11], (Kind::Float, tch::Device::Cpu));
        assert!(tiling.applies_to(&large));
        // An identity-like "decoder" that up-samples 8x keeps ones everywhere after blending.
        let out = tiling.decode(&large, |t| {
            t.upsample_nearest2d([t.size()[2] * 8, t.size()[3] * 8], None, None)
        });
        assert_eq!(out.size(), [1, 4, 40, 88]);
        assert!((out - 1.0).abs().max().double_value(&[]) < 1e-6);
    }
}
