//! berth's launcher: turns a request (image, command, options) into a plan, and performs it.
//! See docs/architecture.md for the way a request flows.

pub mod cache;
pub mod container;
pub mod doctor;
pub mod error;
pub mod fakeroot;
pub mod host;
pub mod image;
pub mod image_config;
mod imagefs;
mod imagekeeper;
pub mod join;
pub mod log;
pub mod options;
pub mod plan;
pub mod policy;
pub mod run;
pub mod sif;
pub mod signals;
mod squashfs;
pub mod sys;
