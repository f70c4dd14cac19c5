//! Whether a base model and a reward can run together, decided from their metadata alone, so
//! that no weights are loaded for a combination that cannot run.

use flowgym_plugin_api::EntryMeta;
use semver::Version;

/// Whether two versions of a contract are semver-compatible (same major, and same minor
/// before 1.0).
pub fn semver_compatible(a: &Version, b: &Version) -> bool {
    if a.major != b.major {
        return false;
    }
    a.major != 0 || a.minor == b.minor
}

/// Every reason `model` and `reward` cannot run together (empty when they can).
pub fn pair_problems(model: &EntryMeta, reward: &EntryMeta) -> Vec<String> {
    let (m, r) = (model.id.as_str(), reward.id.as_str());
    let (md, rd) = (&model.data_type, &reward.data_type);
    if md.name != rd.name {
        return vec![format!(
            "model `{m}` produces data type `{}` but reward `{r}` scores `{}`",
            md.name, rd.name
        )];
    }
    let mut problems = Vec::new();
    match (Version::parse(&md.version), Version::parse(&rd.version)) {
        (Ok(a), Ok(b)) if semver_compatible(&a, &b) => {}
        (Ok(_), Ok(_)) => problems.push(format!(
            "model `{m}` uses data type {md} but reward `{r}` uses {rd}, which is not semver-compatible"
        )),
        _ => problems.push(format!(
            "data type versions `{}` (model `{m}`) and `{}` (reward `{r}`) are not semver",
            md.version, rd.version
        )),
    }
    for wanted in reward.leaves.iter() {
        match model.leaves.iter().find(|l| l.name == wanted.name) {
            None => {
                let produced: Vec<String> = model.leaves.iter().map(|l| l.to_string()).collect();
                problems.push(format!(
                    "reward `{r}` reads leaf `{}`, which model `{m}` does not produce (it produces {})",
                    wanted.name,
                    if produced.is_empty() { "no declared leaves".to_string() } else { produced.join(", ") }
                ));
            }
            Some(produced) => {
                if let Err(why) = wanted.accepts(produced) {
                    problems.push(format!(
                        "reward `{r}` cannot score model `{m}`'s samples: {why}"
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::{Capabilities, DType, DataTypeRef, Dim, EntryKind, LeafSpec};

    fn entry(kind: EntryKind, id: &str, dt: (&str, &str), leaves: Vec<LeafSpec>) -> EntryMeta {
        EntryMeta {
            kind,
            id: id.into(),
            data_type: DataTypeRef::new(dt.0, dt.1),
            version: "1.0.0".into(),
            description: "".into(),
            arguments: Default::default(),
            leaves: leaves.into(),
            capabilities: Capabilities::default(),
        }
    }

    fn image(channels: u64, side: u64) -> LeafSpec {
        LeafSpec::new(
            "x",
            DType::F32,
            [
                Dim::Batch,
                Dim::Fixed(channels),
                Dim::Fixed(side),
                Dim::Fixed(side),
            ],
        )
        .with_range(0.0, 1.0)
    }

    fn any_image() -> LeafSpec {
        LeafSpec::new(
            "x",
            DType::F32,
            [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
        )
        .with_range(0.0, 1.0)
    }

    #[test]
    fn matching_pairs_have_no_problems() {
        let model = entry(
            EntryKind::BaseModel,
            "images/cifar",
            ("images", "1.0.0"),
            vec![image(3, 32)],
        );
        let reward = entry(
            EntryKind::Reward,
            "images/compression",
            ("images", "1.2.0"),
            vec![any_image()],
        );
        assert!(pair_problems(&model, &reward).is_empty());
    }

    #[test]
    fn other_data_types_are_refused_first() {
        let model = entry(
            EntryKind::BaseModel,
            "images/cifar",
            ("images", "1.0.0"),
            vec![image(3, 32)],
        );
        let reward = entry(EntryKind::Reward, "1d/binary", ("1d", "1.0.0"), vec![]);
        assert_eq!(
            pair_problems(&model, &reward),
            vec!["model `images/cifar` produces data type `images` but reward `1d/binary` scores `1d`"]
        );
    }

    #[test]
    fn versions_and_leaves_are_checked() {
        let model = entry(
            EntryKind::BaseModel,
            "images/latent",
            ("images", "1.0.0"),
            vec![image(4, 64)],
        );
        let reward = entry(
            EntryKind::Reward,
            "images/aesthetic",
            ("images", "2.0.0"),
            vec![any_image()],
        );
        assert_eq!(
            pair_problems(&model, &reward),
            vec![
                "model `images/latent` uses data type images 1.0.0 but reward `images/aesthetic` uses images 2.0.0, which is not semver-compatible".to_string(),
                "reward `images/aesthetic` cannot score model `images/latent`'s samples: leaf `x` has shape [n, 4, 64, 64] but [n, 3, *, *] is expected".to_string(),
            ]
        );
    }
}
