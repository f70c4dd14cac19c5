//! Data type `points` (1.0.0): samples that are sets of points in `R^d`, a different number
//! per sample (like the atoms of molecules), with a custom layout:
//!
//! - `x`: `[m, d]` float32, the points of all samples one after the other (`m` in all);
//! - `sample`: `[m]` int64, the sample each point belongs to (non-decreasing);
//! - `counts`: `[n]` int64, the number of points of each sample.
//!
//! Its plugin answers for the batch length, slices, concatenation and per-sample sums
//! ([`PointSets`]); `x` is the per-element leaf and `sample` the sample index the host's set
//! value network reads.
//!
//! - `points/gmm`: every point independently follows the exact flow of `vec/gmm` (the same
//!   arguments), with a number of points drawn uniformly from `counts` per sample.
//! - `points/halfspace`, `points/bump`, `points/linear`: the mean over a sample's points of
//!   the `vec` reward of the same name and arguments. With `m` points the tilt
//!   `exp(lambda mean_i r(x_i))` factorises into `exp(lambda / m r(x_i))` per point, so the
//!   optimum is known exactly point by point.

use flowgym_plugin_api::{
    arguments, register_base_model, register_data_type, register_reward, Aggregate, BaseModel,
    Batch, ConstructContext, DType, DataType, Dim, Kwargs, LeafSpec, ManagedTensor, OutputType,
    PluginError, PluginResult, Reward, RewardOutput, ScheduleSpec,
};

use crate::gmm::{ExactFlow, GmmArgs};
use crate::linalg::Rng;
use crate::rewards::{Bump, BumpArgs, HalfSpace, HalfSpaceArgs, Linear, LinearArgs};

/// The data type's name.
pub const POINTS: &str = "points";

register_data_type! {
    name: "points",
    version: "1.0.0",
    description: "Sets of points in R^d, a different number per sample: x [m, d] float32, sample [m] int64, counts [n] int64",
    ops: PointSets,
    elements: ["x"],
    sample_index: "sample",
}

/// A batch of point sets, read and checked.
struct Sets<'a> {
    x: &'a ManagedTensor,
    dim: usize,
    counts: Vec<i64>,
    /// `offsets[i]..offsets[i + 1]` are the points of sample `i`.
    offsets: Vec<usize>,
}

fn read(batch: &Batch) -> PluginResult<Sets<'_>> {
    let x = batch.require("x")?;
    let counts: Vec<i64> = batch.require("counts")?.to_vec()?;
    let sample = batch.require("sample")?;
    let shape = x.shape();
    if shape.len() != 2 {
        return Err(format!("leaf `x` must have shape [m, d], got {shape:?}").into());
    }
    let mut offsets = Vec::with_capacity(counts.len() + 1);
    offsets.push(0usize);
    for &c in &counts {
        let c = usize::try_from(c).map_err(|_| format!("negative count {c} in leaf `counts`"))?;
        offsets.push(offsets.last().copied().unwrap_or(0) + c);
    }
    let m = *offsets.last().unwrap_or(&0);
    if shape[0] as usize != m || sample.len() != m {
        return Err(format!(
            "leaf `counts` adds up to {m} points, but `x` has {} and `sample` {}",
            shape[0],
            sample.len()
        )
        .into());
    }
    Ok(Sets {
        x,
        dim: shape[1] as usize,
        counts,
        offsets,
    })
}

/// Rows `a..b` of a `[m, d]` float tensor (float32 or float64, kept).
fn rows(x: &ManagedTensor, d: usize, a: usize, b: usize) -> PluginResult<ManagedTensor> {
    Ok(match x.dtype() {
        Some(DType::F64) => {
            ManagedTensor::from_vec(x.as_slice::<f64>()?[a * d..b * d].to_vec(), &[b - a, d])?
        }
        _ => ManagedTensor::from_vec(x.as_slice::<f32>()?[a * d..b * d].to_vec(), &[b - a, d])?,
    })
}

/// A batch from its points and counts (the sample index is derived from the counts).
fn assemble(x: ManagedTensor, counts: Vec<i64>) -> Batch {
    let sample: Vec<i64> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i as i64, c.max(0) as usize))
        .collect();
    Batch::new(
        POINTS,
        [
            ("x".to_string(), x),
            ("sample".to_string(), ManagedTensor::from_slice(&sample)),
            ("counts".to_string(), ManagedTensor::from_slice(&counts)),
        ],
    )
}

/// The batch operations of `points`.
pub struct PointSets;

impl DataType for PointSets {
    fn len(&self, batch: &Batch) -> PluginResult<usize> {
        Ok(read(batch)?.counts.len())
    }

    fn slice(&self, batch: &Batch, start: usize, end: usize) -> PluginResult<Batch> {
        let sets = read(batch)?;
        if start > end || end > sets.counts.len() {
            return Err(format!(
                "samples {start}..{end} are out of range for a batch of {}",
                sets.counts.len()
            )
            .into());
        }
        let x = rows(sets.x, sets.dim, sets.offsets[start], sets.offsets[end])?;
        Ok(assemble(x, sets.counts[start..end].to_vec()))
    }

    fn collate(&self, parts: &[Batch]) -> PluginResult<Batch> {
        let (mut x32, mut x64, mut counts, mut dim) = (Vec::new(), Vec::new(), Vec::new(), None);
        let mut wide = false;
        for part in parts {
            let sets = read(part)?;
            if *dim.get_or_insert(sets.dim) != sets.dim {
                return Err("batches of points of different dimensions cannot be joined".into());
            }
            match sets.x.dtype() {
                Some(DType::F64) => {
                    wide = true;
                    x64.extend_from_slice(sets.x.as_slice::<f64>()?);
                }
                _ => x32.extend_from_slice(sets.x.as_slice::<f32>()?),
            }
            counts.extend(sets.counts);
        }
        let d = dim.unwrap_or(1);
        let m = (x32.len() + x64.len()) / d;
        let x = match (wide, x32.is_empty()) {
            (false, _) => ManagedTensor::from_vec(x32, &[m, d])?,
            (true, true) => ManagedTensor::from_vec(x64, &[m, d])?,
            (true, false) => {
                return Err("batches of float32 and float64 points cannot be joined".into())
            }
        };
        Ok(assemble(x, counts))
    }

    fn aggregate(
        &self,
        batch: &Batch,
        values: &Batch,
        how: Aggregate,
    ) -> PluginResult<ManagedTensor> {
        let sets = read(batch)?;
        let v = values.require("x")?;
        if v.shape() != sets.x.shape() {
            return Err(format!(
                "values of `x` have shape {:?}, the batch's `x` {:?}",
                v.shape(),
                sets.x.shape()
            )
            .into());
        }
        let v: Vec<f64> = match v.dtype() {
            Some(DType::F64) => v.to_vec::<f64>()?,
            _ => v.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
        };
        let d = sets.dim;
        let out: Vec<f32> = sets
            .offsets
            .windows(2)
            .map(|w| {
                let s: f64 = v[w[0] * d..w[1] * d].iter().sum();
                match how {
                    Aggregate::Sum => s as f32,
                    Aggregate::Mean => (s / (w[1] - w[0]).max(1) as f64) as f32,
                }
            })
            .collect();
        Ok(ManagedTensor::from_slice(&out))
    }
}

arguments! {
    /// Arguments of `points/gmm`: the mixture every point follows (as `vec/gmm`) and the
    /// numbers of points a sample may have.
    pub struct PointsGmmArgs {
        /// Numbers of points per sample, drawn uniformly (each at least 1).
        counts: Vec<u64> = vec![2, 3, 5];
        /// Mixture weights, one per component.
        weights: Vec<f64> = vec![0.5, 0.5];
        /// Component means: one list of d coordinates per component.
        means: Vec<Vec<f64>> = vec![vec![-2.0, 0.0], vec![2.0, 0.0]];
        /// Full covariances, one d x d nested list per component; or give `stds`.
        covariances: Vec<Vec<Vec<f64>>> = Vec::new();
        /// Isotropic standard deviations, one per component.
        stds: Vec<f64> = Vec::new();
        /// What `forward` returns.
        output: String = "velocity".to_string()
            => one_of("velocity", "epsilon", "score", "endpoint");
        /// Noise schedule: `ot`, `cosine` or `ddpm` (as `vec/gmm`'s).
        schedule: String = "ot".to_string() => one_of("ot", "cosine", "ddpm");
    }
}

/// The exact flow of `vec/gmm`, point by point.
pub struct PointsGmm {
    flow: ExactFlow,
    counts: Vec<usize>,
}

impl PointsGmm {
    /// The model the arguments describe.
    pub fn new(args: PointsGmmArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        if ctx.device != flowgym_plugin_api::DLDevice::CPU {
            return Err(format!(
                "`points/gmm` computes on the CPU only, but the host asked for {}",
                ctx.device
            )
            .into());
        }
        if args.counts.is_empty() || args.counts.contains(&0) {
            return Err(format!(
                "argument `counts` must hold positive numbers, got {:?}",
                args.counts
            )
            .into());
        }
        let flow = ExactFlow::from_args(&GmmArgs {
            weights: args.weights,
            means: args.means,
            covariances: args.covariances,
            stds: args.stds,
            output: args.output,
            schedule: args.schedule,
        })?;
        Ok(Self {
            flow,
            counts: args.counts.iter().map(|&c| c as usize).collect(),
        })
    }
}

impl BaseModel for PointsGmm {
    fn output_type(&self) -> OutputType {
        self.flow.output_type()
    }

    fn schedule(&self) -> ScheduleSpec {
        self.flow.schedule().schedule()
    }

    fn sample_p0(&mut self, n: usize, seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let mut rng = Rng::new(seed);
        let d = self.flow.mixture().dim();
        let counts: Vec<i64> = (0..n)
            .map(|_| {
                self.counts[((rng.uniform() * self.counts.len() as f64) as usize)
                    .min(self.counts.len() - 1)] as i64
            })
            .collect();
        let m: usize = counts.iter().map(|&c| c as usize).sum();
        let z: Vec<f32> = (0..m * d).map(|_| rng.normal() as f32).collect();
        Ok((
            assemble(ManagedTensor::from_vec(z, &[m, d])?, counts),
            Kwargs::new(),
        ))
    }

    fn forward(&mut self, x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let sets = read(&x)?;
        let d = self.flow.mixture().dim();
        if sets.dim != d {
            return Err(format!(
                "leaf `x` has dimension {}, the mixture has dimension {d}",
                sets.dim
            )
            .into());
        }
        let times: Vec<f64> = match t.dtype() {
            Some(DType::F64) => t.to_vec::<f64>()?,
            _ => t.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
        };
        if times.len() != sets.counts.len() {
            return Err(format!(
                "{} times for {} samples; expected one per sample",
                times.len(),
                sets.counts.len()
            )
            .into());
        }
        let per_point: Vec<f64> = sets
            .offsets
            .windows(2)
            .zip(&times)
            .flat_map(|(w, &time)| std::iter::repeat_n(time, w[1] - w[0]))
            .collect();
        let values: Vec<f64> = match sets.x.dtype() {
            Some(DType::F64) => sets.x.to_vec::<f64>()?,
            _ => sets.x.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
        };
        let out = self.flow.predict(&values, &per_point)?;
        let m = per_point.len();
        let out = ManagedTensor::from_vec(out.into_iter().map(|v| v as f32).collect(), &[m, d])?;
        Ok(assemble(out, sets.counts))
    }
}

fn set_leaves() -> Vec<LeafSpec> {
    vec![
        LeafSpec::new("x", DType::F32, [Dim::Any, Dim::Any]),
        LeafSpec::new("sample", DType::I64, [Dim::Any]),
        LeafSpec::new("counts", DType::I64, [Dim::Batch]),
    ]
}

register_base_model! {
    id: "points/gmm",
    version: "1.0.0",
    data_type: (POINTS, "1.0.0"),
    description: "Sets of points, each following the exact flow of vec/gmm independently; the number of points per sample drawn from `counts`",
    arguments: PointsGmmArgs,
    leaves: set_leaves(),
    capabilities: flowgym_plugin_api::Capabilities { max_batch: 0, cpu_only: true },
    construct: PointsGmm::new,
}

/// The mean over each sample's points of a `vec` reward.
pub struct PerPointMean<R>(R);

impl<R: Reward> Reward for PerPointMean<R> {
    fn reward(
        &mut self,
        sample: Batch,
        latent: Batch,
        kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let sets = read(&sample)?;
        let x = rows(sets.x, sets.dim, 0, *sets.offsets.last().unwrap_or(&0))?;
        let m = x.shape()[0] as usize;
        let per_point = self
            .0
            .reward(Batch::single(crate::DATA_TYPE, "x", x), latent, kwargs)?
            .reward;
        let r: Vec<f32> = per_point.to_vec()?;
        if r.len() != m {
            return Err(PluginError::new(format!(
                "{} rewards for {m} points",
                r.len()
            )));
        }
        let means: Vec<f32> = sets
            .offsets
            .windows(2)
            .map(|w| {
                let s: f64 = r[w[0]..w[1]].iter().map(|&v| f64::from(v)).sum();
                (s / (w[1] - w[0]).max(1) as f64) as f32
            })
            .collect();
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&means)))
    }
}

register_reward! {
    id: "points/halfspace",
    version: "1.0.0",
    data_type: (POINTS, "1.0.0"),
    description: "Mean over a sample's points of vec/halfspace (same arguments)",
    arguments: HalfSpaceArgs,
    leaves: set_leaves(),
    construct: |args, ctx: &ConstructContext| HalfSpace::new(args, ctx).map(PerPointMean),
}

register_reward! {
    id: "points/bump",
    version: "1.0.0",
    data_type: (POINTS, "1.0.0"),
    description: "Mean over a sample's points of vec/bump (same arguments)",
    arguments: BumpArgs,
    leaves: set_leaves(),
    construct: |args, ctx: &ConstructContext| Bump::new(args, ctx).map(PerPointMean),
}

register_reward! {
    id: "points/linear",
    version: "1.0.0",
    data_type: (POINTS, "1.0.0"),
    description: "Mean over a sample's points of vec/linear (same arguments)",
    arguments: LinearArgs,
    leaves: set_leaves(),
    construct: |args, ctx: &ConstructContext| Linear::new(args, ctx).map(PerPointMean),
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::Arguments;

    fn batch(points: &[[f32; 2]], counts: &[i64]) -> Batch {
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        assemble(
            ManagedTensor::from_vec(flat, &[points.len(), 2]).unwrap(),
            counts.to_vec(),
        )
    }

    fn xs(batch: &Batch) -> Vec<f32> {
        batch.require("x").unwrap().to_vec().unwrap()
    }

    #[test]
    fn batches_slice_collate_and_sum_per_sample() {
        let b = batch(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &[1, 2]);
        assert_eq!(PointSets.len(&b).unwrap(), 2);
        let tail = PointSets.slice(&b, 1, 2).unwrap();
        assert_eq!(xs(&tail), vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            tail.require("sample").unwrap().to_vec::<i64>().unwrap(),
            vec![0, 0]
        );
        let head = PointSets.slice(&b, 0, 1).unwrap();
        let joined = PointSets.collate(&[tail, head]).unwrap();
        assert_eq!(xs(&joined), vec![3.0, 4.0, 5.0, 6.0, 1.0, 2.0]);
        assert_eq!(
            joined.require("sample").unwrap().to_vec::<i64>().unwrap(),
            vec![0, 0, 1]
        );
        let sums = PointSets.aggregate(&b, &b, Aggregate::Sum).unwrap();
        assert_eq!(sums.to_vec::<f32>().unwrap(), vec![3.0, 18.0]);
        let means = PointSets.aggregate(&b, &b, Aggregate::Mean).unwrap();
        assert_eq!(means.to_vec::<f32>().unwrap(), vec![3.0, 9.0]);
        assert_eq!(
            PointSets.slice(&b, 1, 3).err().unwrap().message(),
            "samples 1..3 are out of range for a batch of 2"
        );
        let ragged = batch(&[[1.0, 2.0]], &[1, 2]);
        assert_eq!(
            PointSets.len(&ragged).err().unwrap().message(),
            "leaf `counts` adds up to 3 points, but `x` has 1 and `sample` 3"
        );
    }

    #[test]
    fn the_model_moves_every_point_by_the_exact_flow_and_the_reward_averages() {
        let ctx = ConstructContext::cpu();
        let args = PointsGmmArgs::from_json(
            r#"{"counts": [1, 3], "weights": [1], "means": [[1, 2]], "stds": [0.5]}"#,
        )
        .unwrap();
        let mut model = PointsGmm::new(args, &ctx).unwrap();
        let (x0, _) = model.sample_p0(50, 7).unwrap();
        let counts: Vec<i64> = x0.require("counts").unwrap().to_vec().unwrap();
        assert!(counts.iter().all(|c| *c == 1 || *c == 3));
        assert!(counts.contains(&1) && counts.contains(&3));
        let m: i64 = counts.iter().sum();
        assert_eq!(x0.require("x").unwrap().shape(), &[m, 2]);
        // Velocity on the ot path at t = 0.5 for a Gaussian N(mu, s^2 I):
        // E[x1|x] = mu + t s^2 (x - t mu) / v, E[x0|x] = (1 - t)(x - t mu) / v,
        // v = t^2 s^2 + (1 - t)^2.
        let b = batch(&[[0.0, 0.0], [1.0, -1.0], [2.0, 3.0]], &[2, 1]);
        let v = model
            .forward(b, ManagedTensor::from_slice(&[0.5f32, 0.5]), Kwargs::new())
            .unwrap();
        let (t, s2, mu) = (0.5f64, 0.25f64, [1.0f64, 2.0]);
        let var = t * t * s2 + (1.0 - t) * (1.0 - t);
        let want: Vec<f32> = [[0.0, 0.0], [1.0, -1.0], [2.0, 3.0]]
            .iter()
            .flat_map(|x: &[f64; 2]| {
                (0..2).map(move |j| {
                    let r = x[j] - t * mu[j];
                    (mu[j] + t * s2 * r / var - (1.0 - t) * r / var) as f32
                })
            })
            .collect();
        for (a, b) in xs(&v).iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{:?} vs {want:?}", xs(&v));
        }
        let linear = LinearArgs::from_json(r#"{"weights": [1, 0]}"#).unwrap();
        let mut reward = PerPointMean(Linear::new(linear, &ctx).unwrap());
        let b = batch(&[[1.0, 9.0], [3.0, 9.0], [5.0, 9.0]], &[2, 1]);
        let r = reward
            .reward(b, Batch::new(POINTS, []), Kwargs::new())
            .unwrap();
        assert_eq!(r.reward.to_vec::<f32>().unwrap(), vec![2.0, 5.0]);
    }
}
