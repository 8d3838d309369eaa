//! The Scheduler seam: the load-balancing scheme that picks an engine for a task.
//!
//! A scheme is a pure, synchronous decision: no I/O, no locks, no global clock or RNG, so a
//! test with a seeded RNG replays any pick. Dependencies, retries, timeouts and the
//! high-water mark wrap the scheme in the controller's task scheduler.

mod schemes;

use std::fmt;

use rand::RngCore;

use crate::error::{Error, Result};

pub use schemes::{LeastLoad, Lru, PlainRandom, TwoBin, Weighted};

/// One engine that may take the task, as the scheme sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLoad {
    /// Tasks this scheduler has sent to the engine that have not finished.
    pub load: usize,
}

/// What a scheme may use besides the candidates.
pub struct Pick<'a> {
    /// The controller's clock.
    pub now: tokio::time::Instant,
    /// Randomness: seeded in tests, OS-seeded in production.
    pub rng: &'a mut dyn RngCore,
}

impl fmt::Debug for Pick<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A load-balancing scheme.
///
/// # Contract
/// `candidates` is never empty and is in least-recently-used order (the engine that most
/// recently received a task is last). Return the index of the engine to use, or `None` to
/// decline them all (the task then waits).
pub trait Scheduler: fmt::Debug + Send + 'static {
    /// The scheme's name as given to `--scheme`: `leastload`, `twobin`, …
    fn name(&self) -> &'static str;

    /// Picks one of `candidates`.
    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize>;
}

impl<S: Scheduler + ?Sized> Scheduler for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize> {
        (**self).select(candidates, cx)
    }
}

/// The scheme names `--scheme` accepts.
pub const SCHEME_NAMES: &[&str] = &["leastload", "lru", "plainrandom", "twobin", "weighted"];

/// Builds a built-in scheme from its ipyparallel name.
///
/// # Errors
/// [`Error::Config`] naming the valid schemes when `name` is not one of them (`pure` and
/// `none` are ipyparallel modes without a scheduler, which we do not offer).
pub fn scheme_by_name(name: &str) -> Result<Box<dyn Scheduler>> {
    Ok(match name {
        "leastload" => Box::new(LeastLoad),
        "lru" => Box::new(Lru),
        "plainrandom" => Box::new(PlainRandom),
        "twobin" => Box::new(TwoBin),
        "weighted" => Box::new(Weighted),
        other => {
            return Err(Error::Config(format!(
                "unknown task scheme {other:?}; choose one of {}",
                SCHEME_NAMES.join(", ")
            )))
        }
    })
}
