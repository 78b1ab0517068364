//! Reading service directories: find `app.toml` files and parse them.

use std::path::{Path, PathBuf};

use berth_spec::{PlatformConfig, Spec};

/// A service directory whose app.toml parsed cleanly.
#[derive(Debug, Clone)]
pub struct LoadedService {
    /// Absolute service directory.
    pub dir: PathBuf,
    pub file: PathBuf,
    pub source: String,
    pub spec: Spec,
    /// The program to run instead of `run.command[0]`: a release's copy of a binary that lived outside the
    /// service directory (see `Release::load`). `None` for a service loaded from its own directory.
    pub program: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("no app.toml in {path}")]
    NoSpec { path: String },
    /// The spec is invalid; `rendered` holds every diagnostic, ready to print.
    #[error("{path} is invalid:\n{rendered}")]
    Invalid { path: String, rendered: String },
    #[error("two platform configs: {first} and {second}")]
    TwoPlatformConfigs { first: String, second: String },
}

impl LoadError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LoadError::NoSpec { .. } => Some("run `berth init DIR` to create one, or pass the directory that holds it"),
            LoadError::Invalid { .. } => Some("fix the file and try again; `berth check DIR` shows every problem"),
            LoadError::TwoPlatformConfigs { .. } => Some("keep one berth.toml: the platform has one set of listeners"),
            LoadError::Read { .. } => None,
        }
    }
}

/// Service directories under `path`: `path` itself when it holds an app.toml, otherwise its direct
/// subdirectories that do (so `berth up examples` starts every example).
pub fn discover(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if path.join("app.toml").is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read_err = |source| LoadError::Read { path: path.display().to_string(), source };
    let mut res: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join("app.toml").is_file())
        .collect();
    res.sort();
    if res.is_empty() {
        return Err(LoadError::NoSpec { path: path.display().to_string() });
    }
    Ok(res)
}

pub fn load_dir(dir: &Path) -> Result<LoadedService, LoadError> {
    let dir = std::path::absolute(dir).map_err(|source| LoadError::Read { path: dir.display().to_string(), source })?;
    let file = dir.join("app.toml");
    let source = std::fs::read_to_string(&file).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NoSpec { path: dir.display().to_string() },
        _ => LoadError::Read { path: file.display().to_string(), source },
    })?;
    let spec = parse(&file, &source)?;
    Ok(LoadedService { dir, file, source, spec, program: None })
}

/// The platform config from the directories given to `berth up`: the one `berth.toml` among them, with
/// relative certificate paths made absolute; the defaults when there is none.
pub fn load_platform(dirs: &[PathBuf]) -> Result<(Option<PathBuf>, PlatformConfig), LoadError> {
    let files: Vec<PathBuf> =
        dirs.iter().map(|dir| dir.join(PlatformConfig::FILE_NAME)).filter(|file| file.is_file()).collect();
    let file = match files.as_slice() {
        [] => return Ok((None, PlatformConfig::default())),
        [file] => file,
        [first, second, ..] => {
            return Err(LoadError::TwoPlatformConfigs { first: display_path(first), second: display_path(second) });
        }
    };
    let source =
        std::fs::read_to_string(file).map_err(|source| LoadError::Read { path: display_path(file), source })?;
    let shown = display_path(file);
    let mut config = berth_spec::parse_platform(&shown, &source).map_err(|diags| LoadError::Invalid {
        path: shown.clone(),
        rendered: berth_spec::render_all(&diags, &source),
    })?;
    let base = std::path::absolute(file.parent().unwrap_or(Path::new(".")))
        .map_err(|source| LoadError::Read { path: shown.clone(), source })?;
    for certificate in &mut config.certificates {
        for path in [&mut certificate.cert, &mut certificate.key] {
            let absolute = base.join(path.get_ref()).display().to_string();
            *path.get_mut() = absolute;
        }
    }
    Ok((Some(file.clone()), config))
}

pub(crate) fn parse(file: &Path, source: &str) -> Result<Spec, LoadError> {
    let shown = display_path(file);
    berth_spec::parse(&shown, source)
        .map_err(|diags| LoadError::Invalid { path: shown.clone(), rendered: berth_spec::render_all(&diags, source) })
}

/// A path as the user would write it: relative to the current directory when it is below it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
