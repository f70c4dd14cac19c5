//! CNN value network for image tensors `[n, C, H, W]`.
//!
//! Three stages of GroupNorm-SiLU-conv blocks, each conditioned on the time by adding a
//! learned projection of the time embedding to its channels, with stride-2 convolutions
//! between stages, then global average pooling and an MLP head whose last layer starts at
//! zero. Widths 32, 64, 128: 0.38 M parameters (382,401 with 3 input channels, 382,689 with
//! the 4 of Stable Diffusion latents), 1.5 MB of weights.
//!
//! Memory per batch, measured as peak resident memory over base-model sampling alone: fitting
//! 256 points of 3 x 32 x 32 at once adds about 450 MiB (512 points: 750 MiB), roughly
//! 1.7 MiB per point, which is why image data are fitted in chunks of 256 by default
//! (`train_chunk`); 64 x 64 latents need about four times as much per point. Steering one
//! sampling step needs the gradient for one batch only (a few MiB at batch 16).

use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::embedding::sinusoidal;
use super::{parameter_count, zero_init, ValueNetwork};
use crate::state::State;

const TIME_DIM: i64 = 128;
const WIDTHS: [i64; 3] = [32, 64, 128];

struct Stage {
    norm: nn::GroupNorm,
    conv: nn::Conv2D,
    time: nn::Linear,
    down: Option<nn::Conv2D>,
}

/// The CNN value network.
pub struct CnnValue {
    vs: nn::VarStore,
    stem: nn::Conv2D,
    time_mlp: nn::Sequential,
    stages: Vec<Stage>,
    head: nn::Sequential,
    channels: i64,
}

impl CnnValue {
    /// For images with `channels` channels.
    pub fn new(device: Device, channels: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let same = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let stride2 = nn::ConvConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let stem = nn::conv2d(&root / "stem", channels, WIDTHS[0], 3, same);
        let time_mlp = nn::seq()
            .add(nn::linear(
                &root / "time" / "0",
                TIME_DIM,
                TIME_DIM,
                Default::default(),
            ))
            .add_fn(|x| x.silu())
            .add(nn::linear(
                &root / "time" / "1",
                TIME_DIM,
                TIME_DIM,
                Default::default(),
            ));
        let stages = WIDTHS
            .iter()
            .enumerate()
            .map(|(i, &width)| {
                let p = &root / format!("stage{i}");
                Stage {
                    norm: nn::group_norm(&p / "norm", 8, width, Default::default()),
                    conv: nn::conv2d(&p / "conv", width, width, 3, same),
                    time: nn::linear(&p / "time", TIME_DIM, width, Default::default()),
                    down: WIDTHS
                        .get(i + 1)
                        .map(|&next| nn::conv2d(&p / "down", width, next, 3, stride2)),
                }
            })
            .collect();
        let last = *WIDTHS.last().expect("three stages");
        let head = nn::seq()
            .add(nn::linear(
                &root / "head" / "0",
                last + TIME_DIM,
                128,
                Default::default(),
            ))
            .add_fn(|x| x.silu())
            .add(nn::linear(&root / "head" / "1", 128, 1, zero_init()));
        Self {
            vs,
            stem,
            time_mlp,
            stages,
            head,
            channels,
        }
    }
}

impl ValueNetwork for CnnValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let image = x
            .floating()
            .next()
            .expect("the CNN is built for one image leaf");
        let n = image.size()[0];
        let emb = self.time_mlp.forward(&sinusoidal(t, TIME_DIM));
        let mut h = self.stem.forward(image);
        for stage in &self.stages {
            let cond = stage.time.forward(&emb.silu()).view([n, -1, 1, 1]);
            h = h.shallow_clone() + stage.conv.forward(&stage.norm.forward(&h).silu()) + cond;
            if let Some(down) = &stage.down {
                h = down.forward(&h.silu());
            }
        }
        let pooled = h.silu().mean_dim(&[2i64, 3][..], false, h.kind());
        self.head.forward(&Tensor::cat(&[pooled, emb], 1)).view([n])
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        format!(
            "CNN ({} channels in, widths {WIDTHS:?}, time-conditioned, {} parameters)",
            self.channels,
            parameter_count(&self.vs)
        )
    }
}
