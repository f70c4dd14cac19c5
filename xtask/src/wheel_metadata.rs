//! The NVIDIA runtime wheels a CUDA build of the torch wheel needs, read from the
//! `Requires-Dist` lines of its `METADATA` (and of the `cuda-toolkit` meta-package it names with
//! extras), with the environment markers evaluated for the machine the set-up runs on.

/// The values environment markers are evaluated with: the machine's platform and the extras
/// asked for. Variables not listed here (`python_version`, ...) only guard Python packages,
/// which are never selected, so any comparison of them is taken as true.
#[derive(Debug, Clone)]
pub struct MarkerEnv {
    /// `sys_platform`, e.g. `linux`.
    pub sys_platform: String,
    /// `platform_system`, e.g. `Linux`.
    pub platform_system: String,
    /// `platform_machine`, e.g. `x86_64`.
    pub platform_machine: String,
    /// The extras `extra == "..."` is true for.
    pub extras: Vec<String>,
}

impl MarkerEnv {
    /// Linux on the architecture this set-up was compiled for, with no extra.
    pub fn linux_here() -> Self {
        Self {
            sys_platform: "linux".into(),
            platform_system: "Linux".into(),
            platform_machine: std::env::consts::ARCH.into(),
            extras: Vec::new(),
        }
    }

    fn with_extras(&self, extras: &[String]) -> Self {
        Self {
            extras: extras.to_vec(),
            ..self.clone()
        }
    }
}

/// One `Requires-Dist` line: `name[extras] specifier; marker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The distribution name, lower case with `_` and `.` as `-`.
    pub name: String,
    /// The extras in brackets.
    pub extras: Vec<String>,
    /// The version specifier as written (`==13.1.1.3.*`, `<14,>=13.0.88`), possibly empty.
    pub specifier: String,
    /// The environment marker after `;`, possibly empty.
    pub marker: String,
}

impl Requirement {
    /// The requirement as pip takes it on its command line, without the marker.
    pub fn pip_spec(&self) -> String {
        format!("{}{}", self.name, self.specifier)
    }
}

/// The `Requires-Dist` requirements of a `METADATA` text.
pub fn requires_dist(metadata: &str) -> Result<Vec<Requirement>, String> {
    metadata
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.strip_prefix("Requires-Dist:"))
        .map(|text| parse_requirement(text.trim()))
        .collect()
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let (head, marker) = match text.split_once(';') {
        Some((head, marker)) => (head.trim(), marker.trim()),
        None => (text.trim(), ""),
    };
    let name_end = head
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or(head.len());
    let name = head[..name_end]
        .to_ascii_lowercase()
        .replace(['_', '.'], "-");
    if name.is_empty() {
        return Err(format!("`Requires-Dist: {text}` names no package"));
    }
    let mut rest = head[name_end..].trim_start();
    let mut extras = Vec::new();
    if let Some(inner) = rest.strip_prefix('[') {
        let (list, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`Requires-Dist: {text}`: unclosed `[`"))?;
        extras = list.split(',').map(|e| e.trim().to_string()).collect();
        rest = after.trim_start();
    }
    let specifier = rest.trim_matches(|c| c == '(' || c == ')' || c == ' ');
    Ok(Requirement {
        name,
        extras,
        specifier: specifier.replace(' ', ""),
        marker: marker.to_string(),
    })
}

/// The name of the meta-package whose extras pull in the CUDA toolkit's libraries.
pub const CUDA_TOOLKIT: &str = "cuda-toolkit";

/// The requirements of the torch wheel that carry native CUDA libraries (`nvidia-*` wheels and
/// the `cuda-toolkit` meta-package) and apply to `env`.
pub fn native_requirements(metadata: &str, env: &MarkerEnv) -> Result<Vec<Requirement>, String> {
    let mut selected = Vec::new();
    for requirement in requires_dist(metadata)? {
        let native = requirement.name.starts_with("nvidia-") || requirement.name == CUDA_TOOLKIT;
        if native && evaluate(&requirement.marker, env)? {
            selected.push(requirement);
        }
    }
    Ok(selected)
}

/// The `nvidia-*` requirements that the extras `extras` of a meta-package select on `env`,
/// one per package (specifiers of the same package joined).
pub fn expand_extras(
    metadata: &str,
    extras: &[String],
    env: &MarkerEnv,
) -> Result<Vec<Requirement>, String> {
    let env = env.with_extras(extras);
    let mut selected = Vec::new();
    for requirement in requires_dist(metadata)? {
        if requirement.name.starts_with("nvidia-") && evaluate(&requirement.marker, &env)? {
            selected.push(requirement);
        }
    }
    Ok(merge(selected))
}

/// One requirement per package, distinct specifiers joined with `,` (pip takes them all).
pub fn merge(requirements: Vec<Requirement>) -> Vec<Requirement> {
    let mut merged: Vec<Requirement> = Vec::new();
    for requirement in requirements {
        match merged.iter_mut().find(|r| r.name == requirement.name) {
            Some(known) => {
                let parts: Vec<String> = known.specifier.split(',').map(String::from).collect();
                for part in requirement.specifier.split(',') {
                    if !part.is_empty() && !parts.iter().any(|p| p == part) {
                        known.specifier = if known.specifier.is_empty() {
                            part.to_string()
                        } else {
                            format!("{},{part}", known.specifier)
                        };
                    }
                }
            }
            None => merged.push(Requirement {
                marker: String::new(),
                ..requirement
            }),
        }
    }
    merged
}

/// Evaluates a PEP 508 environment marker (`and`, `or`, parentheses, comparisons of a marker
/// variable with a quoted string). An empty marker is true.
pub fn evaluate(marker: &str, env: &MarkerEnv) -> Result<bool, String> {
    let tokens = tokenize(marker)?;
    if tokens.is_empty() {
        return Ok(true);
    }
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        env,
    };
    let value = parser.or()?;
    if parser.at != tokens.len() {
        return Err(format!("cannot read the marker `{marker}`"));
    }
    Ok(value)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    Quoted(String),
    Op(String),
}

fn tokenize(marker: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = marker.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                tokens.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '"' | '\'' => {
                chars.next();
                let text: String = chars.by_ref().take_while(|&d| d != c).collect();
                tokens.push(Token::Quoted(text));
            }
            '=' | '!' | '<' | '>' | '~' => {
                let mut op = String::new();
                while let Some(&d) = chars.peek().filter(|d| "=!<>~".contains(**d)) {
                    op.push(d);
                    chars.next();
                }
                tokens.push(Token::Op(op));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                let mut word = String::new();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_ascii_alphanumeric() || **d == '_' || **d == '.')
                {
                    word.push(d);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
            other => return Err(format!("unexpected `{other}` in the marker `{marker}`")),
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    env: &'a MarkerEnv,
}

impl Parser<'_> {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w == word)
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut value = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            value |= self.and()?;
        }
        Ok(value)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut value = self.atom()?;
        while self.peek_word("and") {
            self.at += 1;
            value &= self.atom()?;
        }
        Ok(value)
    }

    fn atom(&mut self) -> Result<bool, String> {
        if self.tokens.get(self.at) == Some(&Token::Open) {
            self.at += 1;
            let value = self.or()?;
            if self.tokens.get(self.at) != Some(&Token::Close) {
                return Err("unbalanced parentheses in a marker".into());
            }
            self.at += 1;
            return Ok(value);
        }
        let left = self.operand()?;
        let op = match self.tokens.get(self.at) {
            Some(Token::Op(op)) => op.clone(),
            Some(Token::Word(w)) if w == "in" => "in".to_string(),
            Some(Token::Word(w)) if w == "not" => {
                self.at += 1;
                if !self.peek_word("in") {
                    return Err("`not` without `in` in a marker".into());
                }
                "not in".to_string()
            }
            other => {
                return Err(format!(
                    "expected a comparison in a marker, found {other:?}"
                ))
            }
        };
        self.at += 1;
        let right = self.operand()?;
        Ok(self.compare(left, &op, right))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Token::Quoted(text)) => Ok(Operand::Literal(text)),
            Some(Token::Word(name)) => Ok(Operand::Variable(name)),
            other => Err(format!("expected a value in a marker, found {other:?}")),
        }
    }

    fn compare(&self, left: Operand, op: &str, right: Operand) -> bool {
        let (variable, value, variable_left) = match (left, right) {
            (Operand::Variable(v), Operand::Literal(l)) => (v, l, true),
            (Operand::Literal(l), Operand::Variable(v)) => (v, l, false),
            // Two literals or two variables: not found in wheel metadata; keep the requirement.
            _ => return true,
        };
        let known: Vec<&str> = match variable.as_str() {
            "sys_platform" => vec![self.env.sys_platform.as_str()],
            "platform_system" => vec![self.env.platform_system.as_str()],
            "platform_machine" => vec![self.env.platform_machine.as_str()],
            "os_name" => vec!["posix"],
            "extra" => self.env.extras.iter().map(String::as_str).collect(),
            _ => return true,
        };
        let any = |f: &dyn Fn(&str) -> bool| known.iter().any(|k| f(k));
        match (op, variable_left) {
            ("==", _) => any(&|k| k == value),
            ("!=", _) => !any(&|k| k == value),
            ("in", true) => any(&|k| value.contains(k)),
            ("in", false) => any(&|k| k.contains(value.as_str())),
            ("not in", true) => !any(&|k| value.contains(k)),
            ("not in", false) => !any(&|k| k.contains(value.as_str())),
            _ => true,
        }
    }
}

enum Operand {
    Variable(String),
    Literal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86() -> MarkerEnv {
        MarkerEnv {
            sys_platform: "linux".into(),
            platform_system: "Linux".into(),
            platform_machine: "x86_64".into(),
            extras: Vec::new(),
        }
    }

    /// Lines of the torch 2.13.0 (cu130) wheel's METADATA.
    const TORCH_METADATA: &str = "\
Metadata-Version: 2.4
Name: torch
Version: 2.13.0
Requires-Dist: filelock
Requires-Dist: typing-extensions>=4.10.0
Requires-Dist: cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3; platform_system == \"Linux\"
Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == \"Linux\" and python_version < \"3.15\"
Requires-Dist: nvidia-cudnn-cu13==9.20.0.48; platform_system == \"Linux\"
Requires-Dist: nvidia-cusparselt-cu13==0.8.1; platform_system == \"Linux\"
Requires-Dist: nvidia-nccl-cu13==2.29.7; platform_system == \"Linux\"
Requires-Dist: nvidia-nvshmem-cu13==3.4.5; platform_system == \"Linux\"
Requires-Dist: triton==3.7.1; platform_system == \"Linux\" and python_version < \"3.15\"
Requires-Dist: optree>=0.13.0; extra == \"optree\"

Requires-Dist: not-a-header==1
";

    /// Lines of the cuda-toolkit 13.0.3 meta-package's METADATA.
    const TOOLKIT_METADATA: &str = "\
Name: cuda-toolkit
Requires-Dist: nvidia-cublas==13.1.1.3.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'all'
Requires-Dist: nvidia-cublas==13.1.1.3.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cublas'
Requires-Dist: nvidia-cuda-nvrtc==13.0.88.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cublas'
Requires-Dist: nvidia-cuda-opencl==13.0.85.*; (sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'opencl'
Requires-Dist: nvidia-cufile==1.15.1.6.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64') and extra == 'cufile'
Requires-Dist: nvidia-cusolver==12.0.4.66.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cusolver'
Requires-Dist: nvidia-cublas==13.1.1.3.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cusolver'
Requires-Dist: nvidia-nvjitlink<14,>=13.0.88; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cusolver'
Requires-Dist: nvidia-nvjitlink<14,>=13.0.88; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'nvjitlink'
";

    #[test]
    fn the_torch_wheel_names_its_native_cuda_wheels_with_their_pins() {
        let selected = native_requirements(TORCH_METADATA, &x86()).unwrap();
        let specs: Vec<String> = selected.iter().map(Requirement::pip_spec).collect();
        assert_eq!(
            specs,
            [
                "cuda-toolkit==13.0.3",
                "nvidia-cudnn-cu13==9.20.0.48",
                "nvidia-cusparselt-cu13==0.8.1",
                "nvidia-nccl-cu13==2.29.7",
                "nvidia-nvshmem-cu13==3.4.5",
            ]
        );
        assert_eq!(selected[0].extras.len(), 11);
        assert_eq!(selected[0].extras[0], "cublas");
        // Nothing CUDA on macOS.
        let mac = MarkerEnv {
            sys_platform: "darwin".into(),
            platform_system: "Darwin".into(),
            ..x86()
        };
        assert!(native_requirements(TORCH_METADATA, &mac)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn toolkit_extras_expand_to_one_pinned_wheel_per_library() {
        let extras: Vec<String> = ["cublas", "cufile", "cusolver", "nvjitlink"]
            .map(String::from)
            .to_vec();
        let selected = expand_extras(TOOLKIT_METADATA, &extras, &x86()).unwrap();
        let specs: Vec<String> = selected.iter().map(Requirement::pip_spec).collect();
        assert_eq!(
            specs,
            [
                "nvidia-cublas==13.1.1.3.*",
                "nvidia-cuda-nvrtc==13.0.88.*",
                "nvidia-cufile==1.15.1.6.*",
                "nvidia-cusolver==12.0.4.66.*",
                "nvidia-nvjitlink<14,>=13.0.88",
            ]
        );
        // cuFile has no Windows wheel: its marker is false there.
        let windows = MarkerEnv {
            sys_platform: "win32".into(),
            platform_system: "Windows".into(),
            platform_machine: "AMD64".into(),
            extras: Vec::new(),
        };
        let selected = expand_extras(TOOLKIT_METADATA, &extras, &windows).unwrap();
        assert!(selected.iter().all(|r| r.name != "nvidia-cufile"));
    }

    #[test]
    fn markers_follow_precedence_and_parentheses() {
        let env = x86();
        assert!(evaluate("", &env).unwrap());
        assert!(evaluate(
            "sys_platform == 'linux' or extra == 'x' and os_name == 'nt'",
            &env
        )
        .unwrap());
        assert!(!evaluate(
            "(sys_platform == 'linux' or extra == 'x') and os_name == 'nt'",
            &env
        )
        .unwrap());
        assert!(evaluate("platform_machine in 'x86_64 aarch64'", &env).unwrap());
        assert!(!evaluate("platform_machine not in 'x86_64 aarch64'", &env).unwrap());
        assert!(evaluate("sys_platform != \"win32\"", &env).unwrap());
        assert!(evaluate("(sys_platform == 'linux'", &env)
            .unwrap_err()
            .contains("parentheses"));
    }

    #[test]
    fn requirement_lines_parse_names_extras_and_specifiers() {
        let r = parse_requirement("Nvidia_CUBLAS (>=13.0, <14) ; sys_platform == 'linux'").unwrap();
        assert_eq!(r.name, "nvidia-cublas");
        assert_eq!(r.specifier, ">=13.0,<14");
        assert_eq!(r.marker, "sys_platform == 'linux'");
        assert!(parse_requirement("[x]==1")
            .unwrap_err()
            .contains("names no package"));
    }
}
