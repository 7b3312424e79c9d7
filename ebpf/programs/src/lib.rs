//! Exists so the agent's build script can depend on this package (cargo
//! then rebuilds the agent when the programs' dependencies change); the
//! programs themselves are the `shoal` binary target.
#![no_std]
