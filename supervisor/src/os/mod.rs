//! The operating system's side of a plugin: starting its process ([`spawn`], the only place
//! that does, through [`process`]), the limits it runs under ([`limits`], enforced by [`rlimits`] in the child,
//! [`cgroups`] in the kernel and [`usage`] by sampling), its captured output ([`output`]), and
//! the processes it leaves behind ([`orphans`]), its build command ([`build`]), and the stub that
//! prepares its next start ahead of time ([`stub`]).
//!
//! This layer knows processes, files and the kernel; it knows nothing of connections, plugin
//! states or HTTP.

pub mod build;
pub mod cgroups;
pub mod limits;
pub mod orphans;
pub mod output;
pub mod process;
pub mod rlimits;
pub mod spawn;
pub mod stub;
pub mod usage;
