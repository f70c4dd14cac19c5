//! Argument parsers shared by the subcommands, so that each kind of option is read one way.

use crate::sde::Diffusion;

/// `--model-args` and `--reward-args`: a JSON object, kept as a table (the form run
/// configurations store).
pub fn json_object(text: &str) -> Result<toml::Table, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "expected a JSON object such as '{{\"name\": 1}}', got {value}"
        ));
    }
    toml::Table::try_from(value)
        .map_err(|e| format!("cannot be stored in a run configuration: {e}"))
}

/// The JSON document plugins read, from a table parsed by [`json_object`].
pub fn json_text(table: &toml::Table) -> String {
    serde_json::to_string(table).expect("a TOML table is valid JSON")
}

/// `--noise`: `memoryless` or a constant level.
pub fn diffusion(text: &str) -> Result<Diffusion, String> {
    match text {
        "memoryless" => Ok(Diffusion::Memoryless),
        level => level
            .parse::<f64>()
            .map(Diffusion::Constant)
            .map_err(|_| format!("`{level}`: expected `memoryless` or a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_parsed_or_explained() {
        let table = json_object(r#"{"quality": 50, "name": "x"}"#).unwrap();
        assert_eq!(json_text(&table), r#"{"name":"x","quality":50}"#);
        assert_eq!(
            json_object("[1]").unwrap_err(),
            "expected a JSON object such as '{\"name\": 1}', got [1]"
        );
        assert!(json_object("{").unwrap_err().starts_with("not valid JSON"));
    }
}
