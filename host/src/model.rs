//! A constructed base model, seen from the host: libtorch tensors in and out, every output
//! checked, every plugin error named.

use anyhow::{anyhow, bail, Result};
use flowgym_plugin_api::{BaseModelBox, ManagedTensor, OutputType};
use tch::{Device, Kind, Tensor};

use std::sync::Arc;

use crate::kwargs::HostKwargs;
use crate::layout::CustomLayout;
use crate::sde::Interpolant;
use crate::state::State;

/// A base model loaded from a plugin.
pub struct Model {
    /// Entry id.
    pub id: String,
    /// The data type its samples have.
    pub data_type: String,
    /// What `forward` predicts.
    pub output_type: OutputType,
    /// Its interpolant `x_t = alpha(t) x_1 + beta(t) x_0`.
    pub interpolant: Interpolant,
    /// The data type's layout when its plugin lays out batches itself; `None` for plain data.
    pub layout: Option<Arc<CustomLayout>>,
    /// Whether the model reads and writes CPU memory only: tensors are moved to the CPU
    /// before each call and back to the samples' device after it.
    pub cpu_only: bool,
    inner: BaseModelBox,
}

impl Model {
    /// Wraps a constructed plugin model, reading its output type and schedule.
    pub fn new(id: &str, data_type: &str, inner: BaseModelBox) -> Result<Self> {
        let output_type = inner.output_type();
        let interpolant = Interpolant::from_plugin(&inner.schedule())
            .map_err(|e| anyhow!("model `{id}` declares an unusable scheduler: {e}"))?;
        Ok(Self {
            id: id.to_string(),
            data_type: data_type.to_string(),
            output_type,
            interpolant,
            layout: None,
            cpu_only: false,
            inner,
        })
    }

    fn what(&self, call: &str) -> String {
        format!("model `{}` {call}", self.id)
    }

    /// `n` samples of the source distribution and their keyword arguments.
    pub fn sample_p0(&mut self, n: usize, seed: u64) -> Result<(State, HostKwargs)> {
        let what = self.what("sample_p0");
        let out = self
            .inner
            .sample_p0(n as u64, seed)
            .into_result()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        let state = State::import(out.0, self.layout.as_ref(), &what)?;
        if state.data_type != self.data_type {
            bail!(
                "{what} returned data type `{}`, but the entry declares `{}`",
                state.data_type,
                self.data_type
            );
        }
        if state.len() != n {
            bail!(
                "{what} returned {} samples, {n} were asked for",
                state.len()
            );
        }
        let kwargs = HostKwargs::from_plugin(out.1, n, &what)?;
        Ok((state, kwargs))
    }

    /// The samples and keyword arguments as the model reads them: on the CPU for a CPU-only
    /// model, else as they are.
    fn inputs(&self, x: &State, kwargs: &HostKwargs) -> (State, HostKwargs) {
        if self.cpu_only {
            (x.to_device(Device::Cpu), kwargs.to_device(Device::Cpu))
        } else {
            (x.shallow_clone(), kwargs.slice(0, x.len()))
        }
    }

    /// The model's once-per-batch preparation of the keyword arguments.
    pub fn preprocess(&mut self, x: &State, kwargs: &HostKwargs) -> Result<HostKwargs> {
        let what = self.what("preprocess");
        let (input, input_kwargs) = self.inputs(x, kwargs);
        let out = self
            .inner
            .preprocess(input.to_batch()?, input_kwargs.to_plugin()?)
            .into_result()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(HostKwargs::from_plugin(out, x.len(), &what)?.to_device(x.device()))
    }

    /// The network's prediction at `x` and sampler time `t` in `[0, 1]`. The model receives
    /// its own time (the step index of a discrete schedule) as a float32 tensor `[n]` on the
    /// samples' device.
    pub fn forward(&mut self, x: &State, t: f64, kwargs: &HostKwargs) -> Result<State> {
        let what = self.what("forward");
        let device = x.device();
        let (input, input_kwargs) = self.inputs(x, kwargs);
        let model_time = Tensor::full(
            [x.len() as i64],
            self.interpolant.model_time(t),
            (Kind::Float, input.device()),
        );
        let t = ManagedTensor::from_tch(&model_time).map_err(|e| anyhow!("{what}: {e}"))?;
        let out = self
            .inner
            .forward(input.to_batch()?, t, input_kwargs.to_plugin()?)
            .into_result()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        let out = match x.layout() {
            // Checked leaf by leaf against `x`, which the layout has checked.
            Some(_) => State::new(
                out.data_type.to_string(),
                out.into_tch().map_err(|e| anyhow!("{what}: {e}"))?,
            ),
            None => State::from_batch(out).map_err(|e| anyhow!("{what}: {e}"))?,
        };
        x.with_floating_from(out.to_device(device), &what)
    }

    /// The samples a reward reads, from final states.
    pub fn postprocess(&mut self, x: &State, kwargs: &HostKwargs) -> Result<State> {
        let what = self.what("postprocess");
        let (input, input_kwargs) = self.inputs(x, kwargs);
        let out = self
            .inner
            .postprocess(input.to_batch()?, input_kwargs.to_plugin()?)
            .into_result()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        match out.into_option() {
            None => Ok(x.shallow_clone()),
            Some(batch) => {
                let sample =
                    State::import(batch, self.layout.as_ref(), &what)?.to_device(x.device());
                if sample.len() != x.len() {
                    bail!("{what} returned {} samples for {}", sample.len(), x.len());
                }
                Ok(sample)
            }
        }
    }
}
