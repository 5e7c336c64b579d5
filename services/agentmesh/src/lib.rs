//! agentmesh's all-in-one binary and command line.
//!
//! `agentmesh up` runs the six services of the mesh in one process, the first thing a new
//! user runs; each service is the same library code its own binary runs, so the
//! all-in-one process behaves like the deployed mesh.

pub mod cli;
pub mod keys;
pub mod migrate;
pub mod up;
