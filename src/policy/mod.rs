//! The pool policy: Authing's raw document, its compiled form, and the
//! lock-free handle requests read it through.

pub mod compiled;
pub mod model;
pub mod origins;
pub mod store;

pub use compiled::{CompiledPolicy, FailStrategy, PasswordRule, WindowLimit};
pub use model::{PoolDetail, WhitelistEntries};
pub use store::PolicyStore;
