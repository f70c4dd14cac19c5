//! The figures of a run directory: the reward and loss curves, and for 1-d runs the histograms
//! before and after training against the optimum.

use anyhow::Result;

use super::config::RunConfig;
use super::dir::RunDir;
use super::samples::EvalSamples;
use super::summary::optimum_estimate;
use crate::report::plot;
use crate::value_matching::IterationStats;

/// Writes `reward.png`, `loss.png` and (1-d runs) `samples.png` from what the run holds.
pub fn write(
    dir: &RunDir,
    config: &RunConfig,
    history: &[IterationStats],
    before: Option<&EvalSamples>,
    after: Option<&EvalSamples>,
) -> Result<()> {
    let optimum = optimum_estimate(before, after, config.reward_scale);
    if !history.is_empty() {
        plot::line_chart(
            &dir.figure("reward"),
            &format!("{} adapted to {}", config.model, config.reward),
            "iteration",
            "mean reward",
            &[plot::Series {
                label: "mean reward of the training batch".into(),
                points: history
                    .iter()
                    .map(|r| (r.iteration as f64, r.reward_mean))
                    .collect(),
                color: plot::ADAPTED_COLOR,
            }],
            optimum
                .as_ref()
                .map(|(o, _)| (o.reward_mean, "optimum E_p*[r]")),
        )?;
        plot::line_chart(
            &dir.figure("loss"),
            "Value Matching loss",
            "iteration",
            "log10 loss",
            &[plot::Series {
                label: "loss".into(),
                points: history
                    .iter()
                    .filter(|r| r.loss > 0.0)
                    .map(|r| (r.iteration as f64, r.loss.log10()))
                    .collect(),
                color: plotters::style::RGBColor(214, 39, 40),
            }],
            None,
        )?;
    }
    if let (Some((_, Some(optimum))), Some(before)) = (&optimum, before) {
        let mut sets = vec![(
            "base model (before)",
            before.values.as_slice(),
            plot::BASE_COLOR,
        )];
        if let Some(after) = after {
            sets.push((
                "adapted (after)",
                after.values.as_slice(),
                plot::ADAPTED_COLOR,
            ));
        }
        plot::histograms(
            &dir.figure("samples"),
            &format!(
                "{} adapted to {} (scale {})",
                config.model, config.reward, config.reward_scale
            ),
            &sets,
            Some((&optimum.points, &optimum.weights)),
        )?;
    }
    Ok(())
}
