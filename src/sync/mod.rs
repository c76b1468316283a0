//! The sync engine. [`plan()`] is the pure three-way planner: it decides
//! what to do from the cloud listing, the maildir scan and the last
//! agreement; [`next_state()`] computes the agreement to persist once the
//! actions ran. Semantics: `docs/sync.md`.

mod background;
pub mod engine;
mod index;
pub mod plan;
pub mod state;

pub use plan::{
    Action, CloudBase, CloudEffect, CloudMsg, DeleteAction, LastEntry, LastState, LocalFile,
    MailboxInfo, MaildirInfo, Mode, Outcome, Plan, PlanInput, Route, Warning, cloud_effects,
    next_state, plan,
};

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod plan_tests;
