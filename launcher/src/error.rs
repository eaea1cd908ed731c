//! One error type for the launcher. Every message is one line that says what is wrong and,
//! where it helps, what to do; `main` prints it as `berth: <message>`.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad option, mount spec, key or other user input.
    #[error("{0}")]
    Usage(String),
    /// The site policy is broken (`file:line: ...`).
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The image cannot be used (missing, not squashfs, truncated...).
    #[error("{0}")]
    Image(String),
    /// A system call or helper failed while building the container.
    #[error("{context}: {source}")]
    Sys { context: String, source: io::Error },
    /// The command does not exist inside the container (exit 127, like a shell).
    #[error("command not found in the container: {0}")]
    CommandNotFound(String),
    /// The command exists but cannot be executed (exit 126, like a shell).
    #[error("cannot execute {0}: {1}")]
    CommandNotExecutable(String, io::Error),
}

impl Error {
    /// berth's own failures exit 125 (as docker and podman do), so they differ from the
    /// command's own exit codes; 126 and 127 follow the shell's convention.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound(_) => 127,
            Error::CommandNotExecutable(..) => 126,
            _ => 125,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A policy error: `file:line: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One line whatever the file holds: a value or file name with a newline is escaped.
        let mut text = String::with_capacity(self.0.len());
        for c in self.0.chars() {
            if c.is_control() {
                text.extend(c.escape_default());
            } else {
                text.push(c);
            }
        }
        write!(
            f,
            "policy {text} (fix the file or ask the admin; berth will not run with a broken policy)"
        )
    }
}

impl std::error::Error for PolicyError {}

/// Attach a description of what was being done to an io::Error.
pub trait Context<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Sys {
            context: what().into(),
            source,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Sys {
            context: what().into(),
            source: io::Error::from(e),
        })
    }
}

/// A message as one line: control characters (a newline in a file name, a mount spec or a
/// variable the user gave) are shown escaped, so an error is always exactly one line.
pub fn one_line(msg: impl std::fmt::Display) -> String {
    let text = msg.to_string();
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Usage(msg.into()))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(one_line("bad mount '\n': x"), "bad mount '\\n': x");
        assert_eq!(one_line("tab\there\r"), "tab\\there\\r");
        assert_eq!(one_line("café ok"), "café ok");
    }
}
