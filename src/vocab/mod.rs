//! The vocabulary flow files and the engine share: the named actions and validators a flow may use, what
//! each declares (its input, outcomes, the reasons and notices it can put on screen), and the message keys
//! the engine shows on its own.
//!
//! Why a leaf: `flow::check` proves a flow directory against these declarations, and the engine is held to
//! them at run time; neither side should need the other to do its part. This module is data only: it
//! imports nothing from `engine`, `flow`, `store` or `service` (the validators' reason lists come from
//! `domain`, itself a leaf).

pub mod actions;
pub mod keys;
pub mod validators;

pub use actions::{ActionKind, ActionSpec};
pub use validators::Validator;
