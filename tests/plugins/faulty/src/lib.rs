//! Test fixture: entries that misbehave in every way the host must survive. A model written in
//! plain Rust (no libtorch) is among them.

use std::sync::atomic::{AtomicUsize, Ordering};

use flowgym_plugin_api::{
    arguments, register_base_model, register_reward, BaseModel, Batch, ConstructContext, DType,
    Dim, Kwargs, LeafSpec, ManagedTensor, NoArguments, OutputType, PluginError, PluginResult,
    Reward, RewardOutput, ScheduleSpec,
};

fn points() -> Vec<LeafSpec> {
    vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])]
}

fn count(sample: &Batch) -> PluginResult<usize> {
    Ok(sample.require("x")?.len())
}

/// Panics when constructed.
pub struct PanicOnConstruct;

impl Reward for PanicOnConstruct {
    fn reward(&mut self, _s: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        unreachable!("never constructed")
    }
}

register_reward! {
    id: "1d/panic-construct",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "panics in its constructor",
    arguments: NoArguments,
    leaves: points(),
    construct: |_: NoArguments, _: &ConstructContext| -> PluginResult<PanicOnConstruct> {
        panic!("constructor exploded")
    },
}

/// Panics when called.
pub struct PanicOnCall;

impl Reward for PanicOnCall {
    fn reward(&mut self, _s: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        panic!("reward exploded")
    }
}

register_reward! {
    id: "1d/panic-call",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "panics when called",
    arguments: NoArguments,
    leaves: points(),
    construct: |_: NoArguments, _: &ConstructContext| Ok::<_, PluginError>(PanicOnCall),
}

arguments! {
    /// Arguments of `1d/nan-after`.
    pub struct NanAfterArgs {
        /// Calls that return zeros before the rewards become NaN.
        after: usize = 3;
    }
}

/// Zeros for `after` calls, then NaN.
pub struct NanAfter {
    after: usize,
    calls: AtomicUsize,
}

impl Reward for NanAfter {
    fn reward(&mut self, sample: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        let n = count(&sample)?;
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let value = if call < self.after { 0.0 } else { f32::NAN };
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(
            &vec![value; n],
        )))
    }
}

register_reward! {
    id: "1d/nan-after",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "zeros, then NaN after `after` calls",
    arguments: NanAfterArgs,
    leaves: points(),
    construct: |a: NanAfterArgs, _: &ConstructContext| Ok::<_, PluginError>(NanAfter { after: a.after, calls: AtomicUsize::new(0) }),
}

/// One reward too few.
pub struct Short;

impl Reward for Short {
    fn reward(&mut self, sample: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        let n = count(&sample)?;
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(
            &vec![1.0f32; n.saturating_sub(1)],
        )))
    }
}

register_reward! {
    id: "1d/short",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "returns one reward too few",
    arguments: NoArguments,
    leaves: points(),
    construct: |_: NoArguments, _: &ConstructContext| Ok::<_, PluginError>(Short),
}

/// Integer rewards.
pub struct Integer;

impl Reward for Integer {
    fn reward(&mut self, sample: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        let n = count(&sample)?;
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(
            &vec![1i64; n],
        )))
    }
}

register_reward! {
    id: "1d/integer",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "returns int64 rewards",
    arguments: NoArguments,
    leaves: points(),
    construct: |_: NoArguments, _: &ConstructContext| Ok::<_, PluginError>(Integer),
}

/// Finite rewards so large that the squared regression error overflows float32.
pub struct Huge;

impl Reward for Huge {
    fn reward(&mut self, sample: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        let n = count(&sample)?;
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(
            &vec![3.0e38f32; n],
        )))
    }
}

register_reward! {
    id: "1d/huge",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "finite rewards whose squared error overflows",
    arguments: NoArguments,
    leaves: points(),
    construct: |_: NoArguments, _: &ConstructContext| Ok::<_, PluginError>(Huge),
}

arguments! {
    /// Arguments of `1d/nan-model`.
    pub struct NanModelArgs {
        /// From this time on the velocity is NaN.
        nan_from: f64 = 0.5;
    }
}

/// The optimal-transport flow from N(0, 1) to itself, in plain Rust, that turns NaN at
/// `nan_from`.
pub struct NanModel {
    nan_from: f64,
}

/// A standard normal sample from a seed (SplitMix64 and Box-Muller).
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

impl BaseModel for NanModel {
    fn output_type(&self) -> OutputType {
        OutputType::Velocity
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::OptimalTransport
    }

    fn sample_p0(&mut self, n: usize, seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let x = ManagedTensor::from_vec(normals(n, seed), &[n, 1])?;
        Ok((Batch::single("1d", "x", x), Kwargs::new()))
    }

    fn forward(&mut self, x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let xs = x.require("x")?.to_vec::<f32>()?;
        let ts = t.to_vec::<f32>()?;
        let v: Vec<f32> = xs
            .iter()
            .zip(&ts)
            .map(|(&x, &t)| {
                let t = f64::from(t);
                if t >= self.nan_from {
                    f32::NAN
                } else {
                    ((2.0 * t - 1.0) / (t * t + (1.0 - t) * (1.0 - t)) * f64::from(x)) as f32
                }
            })
            .collect();
        Ok(Batch::single(
            "1d",
            "x",
            ManagedTensor::from_vec(v, &[xs.len(), 1])?,
        ))
    }
}

register_base_model! {
    id: "1d/nan-model",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "a plain-Rust flow that returns NaN from time nan_from on",
    arguments: NanModelArgs,
    leaves: points(),
    construct: |a: NanModelArgs, _: &ConstructContext| Ok::<_, PluginError>(NanModel { nan_from: a.nan_from }),
}

arguments! {
    /// Arguments of `1d/misbehave`.
    pub struct MisbehaveArgs {
        /// What to do: segfault, abort, hang, grow (allocate without bound), connect (open a
        /// network connection), write (create the file `path`), error (return an error), or ok.
        mode: String = "segfault".to_string() => one_of("segfault", "abort", "hang", "grow", "connect", "write", "error", "ok");
        /// Calls that score normally (zeros) before it misbehaves.
        after: usize = 0;
        /// The file `write` creates.
        path: String = String::new();
        /// Misbehave only in the process an MPI launcher started as this rank (-1: in any).
        rank: i64 = -1;
    }
}

/// Scores zeros for `after` calls, then misbehaves as `mode` says: the ways a reward can take
/// a process down, or reach outside a sandbox.
pub struct Misbehave {
    args: MisbehaveArgs,
    calls: usize,
}

impl Misbehave {
    fn misbehave(&self) -> PluginResult<()> {
        match self.args.mode.as_str() {
            "segfault" => {
                // SAFETY: none; this is the fault under test.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                Ok(())
            }
            "abort" => std::process::abort(),
            "hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page, so the memory is really taken.
                    hoard.push(vec![1u8; 64 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "connect" => {
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
                std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2))
                    .map(drop)
                    .map_err(|e| PluginError::new(format!("connect to {address}: {e}")))
            }
            "write" => std::fs::write(&self.args.path, b"escaped")
                .map_err(|e| PluginError::new(format!("write {}: {e}", self.args.path))),
            "error" => Err(PluginError::new("the reward failed on purpose")),
            _ => Ok(()),
        }
    }
}

impl Reward for Misbehave {
    fn reward(&mut self, sample: Batch, _l: Batch, _k: Kwargs) -> PluginResult<RewardOutput> {
        let n = count(&sample)?;
        self.calls += 1;
        let rank = std::env::var("OMPI_COMM_WORLD_RANK")
            .or_else(|_| std::env::var("PMI_RANK"))
            .ok()
            .and_then(|r| r.parse::<i64>().ok());
        let this_rank = self.args.rank < 0 || rank == Some(self.args.rank);
        if self.calls > self.args.after && this_rank {
            self.misbehave()?;
        }
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(
            &vec![0.0f32; n],
        )))
    }
}

register_reward! {
    id: "1d/misbehave",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "segfaults, aborts, hangs, allocates without bound, connects or writes (argument mode)",
    arguments: MisbehaveArgs,
    leaves: points(),
    construct: |a: MisbehaveArgs, _: &ConstructContext| Ok::<_, PluginError>(Misbehave { args: a, calls: 0 }),
}

// `1d` is a standard data type: declared identically by every plugin that uses it.
flowgym_plugin_api::register_data_type! { standard: flowgym_plugin_api::standard::ONE_D }

flowgym_plugin_api::export_plugin!();
