//! Attention layers (`diffusers.models.attention_processor.Attention` with the default
//! `AttnProcessor2_0`, `attention.BasicTransformerBlock` and `transformers.Transformer2DModel`).

use tch::Tensor;

use crate::nn::{cpu_float32, Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::WeightPath;

/// Settings of an [`Attention`] layer (the keyword arguments of diffusers' `Attention`).
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    /// Features of the queries (and of the output).
    pub query_dim: i64,
    /// Features of the keys and values for cross-attention; `None` for self-attention.
    pub cross_attention_dim: Option<i64>,
    /// Number of heads.
    pub heads: i64,
    /// Features per head.
    pub dim_head: i64,
    /// Whether `to_q`, `to_k`, `to_v` have a bias.
    pub bias: bool,
    /// Groups of a normalisation applied to the input first (the spatial attention of UNet and
    /// VAE blocks); `None` for none.
    pub norm_num_groups: Option<i64>,
    /// Epsilon of that normalisation.
    pub eps: f64,
    /// Add the input to the output.
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// The spatial self-attention of `AttnDownBlock2D`, `AttnUpBlock2D` and `UNetMidBlock2D`:
    /// group-normalised input, biases, residual connection.
    pub fn spatial(
        channels: i64,
        dim_head: i64,
        norm_num_groups: Option<i64>,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Self {
        Self {
            query_dim: channels,
            cross_attention_dim: None,
            heads: channels / dim_head,
            dim_head,
            bias: true,
            norm_num_groups,
            eps,
            residual_connection: true,
            rescale_output_factor,
        }
    }
}

/// diffusers' `Attention` (multi-head scaled dot-product attention, no mask).
///
/// It computes in the precision of its weights through libtorch's fused
/// `scaled_dot_product_attention`, as diffusers' default `AttnProcessor2_0` does: that processor
/// ignores `upcast_attention` and `upcast_softmax` (only the legacy `AttnProcessor` reads them),
/// and the fused kernels accumulate half-precision scores and the softmax in float32.
///
/// The spatial attention blocks of checkpoints saved by old diffusers releases (the Stable
/// Diffusion v1 VAE, possibly the DDPM repositories) name their projections `query`, `key`,
/// `value` and `proj_attn`;
/// diffusers renames them on load (`_from_deprecated_attn_block`), and so does
/// [`Attention::spatial`].
#[derive(Debug)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    residual_connection: bool,
    rescale_output_factor: f64,
    slice_size: Option<i64>,
}

impl Attention {
    /// Loads `p.to_q`, `p.to_k`, `p.to_v`, `p.to_out.0` (and `p.group_norm`).
    pub fn new(p: &WeightPath, config: AttentionConfig) -> Self {
        Self::with_names(p, config, ["to_q", "to_k", "to_v", "to_out.0"])
    }

    /// Like [`Attention::new`], also accepting the deprecated names `query`, `key`, `value`,
    /// `proj_attn` when the current ones are absent.
    pub fn spatial(p: &WeightPath, config: AttentionConfig) -> Self {
        if !p.contains("to_q.weight") && p.contains("query.weight") {
            Self::with_names(p, config, ["query", "key", "value", "proj_attn"])
        } else {
            Self::new(p, config)
        }
    }

    fn with_names(p: &WeightPath, c: AttentionConfig, names: [&str; 4]) -> Self {
        let inner = c.heads * c.dim_head;
        let kv_dim = c.cross_attention_dim.unwrap_or(c.query_dim);
        Self {
            group_norm: c
                .norm_num_groups
                .map(|groups| GroupNorm::new(&p.pp("group_norm"), groups, c.query_dim, c.eps)),
            to_q: Linear::new(&p.pp(names[0]), c.query_dim, inner, c.bias),
            to_k: Linear::new(&p.pp(names[1]), kv_dim, inner, c.bias),
            to_v: Linear::new(&p.pp(names[2]), kv_dim, inner, c.bias),
            to_out: Linear::new(&p.pp(names[3]), inner, c.query_dim, true),
            heads: c.heads,
            residual_connection: c.residual_connection,
            rescale_output_factor: c.rescale_output_factor,
            slice_size: None,
        }
    }

    /// Number of heads.
    pub fn heads(&self) -> i64 {
        self.heads
    }

    /// Computes attention over slices of `size` rows of the `batch * heads` dimension, one
    /// after the other (diffusers' `SlicedAttnProcessor`), or unsliced with `None`. Each slice
    /// goes through the same fused kernel as unsliced attention.
    pub fn set_slice_size(&mut self, size: Option<i64>) {
        self.slice_size = size.map(|s| s.max(1));
    }

    /// Attention over `x`, either `[n, seq, query_dim]` or an image `[n, c, h, w]` (whose
    /// pixels are the sequence); keys and values come from `context` `[n, seq', dim]` when
    /// given (cross-attention), else from `x`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let size = x.size();
        let hidden = if size.len() == 4 {
            x.view([size[0], size[1], size[2] * size[3]])
                .transpose(1, 2)
        } else {
            x.shallow_clone()
        };
        let hidden = match &self.group_norm {
            Some(norm) => norm.forward(&hidden.transpose(1, 2)).transpose(1, 2),
            None => hidden,
        };
        let batch = size[0];
        let query = self.to_q.forward(&hidden);
        let context = context.unwrap_or(&hidden);
        let key = self.to_k.forward(context);
        let value = self.to_v.forward(context);
        let inner = key.size()[2];
        let head_dim = inner / self.heads;
        let split = |t: &Tensor| t.view([batch, -1, self.heads, head_dim]).transpose(1, 2);
        let out = self.scores_times_values(&split(&query), &split(&key), &split(&value));
        let out = out
            .transpose(1, 2)
            .reshape([batch, -1, self.heads * head_dim]);
        let out = self.to_out.forward(&out);
        let out = if size.len() == 4 {
            let out = out.transpose(-1, -2).reshape(size.as_slice());
            // That is the transposed view (channels-last strides, as diffusers leaves it),
            // which every later small CPU convolution would copy again: in float32 it is made
            // contiguous once. In bfloat16 on the CPU channels-last is the layout wanted
            // (`nn::channels_last`); in float16 it stays diffusers', whose kernels round by
            // layout.
            if cpu_float32(&out) {
                out.contiguous()
            } else {
                out
            }
        } else {
            out
        };
        let out = if self.residual_connection {
            out + x
        } else {
            out
        };
        if self.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.rescale_output_factor
        }
    }
}

impl Attention {
    /// `softmax(q k^T / sqrt(d)) v` of `[batch, heads, seq, d]` tensors, through libtorch's
    /// fused `scaled_dot_product_attention`, whole or by slices of the `batch * heads` rows.
    fn scores_times_values(&self, query: &Tensor, key: &Tensor, value: &Tensor) -> Tensor {
        let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor| {
            Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None, false)
        };
        let size = query.size();
        let rows = size[0] * size[1];
        match self.slice_size {
            Some(slice) if slice < rows => {
                // Rows as a batch of one-head attentions: the fused kernels take 4-d inputs
                // only (3-d ones fall back to the unfused path, which holds the scores).
                let rows_of = |t: &Tensor| {
                    let s = t.size();
                    t.reshape([rows, 1, s[2], s[3]])
                };
                let (q, k, v) = (rows_of(query), rows_of(key), rows_of(value));
                let slices: Vec<Tensor> = (0..rows)
                    .step_by(slice as usize)
                    .map(|start| {
                        let len = slice.min(rows - start);
                        sdpa(
                            &q.narrow(0, start, len),
                            &k.narrow(0, start, len),
                            &v.narrow(0, start, len),
                        )
                    })
                    .collect();
                Tensor::cat(&slices, 0).view([size[0], size[1], size[2], -1])
            }
            _ => sdpa(query, key, value),
        }
    }
}

/// diffusers' `FeedForward` with the default `geglu` activation: `net.0.proj` projects to twice
/// the inner width, one half gates the other through GELU, `net.2` projects back.
#[derive(Debug)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    /// `dim -> 4 dim -> dim`, loaded from `p.net.0.proj` and `p.net.2`.
    pub fn new(p: &WeightPath, dim: i64) -> Self {
        let inner = 4 * dim;
        Self {
            proj_in: Linear::new(&p.pp("net.0.proj"), dim, 2 * inner, true),
            proj_out: Linear::new(&p.pp("net.2"), inner, dim, true),
        }
    }

    /// Applies the layer over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let chunks = self.proj_in.forward(x).chunk(2, -1);
        self.proj_out
            .forward(&(&chunks[0] * chunks[1].gelu("none")))
    }
}

/// diffusers' `BasicTransformerBlock` with layer norms: self-attention, cross-attention, feed
/// forward, each pre-normalised and residual.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    attn2: Option<(LayerNorm, Attention)>,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    /// A block of width `dim` with `heads` heads of `dim_head` features; `cross_attention_dim`
    /// adds the cross-attention `attn2`; `only_cross_attention` makes `attn1` attend to the
    /// context too.
    pub fn new(
        p: &WeightPath,
        dim: i64,
        heads: i64,
        dim_head: i64,
        cross_attention_dim: Option<i64>,
        only_cross_attention: bool,
    ) -> Self {
        let attention = |cross| AttentionConfig {
            query_dim: dim,
            cross_attention_dim: cross,
            heads,
            dim_head,
            bias: false,
            norm_num_groups: None,
            eps: 1e-5,
            residual_connection: false,
            rescale_output_factor: 1.0,
        };
        let attn1_cross = if only_cross_attention {
            cross_attention_dim
        } else {
            None
        };
        Self {
            norm1: LayerNorm::new(&p.pp("norm1"), dim, 1e-5),
            attn1: Attention::new(&p.pp("attn1"), attention(attn1_cross)),
            attn2: cross_attention_dim.map(|cross| {
                (
                    LayerNorm::new(&p.pp("norm2"), dim, 1e-5),
                    Attention::new(&p.pp("attn2"), attention(Some(cross))),
                )
            }),
            norm3: LayerNorm::new(&p.pp("norm3"), dim, 1e-5),
            ff: FeedForward::new(&p.pp("ff"), dim),
            only_cross_attention,
        }
    }

    /// The attention layers, self-attention first.
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        let mut layers = vec![&mut self.attn1];
        layers.extend(self.attn2.as_mut().map(|(_, attn2)| attn2));
        layers
    }

    /// `[n, seq, dim]` with the context `[n, seq', cross_attention_dim]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let attn1_context = if self.only_cross_attention {
            context
        } else {
            None
        };
        let x = self.attn1.forward(&self.norm1.forward(x), attn1_context) + x;
        let x = match &self.attn2 {
            Some((norm2, attn2)) => attn2.forward(&norm2.forward(&x), context) + x,
            None => x,
        };
        self.ff.forward(&self.norm3.forward(&x)) + x
    }
}

/// Settings of a [`Transformer2DModel`] over continuous (image) input.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    /// Number of heads.
    pub num_attention_heads: i64,
    /// Features per head.
    pub attention_head_dim: i64,
    /// Channels of the input image (and output).
    pub in_channels: i64,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Groups of the input normalisation.
    pub norm_num_groups: i64,
    /// Features of the context for cross-attention.
    pub cross_attention_dim: Option<i64>,
    /// Linear projections in and out (SD 2) instead of 1x1 convolutions (SD 1).
    pub use_linear_projection: bool,
    /// Attend only to the context in the first attention too.
    pub only_cross_attention: bool,
}

#[derive(Debug)]
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

/// diffusers' `Transformer2DModel` over an image: group norm, projection in, transformer blocks
/// over the pixels, projection out, residual.
#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Loads `p.norm`, `p.proj_in`, `p.transformer_blocks.{i}` and `p.proj_out`.
    pub fn new(p: &WeightPath, c: Transformer2DConfig) -> Self {
        let inner = c.num_attention_heads * c.attention_head_dim;
        let projection = |name: &str, from: i64, to: i64| {
            if c.use_linear_projection {
                Projection::Linear(Linear::new(&p.pp(name), from, to, true))
            } else {
                Projection::Conv(Conv2d::new(&p.pp(name), from, to, 1, 1, 0))
            }
        };
        Self {
            norm: GroupNorm::new(&p.pp("norm"), c.norm_num_groups, c.in_channels, 1e-6),
            proj_in: projection("proj_in", c.in_channels, inner),
            transformer_blocks: (0..c.num_layers)
                .map(|i| {
                    BasicTransformerBlock::new(
                        &p.pp("transformer_blocks").pp(i),
                        inner,
                        c.num_attention_heads,
                        c.attention_head_dim,
                        c.cross_attention_dim,
                        c.only_cross_attention,
                    )
                })
                .collect(),
            proj_out: projection("proj_out", inner, c.in_channels),
        }
    }

    /// The attention layers of its blocks, in order.
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.transformer_blocks
            .iter_mut()
            .flat_map(BasicTransformerBlock::attention_layers_mut)
            .collect()
    }

    /// `[n, c, h, w]` with the context `[n, seq, cross_attention_dim]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let size = x.size();
        let (batch, height, width) = (size[0], size[2], size[3]);
        let h = self.norm.forward(x);
        let to_sequence = |h: Tensor| {
            let channels = h.size()[1];
            h.permute([0, 2, 3, 1])
                .reshape([batch, height * width, channels])
        };
        let mut h = match &self.proj_in {
            Projection::Conv(conv) => to_sequence(conv.forward(&h)),
            Projection::Linear(linear) => linear.forward(&to_sequence(h)),
        };
        for block in &self.transformer_blocks {
            h = block.forward(&h, context);
        }
        let to_image = |h: Tensor| {
            let channels = h.size()[2];
            let image = h
                .reshape([batch, height, width, channels])
                .permute([0, 3, 1, 2]);
            // The permuted view is already the channels-last layout.
            if crate::nn::channels_last(image.kind(), image.device()) {
                image
            } else {
                image.contiguous()
            }
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(h)),
            Projection::Linear(linear) => to_image(linear.forward(&h)),
        };
        out + x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Weights;
    use tch::{Device, Kind};

    /// Sliced attention equals unsliced attention for every slice size, including slices that
    /// do not divide `batch * heads` (15 rows here) and cross-attention.
    #[test]
    fn every_slice_size_gives_the_unsliced_output() {
        tch::manual_seed(3);
        let weights = Weights::initialising(Kind::Float, Device::Cpu);
        let config = AttentionConfig {
            cross_attention_dim: Some(6),
            ..AttentionConfig::spatial(20, 4, Some(4), 1e-6, 1.0)
        };
        let mut attention = Attention::new(&weights.root(), config);
        assert_eq!(attention.heads(), 5);
        let x = Tensor::randn([3, 20, 4, 5], (Kind::Float, Device::Cpu));
        let context = Tensor::randn([3, 7, 6], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let whole = attention.forward(&x, Some(&context));
            for size in [1, 2, 4, 5, 15, 40] {
                attention.set_slice_size(Some(size));
                let sliced = attention.forward(&x, Some(&context));
                let error = (&sliced - &whole).abs().max().double_value(&[]);
                assert!(error <= 1e-6, "slice {size}: {error}");
            }
        });
    }
}
