//! Model-based property test of the sync planner (filled in below).
