//! Reading the configuration: flags beat `PPP_*` environment variables beat the TOML file
//! (`--config`) beat the defaults. The file's keys are fed to the same clap parser as
//! `--key=value` arguments, so every value is parsed one way.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, FromArgMatches, parser::ValueSource};

use super::{Cli, Config, ConfigError};

/// Parses the process's arguments, environment and optional config file.
///
/// # Errors
/// A [`ConfigError`] naming the bad flag, variable or key.
pub fn load() -> Result<Cli, ConfigError> {
    load_from(std::env::args_os().collect())
}

/// Like [`load`], for the given argument vector (the first element is the program name).
///
/// # Errors
/// A [`ConfigError`] naming the bad flag, variable or key.
pub fn load_from(args: Vec<OsString>) -> Result<Cli, ConfigError> {
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let file_args = file_arguments(&command, &matches, &path)?;
    let mut merged = Vec::with_capacity(args.len() + file_args.len());
    merged.extend(args.first().cloned());
    merged.extend(file_args.into_iter().map(OsString::from));
    merged.extend(args.into_iter().skip(1));
    let matches = command.try_get_matches_from(merged).map_err(|e| ConfigError::BadValue {
        path: path.clone(),
        key: error_key(&e),
        message: e.kind().to_string(),
    })?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Names the flag a clap error is about, for an error blamed on the config file.
fn error_key(error: &clap::Error) -> String {
    match error.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(arg)) => arg.clone(),
        _ => error.to_string().lines().next().unwrap_or_default().to_owned(),
    }
}

/// Turns the file's keys that neither a flag nor the environment set into `--key=value` arguments.
fn file_arguments(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    path: &Path,
) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|source| ConfigError::Toml { path: path.to_owned(), source: Box::new(source) })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let known = command.get_arguments().any(|a| a.get_id() == id.as_str() && a.get_long().is_some());
        if !known || id == "config" {
            return Err(ConfigError::UnknownKey { path: path.to_owned(), key });
        }
        if matches!(matches.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let flag = format!("--{}", id.replace('_', "-"));
        let bad = |message: &str| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        match value {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(&item).ok_or_else(|| bad("arrays hold strings or numbers"))?));
                }
            }
            other => out.push(format!("{flag}={}", scalar(&other).ok_or_else(|| bad("expected a string or number"))?)),
        }
    }
    Ok(out)
}

/// A TOML scalar as the text a flag would carry.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The defaults with no environment: clap reads `PPP_*` even for an empty command line, so the
/// env-backed args are stripped of their `env` first.
pub(super) fn parse_from_no_env() -> Result<Config, clap::Error> {
    let mut command = Cli::command();
    let ids: Vec<_> = command.get_arguments().map(|a| a.get_id().clone()).collect();
    for id in ids {
        command = command.mut_arg(id, |a| a.env(None::<&str>));
    }
    let matches = command.try_get_matches_from(["ppp"])?;
    Ok(Cli::from_arg_matches(&matches)?.config)
}
