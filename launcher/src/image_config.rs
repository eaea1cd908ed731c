//! The image config's schema, in its own crate so that berth-image shares it without linking
//! the launcher.

pub use berth_image_config::*;
